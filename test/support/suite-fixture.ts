import type { INestApplication } from '@nestjs/common';
import type Redis from 'ioredis';
import { createTestDatabase, type TestDatabase } from './database';
import { clearLibraryKeys, testRedis } from './redis';
import { TcpProxy } from './tcp-proxy';
import { createTestApp, type TestAppOptions } from './test-app';

/** Options of `suiteFixture()`. */
export interface SuiteFixtureOptions {
  /**
   * Whether the suite uses the shared Redis (`testRedis()`: its database index, or the Cluster in
   * cluster mode). Then its library keys are cleared before and after the suite, so what one suite
   * cached never answers another's test. Default: true; false for suites on private redis-servers only.
   */
  redis?: boolean;
}

/** What a describe block gets from `suiteFixture()`; its members are there from its `beforeAll` on. */
export interface SuiteFixture {
  /** The suite's own empty database, dropped after the suite. */
  readonly db: TestDatabase;
  /** A client on the suite's Redis, with the library's keys cleared (throws when made with `redis: false`). */
  readonly redis: Redis;
  /**
   * Starts the test app, on the suite's database unless `databaseUrl` says otherwise; it is closed
   * like a `cleanup()` registered at the same moment.
   */
  app(options?: Partial<TestAppOptions>): Promise<INestApplication>;
  /**
   * A {@link TcpProxy} in front of the server `url` names (PostgreSQL or Redis; their default ports),
   * for the test to cut, stall or fault; closed like a `cleanup()` registered at the same moment. The
   * app gets `proxy.proxied(url)`.
   */
  proxy(url: string, options?: { resp?: boolean }): Promise<TcpProxy>;
  /**
   * Registers an undo step. Steps run last-registered first, so an app closes before the proxy or
   * redis-server it was started on. A step registered while a test runs (or in its `beforeEach`) runs
   * after that test; one registered in a `beforeAll` runs after the describe that called `suiteFixture()`.
   * Every step runs even when one fails; the first failure is thrown.
   */
  cleanup(step: () => unknown): void;
}

/**
 * The setup every end-to-end suite repeats, written once: call it at the top of a `describe` (before
 * the suite's own hooks). Its `beforeAll` creates the database and the Redis client; its `afterAll`
 * runs the cleanups, clears the library's Redis keys, disconnects and drops the database, in that
 * order, whatever part of the setup failed. What matters to a test (the apps' options, proxies,
 * private servers) stays in the suite, started through `app()` and undone through `cleanup()`: Jest
 * runs a describe's `afterAll` hooks in the order they were declared, so a suite's own `afterAll`
 * would run after the database is gone.
 */
export function suiteFixture(options: SuiteFixtureOptions = {}): SuiteFixture {
  const useRedis = options.redis ?? true;
  let db: TestDatabase | undefined;
  let redis: Redis | undefined;
  const suiteSteps: (() => unknown)[] = [];
  const testSteps: (() => unknown)[] = [];
  // Set by this fixture's own beforeEach (before the suite's, which are declared after it) and unset
  // by its afterEach: a step registered by a test or its beforeEach belongs to the test.
  let inTest = false;

  beforeAll(async () => {
    db = await createTestDatabase();
    if (useRedis) {
      redis = testRedis();
      await clearLibraryKeys(redis);
    }
  });

  beforeEach(() => {
    inTest = true;
  });

  afterEach(async () => {
    inTest = false;
    await runAll(testSteps.splice(0).reverse());
  });

  afterAll(async () => {
    await runAll([
      ...suiteSteps.splice(0).reverse(),
      async () => {
        if (redis) {
          await clearLibraryKeys(redis);
          redis.disconnect();
        }
      },
      () => db?.drop(),
    ]);
  });

  const fixture: SuiteFixture = {
    get db() {
      if (!db) throw new Error('suiteFixture(): the database exists from its beforeAll on');
      return db;
    },
    get redis() {
      if (!useRedis) throw new Error('suiteFixture({ redis: false }) has no shared Redis client');
      if (!redis) throw new Error('suiteFixture(): the Redis client exists from its beforeAll on');
      return redis;
    },
    cleanup(step) {
      (inTest ? testSteps : suiteSteps).push(step);
    },
    async app(appOptions = {}) {
      const app = await createTestApp({ ...appOptions, databaseUrl: appOptions.databaseUrl ?? fixture.db.url });
      fixture.cleanup(() => app.close());
      return app;
    },
    async proxy(url, proxyOptions) {
      const target = new URL(url);
      const port = Number(target.port || DEFAULT_PORTS[target.protocol]);
      if (!port) throw new Error(`suiteFixture().proxy(): no port in ${target.protocol}// URL`);
      const proxy = await TcpProxy.start(target.hostname, port, proxyOptions);
      fixture.cleanup(() => proxy.close());
      return proxy;
    },
  };
  return fixture;
}

const DEFAULT_PORTS: Record<string, number> = { 'postgres:': 5432, 'postgresql:': 5432, 'redis:': 6379 };

/** Runs every step in order, even past a failure, then throws the first failure. */
async function runAll(steps: (() => unknown)[]): Promise<void> {
  let failure: unknown;
  for (const step of steps) {
    try {
      await step();
    } catch (error) {
      failure ??= error;
    }
  }
  if (failure !== undefined) throw failure;
}
