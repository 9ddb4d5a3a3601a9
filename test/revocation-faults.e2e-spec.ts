import { ApiTokenAuthenticator, ApiTokenMigration, ApiTokenModule, ApiTokenService, ApiTokenUsageFlushService } from '../libs/api-token/src';
import { ApiTokenRedisService } from '../libs/api-token/src/redis/redis-access.service';
import { ApiTokenRevocationLogService } from '../libs/api-token/src/tokens/revocation-log.service';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { cacheKey, generationKey } from '../libs/api-token/src/api-token.keys';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { setIfGeneration } from '../libs/api-token/src/redis/redis.commands';
import { getRedisConnectionToken } from '@nestjs-modules/ioredis';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';
import Redis, { type Cluster } from 'ioredis';
import { CapturingLogger } from './support/capturing-logger';
import { PrivateRedisServer } from './support/redis-server';
import { REDIS_CLUSTER_NODES, REDIS_TEST_URL } from './support/servers';
import { type RedisFault, TcpProxy } from './support/tcp-proxy';
import { until } from './support/until';
import { localCacheState } from './support/local-cache';
import { whoami } from './support/requests';
import { suiteFixture } from './support/suite-fixture';

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const local = (app: INestApplication, token: string) => localCacheState(app, token);
const cleared = /now cleared from the cache/;

/**
 * Instance B reaches Redis through a proxy that stalls, drops or answers an error for chosen commands;
 * instance A reaches it directly. Whatever one command of B does, a token whose revoke() answered
 * `cacheCleared: true` is refused everywhere, and one whose revoke() answered false is refused once the
 * retry holds. A proxy in front of one Cluster node cannot pick a command (the client follows the
 * cluster's own addresses), so these run on a single node only.
 */
(REDIS_CLUSTER_NODES ? describe.skip : describe)('revocation under injected Redis faults (one command at a time)', () => {
  const suite = suiteFixture();
  let proxy: TcpProxy;
  let a: INestApplication;
  let b: INestApplication;
  const logger = new CapturingLogger();
  const entry = (token: string) => suite.redis.get(`api_token:app:${token}`);
  const generation = (token: string) => suite.redis.get(`api_token_generation:{api_token:app:${token}}`);
  const fault = (f: RedisFault) => proxy.fault(f);
  /** B's fill of the token: the script that writes the entry (EVAL with its body the first time, then EVALSHA). */
  const fillWrite = (token: string) => new RegExp(`^EVAL(SHA)? [\\s\\S]* 2 ${escape(`api_token:app:${token}`)} `);

  beforeAll(async () => {
    proxy = await suite.proxy(REDIS_TEST_URL, { resp: true });
    // A lookup lock left by a fill whose unlock was lost to a fault delays the next lookup by lockWaitMs.
    // Unknown tokens take the usual path here (its negatives are under test); the filter has its own suite.
    const apiToken = { lockWaitMs: 200, membershipFilterRebuildMs: 0 };
    a = await suite.app({ redisUrl: REDIS_TEST_URL, apiToken });
    b = await suite.app({ redisUrl: proxy.proxied(REDIS_TEST_URL), logger, apiToken });
  });

  // A fault that timed out a call opens B's circuit (Redis skipped for redisCooldownMs): each test
  // starts with it closed, so that B's fill does go to Redis.
  beforeEach(async () => {
    const redisOfB = b.get(ApiTokenRedisService);
    await until("B's Redis circuit is closed", async () => {
      await redisOfB.call('ping', (r) => r.ping());
      return !redisOfB.isDown;
    });
  });

  afterEach(() => proxy.clearFaults());

  /** A token of each origin: create() (which sets a generation) or a plain INSERT (Dify, SQL: none). */
  async function newToken(origin: 'create' | 'insert'): Promise<string> {
    if (origin === 'create') return (await a.get(ApiTokenService).create({ scope: 'app' })).token;
    return (await a.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' })).token;
  }

  describe.each(['create', 'insert'] as const)('a fill that read the row before the revoke (token from %s)', (origin) => {
    it('whose write is held until revoke() has answered leaves no entry: the write is refused in Redis', async () => {
      const token = await newToken(origin);
      expect(await generation(token)).toEqual(origin === 'create' ? expect.any(String) : null);
      const write = fault({ match: fillWrite(token), action: 'hold-command' });
      const inFlight = whoami(b, token).then((res) => res.status);
      await write.hit; // B has read the row from PostgreSQL; its write has not reached Redis

      expect(await a.get(ApiTokenService).revoke(token)).toMatchObject({ revoked: [{ scope: 'app' }], cacheCleared: true });
      // B gives up on the write after redisCommandTimeoutMs and answers from the row it read (it raced the revoke).
      expect(await inFlight).toBe(200);
      write.release();
      await write.replied; // the write has reached Redis, long after the revoke

      expect(await entry(token)).toBeNull();
      await until('B has no entry of the token in its in-process cache', () => local(b, token) === 'miss');
      expect((await whoami(a, token)).status).toBe(401);
      expect((await whoami(b, token)).status).toBe(401);
      expect(await entry(token)).toBe('null');
    });

    it('whose write is dropped with its connection leaves no entry, whether or not the client sends it again', async () => {
      const token = await newToken(origin);
      const dropped = fault({ match: fillWrite(token), action: 'drop' });
      const inFlight = whoami(b, token).then((res) => res.status);
      await dropped.hit;
      expect(await inFlight).toBe(200);

      expect((await a.get(ApiTokenService).revoke(token)).cacheCleared).toBe(true);
      const client = b.get(ApiTokenRedisService).client;
      await until('B is connected again', () => client.status === 'ready');
      expect(await entry(token)).toBeNull();
      await until('B has no entry of the token in its in-process cache', () => local(b, token) === 'miss');
      expect((await whoami(a, token)).status).toBe(401);
      expect((await whoami(b, token)).status).toBe(401);
    });

    it('whose write lands but whose reply is lost leaves nothing the revoke does not delete', async () => {
      const token = await newToken(origin);
      const write = fault({ match: fillWrite(token), action: 'hold-reply' });
      const inFlight = whoami(b, token).then((res) => res.status);
      await write.hit;
      expect(await inFlight).toBe(200);
      await until('the write is in Redis (before the revoke, which must drop it)', async () => (await entry(token)) !== null);

      expect((await a.get(ApiTokenService).revoke(token)).cacheCleared).toBe(true);
      write.release();
      await write.replied;
      expect(await entry(token)).toBeNull();
      await until('B drops the token from its in-process cache', () => local(b, token) === 'miss');
      expect((await whoami(a, token)).status).toBe(401);
      expect((await whoami(b, token)).status).toBe(401);
    });
  });

  /** Each command of B's revoke(), its match, and what one failure of it must do. */
  const steps: [string, (token: string) => RegExp][] = [
    ['the generation change', (token) => new RegExp(`^SET ${escape(`api_token_generation:{api_token:any:${token}}`)} `)],
    ['the delete', (token) => new RegExp(`^DEL ${escape(`api_token:app:${token}`)}$`)],
    ['the delete of Dify\'s scope-less key', (token) => new RegExp(`^DEL ${escape(`api_token:None:${token}`)}$`)],
    // The channel itself, not B's ping to itself (`api_token_invalidation:<db>:echo:<id>`), sent every second.
    ['the message to the other instances', () => /^PUBLISH api_token_invalidation:\d+ /],
  ];

  describe.each([
    ['an error reply (NOREPLICAS)', 'error'],
    ['no reply in time', 'hold-reply'],
  ] as const)('%s on one command of revoke()', (_, action) => {
    it.each(steps)('on %s: cacheCleared is false, and the retry later holds on every instance', async (__, match) => {
      const token = await newToken('create');
      for (const app of [a, b]) expect((await whoami(app, token)).status).toBe(200);
      expect(local(a, token)).toBe('hit');
      const before = logger.matching(cleared).length;

      // B's reading of the revocation log deletes the token's keys again, through the same proxy: held
      // while revoke() runs, so that the one command faulted is revoke()'s own, not the log reader's.
      const revocationLog = b.get(ApiTokenRevocationLogService);
      await revocationLog.poll();
      const logHeld = jest.spyOn(revocationLog, 'poll').mockResolvedValue();
      const reply = 'NOREPLICAS Not enough good replicas to write.';
      const injected = fault({ match: match(token), action, reply });
      const revocation = await b.get(ApiTokenService).revoke(token);
      await injected.hit;
      logHeld.mockRestore();
      expect(revocation).toMatchObject({ revoked: [{ scope: 'app' }], cacheCleared: false });
      injected.release();

      await until('the retry holds', () => logger.matching(cleared).length > before);
      expect(await entry(token)).toBeNull();
      expect(await generation(token)).not.toBeNull();
      await until('A drops the token from its in-process cache', () => local(a, token) === 'miss');
      expect((await whoami(a, token)).status).toBe(401);
      expect((await whoami(b, token)).status).toBe(401);
    });
  });

  it('NOREPLICAS on every write: cacheCleared is false, the retry goes on until writes are accepted, then holds', async () => {
    const token = await newToken('create');
    for (const app of [a, b]) expect((await whoami(app, token)).status).toBe(200);
    const before = logger.matching(cleared).length;
    const refused = fault({
      match: /^(SET|DEL|PUBLISH|EVAL|EVALSHA) /,
      action: 'error',
      reply: 'NOREPLICAS Not enough good replicas to write.',
      times: Number.POSITIVE_INFINITY,
    });
    expect((await b.get(ApiTokenService).revoke(token)).cacheCleared).toBe(false);
    // The retry keeps being refused: rounds pass (each sends several writes) without it reporting success.
    const first = refused.hits;
    await until('two more retry rounds were refused', () => refused.hits >= 3 * first);
    expect(logger.matching(cleared).length).toBe(before);
    refused.disarm();
    await until('the retry holds once writes are accepted', () => logger.matching(cleared).length > before);
    expect(await entry(token)).toBeNull();
    expect((await whoami(a, token)).status).toBe(401);
    expect((await whoami(b, token)).status).toBe(401);
  });
});

/** The script behind every fill's write, on one node and on the Cluster (both keys in one slot). */
describe("a fill's conditional write", () => {
  const suite = suiteFixture();

  it('writes only while the generation is the one read, and refuses a write that arrives too late', async () => {
    const token = generateApiToken('app');
    const [key, generationOf] = [cacheKey('app', token), generationKey('app', token)];
    const latest = Math.floor(Date.now() / 1000) + 600;
    expect(await setIfGeneration(suite.redis, key, generationOf, '', 'null', 60, latest)).toBe(1);
    await suite.redis.set(generationOf, 'after-a-revoke');
    expect(await setIfGeneration(suite.redis, key, generationOf, '', '{"stale":true}', 60, latest)).toBe(0);
    expect(await suite.redis.get(key)).toBe('null');
    expect(await setIfGeneration(suite.redis, key, generationOf, 'after-a-revoke', '{"late":true}', 60, latest - 1200)).toBe(-1);
    expect(await suite.redis.get(key)).toBe('null');
    expect(await setIfGeneration(suite.redis, key, generationOf, 'after-a-revoke', '{"fresh":true}', 60, latest)).toBe(1);
    expect(await suite.redis.get(key)).toBe('{"fresh":true}');
  });
});

/**
 * A NOREPLICAS that the server itself answers (`min-replicas-to-write` with no replica), on every
 * master of the private Cluster: revoke() reports it and retries until writes are accepted again.
 * Only in cluster mode: on a single node it would need CONFIG SET on the Redis the other suites share.
 */
(REDIS_CLUSTER_NODES ? describe : describe.skip)('revocation when the Cluster refuses every write (NOREPLICAS)', () => {
  const suite = suiteFixture();
  let a: INestApplication;
  const logger = new CapturingLogger();
  const masters = () => (suite.redis as unknown as Cluster).nodes('master');
  const minReplicas = (n: number) => Promise.all(masters().map((node) => node.config('SET', 'min-replicas-to-write', String(n))));

  beforeAll(async () => {
    a = await suite.app({ logger });
    // Registered after the app, so it runs before the app closes: writes are accepted again first.
    suite.cleanup(() => minReplicas(0));
  });

  it('cacheCleared is false while writes are refused, and the retry holds once they are accepted', async () => {
    const { token } = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(a, token)).status).toBe(200);
    expect(await suite.redis.exists(`api_token:app:${token}`)).toBe(1);
    await minReplicas(1);
    try {
      expect((await a.get(ApiTokenService).revoke(token)).cacheCleared).toBe(false);
      expect(await suite.redis.exists(`api_token:app:${token}`)).toBe(1);
    } finally {
      await minReplicas(0);
    }
    await until('the retry holds', () => logger.matching(cleared).length === 1);
    expect(await suite.redis.exists(`api_token:app:${token}`)).toBe(0);
    expect((await whoami(a, token)).status).toBe(401);
  });
});

/**
 * A frozen Redis (SIGSTOP) and a client with ioredis's defaults (no commandTimeout, commands queued
 * without limit): the module bounds its own calls, so revoke() answers, the flush stops, and the
 * application shuts down. A private server of the test's own, so single node only.
 */
(REDIS_CLUSTER_NODES ? describe.skip : describe)('a frozen Redis with a client of ioredis defaults', () => {
  const suite = suiteFixture({ redis: false });
  let server: PrivateRedisServer;
  let client: Redis;
  let probe: Redis;
  let app: INestApplication;
  const logger = new CapturingLogger();

  beforeAll(async () => {
    server = await PrivateRedisServer.start();
    suite.cleanup(() => server.kill());
    probe = new Redis(server.url());
    client = new Redis(server.url());
    suite.cleanup(() => {
      client.disconnect();
      probe.disconnect();
    });
    // Runs first: a test that froze the server leaves it frozen when it fails.
    suite.cleanup(() => server.resume());
    const redisConnection = getRedisConnectionToken();
    const moduleRef = await Test.createTestingModule({
      imports: [
        { module: class DefaultRedisClient {}, global: true, providers: [{ provide: redisConnection, useValue: client }], exports: [redisConnection] },
        TypeOrmModule.forRoot({ type: 'postgres', url: suite.db.url, migrations: [ApiTokenMigration], migrationsRun: true }),
        ApiTokenModule.forRoot({ flushCron: false, flushPageSize: 2 }),
      ],
    }).compile();
    app = moduleRef.createNestApplication({ logger });
    await app.init();
  });

  it('revoke() answers cacheCleared: false while Redis is frozen, and the retry holds once it resumes', async () => {
    const tokens = app.get(ApiTokenService);
    const { token } = await tokens.create({ scope: 'app' });
    expect(await app.get(ApiTokenAuthenticator).authenticate(token, 'app')).not.toBeNull();
    expect(await probe.exists(`api_token:app:${token}`)).toBe(1);

    server.pause();
    const started = performance.now();
    const revocation = await tokens.revoke(token);
    const elapsed = performance.now() - started;
    expect(revocation).toMatchObject({ revoked: [{ scope: 'app' }], cacheCleared: false });
    server.resume();
    await until('the retry holds', () => logger.matching(cleared).length === 1);
    expect(await probe.exists(`api_token:app:${token}`)).toBe(0);
    console.log(`revoke() with Redis frozen answered in ${elapsed.toFixed(0)} ms (redisCommandTimeoutMs 100)`);
  });

  it('the flush stops when Redis freezes mid-walk, loses no use, and shutdown finishes while it is frozen', async () => {
    const repository = app.get(ApiTokenRepository);
    const tokens: string[] = [];
    for (let i = 0; i < 8; i++) tokens.push((await repository.insert({ token: generateApiToken('app'), type: 'app' })).token);
    for (const token of tokens) await probe.set(`api_token_active:app:${token}`, '2026-01-02T03:04:05.000000', 'EX', 3600);

    // Redis freezes while the walk writes its first page to PostgreSQL.
    const update = repository.updateLastUsed.bind(repository);
    jest.spyOn(repository, 'updateLastUsed').mockImplementationOnce(async (page) => {
      server.pause();
      return update(page);
    });
    const stats = await app.get(ApiTokenUsageFlushService).flushNow();
    expect(stats).not.toBeNull();
    expect(stats!.updated).toBeLessThan(tokens.length);
    expect(logger.matching(/stopped early/)).toHaveLength(1);

    const closing = performance.now();
    await app.close();
    console.log(`shutdown with Redis frozen took ${(performance.now() - closing).toFixed(0)} ms`);

    server.resume();
    // Every use is in PostgreSQL or still in Redis (a key is deleted only after its use is written), none lost.
    const rows = (await suite.db.query('SELECT token, last_used_at FROM api_tokens')) as { token: string; last_used_at: Date | null }[];
    for (const token of tokens) {
      const written = rows.find((row) => row.token === token)?.last_used_at != null;
      const kept = (await probe.exists(`api_token_active:app:${token}`)) === 1;
      expect([token.slice(0, 4), written || kept]).toEqual([token.slice(0, 4), true]);
    }
  });
});
