import { ApiTokenService, ApiTokenUsageFlushService } from '../libs/api-token/src';
import { ApiTokenCacheService } from '../libs/api-token/src/cache/token-cache.service';
import { ApiTokenScopeSweep } from '../libs/api-token/src/cache/scope.sweep';
import { ApiTokenRedisService } from '../libs/api-token/src/redis/redis-access.service';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { ApiTokenUsageRecorder } from '../libs/api-token/src/usage/usage.recorder';
import type { INestApplication } from '@nestjs/common';
import type Redis from 'ioredis';
import request from 'supertest';
import { QueryCounter } from './support/query-counter';
import { clearLibraryKeys, commandCalls } from './support/redis';
import { REDIS_CLUSTER_NODES, REDIS_TEST_URL } from './support/servers';
import { suiteFixture } from './support/suite-fixture';
import type { TcpProxy } from './support/tcp-proxy';

jest.setTimeout(120_000);

/** Unrelated keys in the suite's Redis database, as a shared Dify Redis holds (Celery, sessions, caches). */
const UNRELATED = 200_000;
const UNRELATED_PREFIX = 'scale_unrelated';

/**
 * `DEBUG POPULATE` where the server allows DEBUG; otherwise the same keys by a script (test servers are
 * usually started without `enable-debug-command`).
 */
async function populate(redis: Redis): Promise<void> {
  try {
    await redis.call('DEBUG', 'POPULATE', String(UNRELATED), UNRELATED_PREFIX);
    return;
  } catch {
    // DEBUG refused: fall through.
  }
  const script = "for i = ARGV[2], ARGV[3] do redis.call('SET', ARGV[1] .. ':' .. i, 'value:' .. i) end";
  for (let from = 0; from < UNRELATED; from += 50_000) await redis.eval(script, 0, UNRELATED_PREFIX, from, Math.min(from + 50_000, UNRELATED) - 1);
}

async function dropUnrelated(redis: Redis): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${UNRELATED_PREFIX}:*`, 'COUNT', 10_000);
    cursor = next;
    if (keys.length) await redis.unlink(...keys);
  } while (cursor !== '0');
}

// Through a TCP proxy in front of one redis-server (faults are armed per command): not on the Cluster.
(REDIS_CLUSTER_NODES ? describe.skip : describe)(`with ${UNRELATED.toLocaleString('en')} unrelated keys in Redis`, () => {
  const suite = suiteFixture();
  let proxy: TcpProxy;
  let app: INestApplication;
  let tokens: ApiTokenService;
  let repository: ApiTokenRepository;
  let flush: ApiTokenUsageFlushService;
  const counter = new QueryCounter();
  const scans = { match: /^SCAN\b/, action: 'error', reply: 'ERR test: no SCAN expected here', times: 1_000_000 } as const;

  beforeAll(async () => {
    await populate(suite.redis);
    suite.cleanup(() => dropUnrelated(suite.redis));
    proxy = await suite.proxy(REDIS_TEST_URL, { resp: true });
    app = await suite.app({ redisUrl: proxy.proxied(REDIS_TEST_URL), counter, apiToken: { flushCron: false, usageWriteIntervalMs: 60_000 } });
    tokens = app.get(ApiTokenService);
    repository = app.get(ApiTokenRepository);
    flush = app.get(ApiTokenUsageFlushService);
  });

  beforeEach(async () => {
    proxy.clearFaults();
    // The every-scope sweep of an earlier test's revocation walks the 200,000 keys in the background:
    // done first, so the SCANs a test counts are its own.
    await app.get(ApiTokenScopeSweep).drain();
    await clearLibraryKeys(suite.redis);
  });

  const whoami = (token: string) => request(app.getHttpServer()).get('/app/whoami').set('Authorization', `Bearer ${token}`);

  /** A token the request path has cached in Redis. */
  const cachedToken = async (): Promise<string> => {
    const { token } = await tokens.create({ scope: 'app' });
    expect((await whoami(token)).status).toBe(200);
    return token;
  };
  /** The request path is still on Redis: the token, dropped from the in-process cache, is answered with no query. */
  const expectOnRedis = async (token: string): Promise<void> => {
    expect(app.get(ApiTokenRedisService).isDown).toBe(false);
    app.get(ApiTokenCacheService).clearLocal();
    counter.reset();
    expect((await whoami(token)).status).toBe(200);
    expect(counter.count()).toBe(0); // answered from Redis, not PostgreSQL
  };

  it('revokes with no SCAN: confirmed while every SCAN is refused, the cached entry gone from Redis', async () => {
    const tenantId = '3f1c7a52-8a55-4f4e-9a51-6c2b8f0d1e77';
    const { token } = await tokens.create({ scope: 'app', tenantId });
    expect((await whoami(token)).status).toBe(200);
    expect(await suite.redis.exists(`api_token:app:${token}`)).toBe(1);
    const refused = proxy.fault(scans);
    const revocation = await tokens.revoke(token);
    // Read at once: the background sweep may SCAN later, never before the revocation answers.
    expect(refused.hits).toBe(0);
    expect(revocation.cacheCleared).toBe(true);
    expect(await suite.redis.exists(`api_token:app:${token}`, `api_token:any:${token}`, `api_token:None:${token}`)).toBe(0);
    expect(await suite.redis.sismember(`tenant_tokens:${tenantId}`, `api_token:app:${token}`)).toBe(0);
    expect(app.get(ApiTokenRedisService).isDown).toBe(false);
  });

  it('flushes the library\'s own uses without SCAN (every SCAN refused), and a whole run sends a bounded number of SCANs', async () => {
    const rows = await Promise.all(Array.from({ length: 50 }, () => repository.insert({ token: generateApiToken('app'), type: 'app' })));
    const recorder = app.get(ApiTokenUsageRecorder);
    for (const row of rows) recorder.record('app', row.token);
    await recorder.flushPending();
    await new Promise((resolve) => setImmediate(resolve));
    const refused = proxy.fault(scans);
    await flush.flushNow();
    refused.disarm();
    const written = await suite.db.query('SELECT count(*)::int AS n FROM api_tokens WHERE last_used_at IS NOT NULL AND token = ANY($1)', [rows.map((r) => r.token)]);
    expect(written[0].n).toBe(rows.length);

    for (const row of rows) recorder.record('app', row.token);
    await recorder.flushPending();
    const before = await commandCalls(suite.redis, 'scan');
    await flush.flushNow();
    const after = await commandCalls(suite.redis, 'scan');
    // At most one walk of the keyspace at COUNT 1000 (and the budget may stop it earlier), never per key.
    expect(after - before).toBeLessThanOrEqual(Math.ceil((await suite.redis.dbsize()) / 1000) * 2 + 10);
  });

  it('flushes every use Dify wrote (not indexed) within two passes of its walk, a share per run', async () => {
    const rows = await Promise.all(Array.from({ length: 300 }, () => repository.insert({ token: generateApiToken('app'), type: 'app' })));
    const pipeline = suite.redis.pipeline();
    for (const row of rows) pipeline.set(`api_token_active:app:${row.token}`, '2026-02-03T10:00:00.123000', 'EX', 3600);
    await pipeline.exec();
    // The pages of one whole pass at the walk's COUNT: a walk that started mid-way (its cursor is kept
    // across runs) finishes that pass and makes one more, so every key is found within two.
    let pass = 0;
    let cursor = '0';
    do {
      [cursor] = await suite.redis.scan(cursor, 'MATCH', 'api_token_active:*', 'COUNT', 1000);
      pass++;
    } while (cursor !== '0');
    const left = async () =>
      (await suite.db.query('SELECT count(*)::int AS n FROM api_tokens WHERE last_used_at IS NULL AND token = ANY($1)', [rows.map((r) => r.token)]))[0].n as number;
    const scansBefore = await commandCalls(suite.redis, 'scan');
    let runs = 0;
    // Each run walks for flushScanBudgetMs (100 ms), so how many runs it takes depends on the machine;
    // what is pinned is that the walk moves on from run to run and misses nothing in its passes.
    while ((await left()) > 0 && runs < 1000) {
      await flush.flushNow();
      runs++;
    }
    expect(await left()).toBe(0);
    expect((await commandCalls(suite.redis, 'scan')) - scansBefore).toBeLessThanOrEqual(2 * pass + runs);
    expect(await suite.redis.exists(...rows.map((r) => `api_token_active:app:${r.token}`))).toBe(0);
  });

  it.each([
    ['lock', /^EVALSHA\b/],
    ['TIME', /^TIME\b/],
  ])('keeps the request path on Redis when the flush\'s %s goes unanswered: that run is skipped, nothing else', async (_, match) => {
    const token = await cachedToken();
    await app.get(ApiTokenUsageRecorder).flushPending(); // the lock's script is the run's first
    const stalled = proxy.fault({ match, action: 'hold-reply' });
    const run = flush.flushNow();
    await stalled.hit;
    expect(await run).toBeNull();
    stalled.release();
    await expectOnRedis(token);
  });

  it('keeps the request path on Redis when a use\'s write goes unanswered past the request path\'s bound', async () => {
    const token = await cachedToken();
    const recorder = app.get(ApiTokenUsageRecorder);
    await recorder.flushPending();
    const stalled = proxy.fault({ match: /^EVALSHA\b/, action: 'hold-reply' });
    recorder.record('app', generateApiToken('app')); // a first use: written at once, its reply held
    await stalled.hit;
    await recorder.flushPending(); // resolves once the write has given up (it stays pending)
    stalled.release();
    await expectOnRedis(token);
  });

  it('keeps the request path on Redis when a background walk times out', async () => {
    const token = await cachedToken();
    await suite.redis.set('api_token_active:app:dify-written-use', '2026-02-03T10:00:00.000000', 'EX', 3600);
    const stalled = proxy.fault({ match: /^SCAN\b/, action: 'hold-reply' });
    const run = flush.flushNow();
    await stalled.hit;
    const stats = await run; // the walk gives up on the stalled SCAN (bounded, retried on its own)
    stalled.release();
    expect(stats?.updated ?? 0).toBeGreaterThanOrEqual(0);
    await expectOnRedis(token);
  });
});
