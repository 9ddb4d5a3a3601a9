import { DEFAULT_DATABASE_ATTEMPTS } from '../libs/api-token/src/env/stores.modules';
import { API_TOKEN_ERRORS } from '../libs/api-token/src/auth/api-token.guard';
import { closedPort, start } from './support/child-process';
import { createTestDatabase, type TestDatabase } from './support/database';
import { get } from './support/http-client';
import { TcpProxy } from './support/tcp-proxy';
import { until } from './support/until';

// Each start runs Node and ts-node: seconds, more when the machine is busy.
jest.setTimeout(60_000);

const PASSWORD = 's3cret-pw';
/**
 * Correctness bounds, not speed: before this change a refused PostgreSQL took 27 s of retries (43 s
 * black-holed). From Nest's first line to the exit (ts-node's compiling left out, as it depends on the
 * machine's load), and for the whole run.
 */
const GIVE_UP_BOUND_MS = 10_000;
const RUN_BOUND_MS = 40_000;
const NEST_STARTS = 'Starting Nest application';

const npmStart = (env: Record<string, string>) => start('npm', ['start'], env);
const tokenCli = (env: Record<string, string>) => start('npm', ['run', '--silent', 'token', '--', 'list'], env);
/** The demo's entry point without npm in between, so that the test can stop the very process it started. */
const demoProcess = (env: Record<string, string>) =>
  start(process.execPath, ['-r', 'ts-node/register/transpile-only', '-r', 'tsconfig-paths/register', 'apps/demo/src/main.ts'], env);

const lines = (text: string) => text.split('\n').filter((line) => line.trim() !== '');
const unreachable = (prefix: string, port: number, code: string) =>
  `${prefix}PostgreSQL did not answer at postgres://postgres:****@127.0.0.1:${port}/postgres (${code}): ` +
  'start it with "docker compose up -d", or set DATABASE_URL.';

describe('start-up with PostgreSQL unreachable', () => {
  let port: number;
  let url: string;

  beforeAll(async () => {
    port = await closedPort();
    url = `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/postgres`;
  });

  it.each([
    ['the demo (npm start)', npmStart, 'Demo cannot start: '],
    ['the token CLI', tokenCli, 'error: '],
  ])('%s: one line naming the store, its masked address and the remedy; exit code 1', async (_name, run, prefix) => {
    const child = run({ DATABASE_URL: url, PORT: '0' });
    const { code, ms } = await child.exited;
    expect(code).toBe(1);
    expect(lines(child.stderr())).toEqual([unreachable(prefix, port, 'ECONNREFUSED')]);
    const everything = child.stdout() + child.stderr();
    expect(everything).not.toContain(PASSWORD);
    expect(everything).not.toMatch(/Unable to connect|Retrying|ERROR|errno/);
    expect(ms).toBeLessThan(RUN_BOUND_MS);
    // The CLI logs nothing before its answer; the demo logs Nest's start.
    if (run === npmStart) expect(ms - child.printedAt(NEST_STARTS)!).toBeLessThan(GIVE_UP_BOUND_MS);
  });

  it('the demo: a black-holed PostgreSQL is reported the same way, after its connect timeouts', async () => {
    const db = await TcpProxy.start('127.0.0.1', port);
    db.cut('hang');
    try {
      const child = npmStart({ DATABASE_URL: db.proxied(url), PORT: '0' });
      const { code, ms } = await child.exited;
      expect(code).toBe(1);
      expect(lines(child.stderr())).toEqual([unreachable('Demo cannot start: ', db.port, 'timeout')]);
      // Two attempts of at most 2 s, 1 s apart: about 5 s of waiting by default.
      expect(db.accepted).toBe(DEFAULT_DATABASE_ATTEMPTS);
      expect(DEFAULT_DATABASE_ATTEMPTS).toBe(2);
      expect(ms - child.printedAt(NEST_STARTS)!).toBeLessThan(GIVE_UP_BOUND_MS);
      expect(ms).toBeLessThan(RUN_BOUND_MS);
    } finally {
      await db.close();
    }
  });

  it('DATABASE_RETRY_ATTEMPTS makes the demo wait: a PostgreSQL that comes up meanwhile is taken', async () => {
    const db = await createTestDatabase();
    const target = new URL(db.url);
    const proxy = await TcpProxy.start(target.hostname, Number(target.port || 5432));
    proxy.cut('refuse');
    const child = demoProcess({ DATABASE_URL: proxy.proxied(db.url), DATABASE_RETRY_ATTEMPTS: '30', PORT: String(await closedPort()) });
    try {
      await until('the first attempt is refused', () => proxy.accepted > 0, 30_000);
      proxy.restore();
      await until('the demo listens', () => child.stdout().includes('Demo listening'), 40_000);
      expect(child.stderr()).toBe('');
    } finally {
      child.process.kill('SIGTERM');
      await child.exited;
      await proxy.close();
      await db.drop();
    }
  });
});

describe('start-up with Redis unreachable', () => {
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    await db?.drop();
  });

  it('the demo says so in one line with the remedy, and serves from PostgreSQL', async () => {
    const redisPort = await closedPort();
    const httpPort = await closedPort();
    const child = demoProcess({ DATABASE_URL: db.url, REDIS_URL: `redis://:${PASSWORD}@127.0.0.1:${redisPort}`, PORT: String(httpPort) });
    try {
      await until('the demo prints its token', () => /Bearer (\S+)'/.test(child.stdout()), 40_000);
      const token = /Bearer (\S+)'/.exec(child.stdout())![1];
      expect((await get(httpPort, '/app/whoami', token)).status).toBe(200);
      expect((await get(httpPort, '/app/whoami', `${token.slice(0, -1)}X`)).body).toContain(API_TOKEN_ERRORS.invalidToken);
      expect(lines(child.stderr())).toEqual([
        `Redis did not answer at redis://:****@127.0.0.1:${redisPort}: the demo serves anyway, authenticating every request from ` +
          'PostgreSQL (no shared cache, no revocation across instances, no usage recording) until Redis answers; ' +
          'start it with "docker compose up -d", or set REDIS_URL.',
      ]);
      expect(child.stdout()).not.toMatch(/\(Error\)|WARN/);
      expect(child.stdout() + child.stderr()).not.toContain(PASSWORD);
    } finally {
      child.process.kill('SIGTERM');
      await child.exited;
    }
  });
});
