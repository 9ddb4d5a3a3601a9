import { type ChildProcess, fork } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { getRedisConnectionToken } from '@nestjs-modules/ioredis';
import type { INestApplicationContext } from '@nestjs/common';
import Redis from 'ioredis';
import { DataSource } from 'typeorm';
import { ApiTokenMigration } from '../libs/api-token/src';
import { activeKey, cacheKey, generationKey } from '../libs/api-token/src/api-token.keys';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { createTestDatabase } from '../test/support/database';
import { PrivateRedisServer } from '../test/support/redis-server';
import type { Adapter, InjectStats, ServerCommand, ServerRequest, ServerStats, Variant } from './bench.server';

/** PostgreSQL to create the benchmark's own database in. */
export const PG_ADMIN_URL = process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
/** The Redis database index the benchmark uses (on its own private redis-server). */
export const BENCH_REDIS_DB = 7;

/** Everything started by this run, stopped by {@link Cleanup.run} whatever happens. */
export class Cleanup {
  private readonly steps: (() => Promise<unknown> | unknown)[] = [];

  add(step: () => Promise<unknown> | unknown): void {
    this.steps.unshift(step);
  }

  async run(): Promise<void> {
    for (const step of this.steps.splice(0)) {
      try {
        await step();
      } catch (error) {
        console.error('cleanup step failed:', (error as Error).message);
      }
    }
  }
}

/** A redis-server of this run's own (the suites' private server), so that `INFO commandstats` counts only what the benchmark does. */
export async function startRedis(cleanup: Cleanup): Promise<{ url: string; admin: Redis }> {
  const server = await PrivateRedisServer.start();
  cleanup.add(() => server.kill());
  const url = server.url(BENCH_REDIS_DB);
  const admin = new Redis(url, { maxRetriesPerRequest: 1 });
  cleanup.add(() => admin.disconnect());
  return { url, admin };
}

/** Calls per command since the last `CONFIG RESETSTAT`, from `INFO commandstats`, without INFO itself. */
export async function commandStats(admin: Redis): Promise<Map<string, number>> {
  const stats = new Map<string, number>();
  for (const line of (await admin.info('commandstats')).split('\n')) {
    const match = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim());
    if (match && match[1] !== 'info') stats.set(match[1], Number(match[2]));
  }
  return stats;
}

/**
 * Waits until Redis has run no command for 100 ms (2 s at most), so that what an earlier step left
 * in flight (an unlock sent without waiting for it, a coalesced usage write) is not counted in the next
 * measurement; returns the counters then.
 */
async function quiet(admin: Redis): Promise<Map<string, number>> {
  const total = (stats: Map<string, number>) => [...stats.values()].reduce((a, b) => a + b, 0);
  const deadline = Date.now() + 2000;
  let stats = await commandStats(admin);
  for (;;) {
    await sleep(100);
    const next = await commandStats(admin);
    if (total(next) === total(stats) || Date.now() > deadline) return next;
    stats = next;
  }
}

/** A database of this run's own on the shared PostgreSQL, dropped (with its connections) at cleanup. */
export async function createDatabase(cleanup: Cleanup): Promise<string> {
  const db = await createTestDatabase(PG_ADMIN_URL, 'api_token_bench');
  cleanup.add(() => db.drop());
  return db.url;
}

/**
 * A migrated database of this run's own (see {@link createDatabase}), its DataSource and repository,
 * and one token inserted in it: the hot token the request-path benches send.
 */
export async function createBenchDatabase(cleanup: Cleanup): Promise<{ url: string; dataSource: DataSource; repository: ApiTokenRepository; hotToken: string }> {
  const url = await createDatabase(cleanup);
  const dataSource = new DataSource({ type: 'postgres', url, migrations: [ApiTokenMigration], extra: { max: 2 } });
  await dataSource.initialize();
  cleanup.add(() => dataSource.destroy());
  await dataSource.runMigrations();
  const repository = new ApiTokenRepository(dataSource);
  const hot = await repository.insert({ token: generateApiToken('app'), type: 'app' });
  return { url, dataSource, repository, hotToken: hot.token };
}

/** Where a bench that runs its applications in its own process connects to Redis (default: BENCH_REDIS_HOST / _PORT / _DB). */
export interface BenchRedisOptions {
  redisHost?: string;
  redisPort?: number;
  redisDb?: number;
}

/** The bench's Redis: its options, else BENCH_REDIS_HOST / BENCH_REDIS_PORT / BENCH_REDIS_DB, else 127.0.0.1:6379 and `defaultDb`; `url(db)` names another database of the same server. */
export function benchRedis(options: BenchRedisOptions, defaultDb: number): { db: number; url: (db?: number) => string } {
  const host = options.redisHost ?? process.env.BENCH_REDIS_HOST ?? '127.0.0.1';
  const port = options.redisPort ?? Number(process.env.BENCH_REDIS_PORT ?? 6379);
  const db = options.redisDb ?? Number(process.env.BENCH_REDIS_DB ?? defaultDb);
  return { db, url: (other = db) => `redis://${host}:${port}/${other}` };
}

/**
 * Closes applications a bench started in its own process; `@nestjs-modules/ioredis` quits only the
 * first application's connection (a static Set), so the others' are dropped here.
 */
export async function closeBenchApps(apps: readonly INestApplicationContext[]): Promise<void> {
  for (const app of apps) {
    const connection = app.get<Redis>(getRedisConnectionToken());
    await app.close();
    if (connection.status !== 'end') connection.disconnect();
  }
}

/**
 * Deletes what the library wrote to the Redis database at `redisUrl` for these `app` tokens: cache
 * entries and generations in `app` and any, and use marks. Call it after closing the applications,
 * which write their pending uses on shutdown.
 */
export async function deleteTokenKeys(redisUrl: string, tokens: readonly string[]): Promise<void> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  try {
    for (const token of tokens) {
      await redis.del(cacheKey('app', token), cacheKey(null, token), generationKey('app', token), generationKey(null, token), activeKey('app', token));
    }
  } finally {
    await redis.quit();
  }
}

/** A benchmark server process (bench/bench.server.ts) and its IPC commands. */
export class BenchServer {
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(
    readonly name: string,
    readonly port: number,
    private readonly child: ChildProcess,
  ) {
    child.on('message', (message: { id?: number; result?: unknown; error?: string }) => {
      const pending = message.id === undefined ? undefined : this.waiting.get(message.id);
      if (!pending) return;
      this.waiting.delete(message.id!);
      if (message.error) pending.reject(new Error(`${name}: ${message.error}`));
      else pending.resolve(message.result);
    });
    child.once('exit', (code) => {
      for (const pending of this.waiting.values()) pending.reject(new Error(`${name} exited (${code})`));
      this.waiting.clear();
    });
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Forks the server and resolves once it listens. */
  static async start(
    cleanup: Cleanup,
    options: { name: string; variant: Variant; adapter?: Adapter; port: number; databaseUrl: string; redisUrl: string },
  ): Promise<BenchServer> {
    const child = fork(join(__dirname, 'bench.server.ts'), [], {
      execArgv: ['-r', 'ts-node/register/transpile-only', '-r', 'tsconfig-paths/register', ...(process.env.BENCH_NODE_FLAGS?.split(' ').filter(Boolean) ?? [])],
      env: {
        ...process.env,
        BENCH_VARIANT: options.variant,
        BENCH_ADAPTER: options.adapter ?? 'express',
        PORT: String(options.port),
        DATABASE_URL: options.databaseUrl,
        REDIS_URL: options.redisUrl,
        TS_NODE_TRANSPILE_ONLY: 'true',
      },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    cleanup.add(() => stopChild(child));
    killOnExit(child);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${options.name} did not start within 90 s`)), 90_000);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`${options.name} exited during start (${code})`));
      });
      child.on('message', (message: { ready?: boolean }) => {
        if (!message.ready) return;
        clearTimeout(timer);
        resolve();
      });
    });
    return new BenchServer(options.name, options.port, child);
  }

  stats(): Promise<ServerStats> {
    return this.send({ command: 'stats' }) as Promise<ServerStats>;
  }

  /** `count` sequential requests to each path through the server's handler in its own process, no socket (see `injectMany` in bench.server.ts). */
  inject(paths: string[], authorization: string, count: number, interleave: boolean): Promise<InjectStats[]> {
    return this.send({ command: 'inject', paths, authorization, count, interleave }) as Promise<InjectStats[]>;
  }

  async profile<T>(path: string, during: () => Promise<T>): Promise<T> {
    await this.send({ command: 'profile-start' });
    try {
      return await during();
    } finally {
      await this.send({ command: 'profile-stop', path });
    }
  }

  private send(command: ServerRequest): Promise<unknown> {
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.child.send({ ...command, id } as ServerCommand);
    });
  }
}

/** Runs `exported(options)` of a module in a child process (bench/optional.runner.ts). */
export async function runIsolated(
  cleanup: Cleanup,
  file: string,
  exported: string,
  options: Record<string, unknown>,
): Promise<{ result: unknown } | { error: string }> {
  const child = fork(join(__dirname, 'optional.runner.ts'), [], {
    execArgv: ['-r', 'ts-node/register/transpile-only', '-r', 'tsconfig-paths/register'],
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: 'true' },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  cleanup.add(() => stopChild(child));
  killOnExit(child);
  let answer: { result: unknown } | { error: string } | undefined;
  child.once('message', (message: { result: unknown } | { error: string }) => (answer = message));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  child.send({ file, exported, options });
  const code = await exited;
  return answer ?? { error: `the process exited (${code}) without an answer` };
}

/** Kills a child by its pid if this process exits without cleaning up (a crash, an exit() in a library). */
function killOnExit(child: ChildProcess): void {
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  child.once('exit', () => process.off('exit', kill));
}

/** Asks a child to stop (IPC for servers, SIGTERM otherwise), then kills it by its pid if it lingers. */
async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // A child that is exiting already may have closed its IPC channel: then SIGTERM.
  child.on('error', () => undefined);
  if (child.connected) child.send({ id: 0, command: 'stop' } satisfies ServerCommand, (error) => error && child.kill('SIGTERM'));
  else child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/** The servers and stores one run of the benchmark works with. */
export interface BenchContext {
  /** The private redis-server's admin connection. */
  redis: Redis;
  servers: { unguarded: BenchServer; noop: BenchServer; default: BenchServer; dify: BenchServer; naive: BenchServer; second: BenchServer };
  settings: { rounds: number; seconds: number; warmupSeconds: number; connections: number; floodSize: number; stampede: number };
}

/** What the stores saw while `run` ran. */
export interface Measured<T> {
  result: T;
  /** Commands the measured servers sent to Redis (round trips), in all and by name. */
  redisCommands: number;
  redisByCommand: Map<string, number>;
  /** Commands Redis executed (`INFO commandstats` of the private server), counting those run inside scripts. */
  redisExecuted: number;
  lookups: number;
  /** Most lookups one measured server had in flight at once. */
  lookupsMaxConcurrent: number;
  statements: number;
  /** CPU time the measured servers spent, microseconds. */
  cpuMicros: number;
  /** Longest event-loop delay of the measured servers during `run`, milliseconds. */
  eventLoopDelayMaxMs: number;
  /** Bytes the measured servers allocated on the JS heap. */
  allocatedBytes: number;
}

/** Runs `run` and counts the Redis commands and the statements of `servers` it caused. */
export async function measure<T>(context: Pick<BenchContext, 'redis'>, servers: BenchServer[], run: () => Promise<T>): Promise<Measured<T>> {
  const executedBefore = await quiet(context.redis);
  const before = await Promise.all(servers.map((s) => s.stats()));
  const result = await run();
  const after = await Promise.all(servers.map((s) => s.stats()));
  const executedAfter = await commandStats(context.redis);
  const redisByCommand = new Map<string, number>();
  after.forEach((stats, i) => {
    for (const [command, calls] of Object.entries(stats.redis)) {
      const delta = calls - (before[i].redis[command] ?? 0);
      if (delta > 0) redisByCommand.set(command, (redisByCommand.get(command) ?? 0) + delta);
    }
  });
  // PUBLISH as the measured servers sent it: Redis also executes every server's liveness ping (one a
  // second each, whatever the requests), which its counts cannot tell apart.
  let redisExecuted = redisByCommand.get('publish') ?? 0;
  for (const [command, calls] of executedAfter) if (command !== 'publish') redisExecuted += calls - (executedBefore.get(command) ?? 0);
  const sum = (pick: (s: ServerStats) => number) => after.reduce((n, s, i) => n + pick(s) - pick(before[i]), 0);
  return {
    result,
    redisCommands: [...redisByCommand.values()].reduce((a, b) => a + b, 0),
    redisByCommand,
    redisExecuted,
    lookups: sum((s) => s.lookups),
    lookupsMaxConcurrent: Math.max(...after.map((s) => s.lookupsMaxConcurrent)),
    statements: sum((s) => s.statements),
    cpuMicros: sum((s) => s.cpuMicros),
    allocatedBytes: sum((s) => s.allocatedBytes),
    eventLoopDelayMaxMs: Math.max(...after.map((s) => s.eventLoopDelayMaxMs)),
  };
}
