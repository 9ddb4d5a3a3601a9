import { ApiTokenAuthenticator, ApiTokenMetrics, type ApiTokenMetricsSnapshot, ApiTokenService, ApiTokenUsageFlushService } from '../libs/api-token/src';
import { API_TOKEN_COUNTERS, API_TOKEN_GAUGES, API_TOKEN_HISTOGRAMS } from '../libs/api-token/src/metrics/prometheus.registration';
import { ApiTokenCacheService } from '../libs/api-token/src/cache/token-cache.service';
import { ApiTokenRedisService } from '../libs/api-token/src/redis/redis-access.service';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { FLUSH_LOCK_KEY } from '../libs/api-token/src/usage/usage-flush.service';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { INestApplication } from '@nestjs/common';
import { get, listen } from './support/http-client';
import { REDIS_TEST_URL } from './support/servers';
import { TcpProxy } from './support/tcp-proxy';
import { until } from './support/until';
import { suiteFixture } from './support/suite-fixture';

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = '[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"';
const SAMPLE = new RegExp(`^(${NAME})(?:\\{${LABEL}(?:,${LABEL})*\\})? (?:-?\\d+(?:\\.\\d+)?(?:e[+-]?\\d+)?|NaN|[+-]Inf)$`);
const HELP = new RegExp(`^# HELP (${NAME}) \\S.*$`);
const TYPE = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`);

/**
 * Checks Prometheus text format 0.0.4 line by line (prom-client has no parser): every line is a HELP,
 * a TYPE, a sample or blank; each family has one HELP and one TYPE before its samples, and each sample
 * belongs to the family declared last. Returns the families' names with their types.
 */
function parsePrometheusText(text: string): Map<string, string> {
  const families = new Map<string, string>();
  const helped = new Set<string>();
  let current: { name: string; type: string } | undefined;
  expect(text.endsWith('\n')).toBe(true);
  text.slice(0, -1).split('\n').forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    if (line === '') return;
    const help = HELP.exec(line);
    if (help) {
      if (helped.has(help[1])) throw new Error(`second HELP, ${where}`);
      helped.add(help[1]);
      return;
    }
    const type = TYPE.exec(line);
    if (type) {
      if (families.has(type[1]) || !helped.has(type[1])) throw new Error(`TYPE twice or before HELP, ${where}`);
      families.set(type[1], type[2]);
      current = { name: type[1], type: type[2] };
      return;
    }
    const sample = SAMPLE.exec(line);
    if (!sample || !current) throw new Error(`not a HELP, TYPE or sample line, ${where}`);
    const suffixes = current.type === 'histogram' ? ['_bucket', '_sum', '_count'] : current.type === 'summary' ? ['', '_sum', '_count'] : [''];
    if (!suffixes.some((suffix) => sample[1] === current!.name + suffix)) throw new Error(`sample outside its family ${current.name}, ${where}`);
  });
  return families;
}

/** The value of the sample `name{labels}` in Prometheus text, undefined when absent. */
function sampleValue(text: string, name: string, labels = ''): number | undefined {
  const prefix = `${name}${labels ? `{${labels}}` : ''} `;
  const line = text.split('\n').find((l) => l.startsWith(prefix));
  return line === undefined ? undefined : Number(line.slice(prefix.length));
}

/**
 * The module's metrics against the real PostgreSQL and Redis (each behind a TCP proxy the test
 * can cut): every counter moves for its event, the demo's `/metrics` is Prometheus text with no
 * token in it, and `/health` reports each store.
 */
describe('observability', () => {
  const suite = suiteFixture();
  let pgProxy: TcpProxy;
  let redisProxy: TcpProxy;
  let app: INestApplication;
  let other: INestApplication;
  let port: number;
  let metrics: ApiTokenMetrics;
  let repository: ApiTokenRepository;
  /** Every token the test used, valid or not: none may show in the metrics. */
  const secrets: string[] = [];

  const newToken = async (scope = 'app', tenantId: string | null = null) => {
    const record = await repository.insert({ token: generateApiToken(scope), type: scope, tenantId });
    secrets.push(record.token);
    return record.token;
  };
  const unknownToken = () => {
    const token = generateApiToken('app');
    secrets.push(token);
    return token;
  };
  const whoami = (token: string | undefined, path = '/app/whoami') => get(port, path, token);
  const snapshot = (): ApiTokenMetricsSnapshot => metrics.snapshot();
  const appScope = () => snapshot().scopes.app;

  beforeAll(async () => {
    pgProxy = await suite.proxy(suite.db.url);
    redisProxy = await suite.proxy(REDIS_TEST_URL);
    app = await suite.app({
      databaseUrl: pgProxy.proxied(suite.db.url),
      redisUrl: redisProxy.proxied(REDIS_TEST_URL),
      // Unknown tokens take the usual path (its negatives are counted); the filter has its own suite.
      apiToken: { flushCron: false, lockWaitMs: 300, redisCooldownMs: 100, membershipFilterRebuildMs: 0 },
      typeorm: { connectTimeoutMS: 500, extra: { query_timeout: 1000 } },
    });
    other = await suite.app({ redisUrl: REDIS_TEST_URL, apiToken: { flushCron: false, membershipFilterRebuildMs: 0 } });
    port = await listen(app);
    metrics = app.get(ApiTokenMetrics);
    repository = app.get(ApiTokenRepository);
  });

  it('shows the guard scopes at 0 before any request', () => {
    expect(Object.keys(snapshot().scopes)).toEqual(expect.arrayContaining(['app', 'dataset']));
    expect(snapshot().scopes.dataset.lookups.local_hit).toBe(0);
  });

  it('counts a miss and its database lookup, then a Redis hit, then an in-process hit', async () => {
    const token = await newToken();
    const before = appScope();
    const lookupsBefore = snapshot().databaseLookupSeconds.count;
    expect((await whoami(token)).status).toBe(200);
    let now = appScope();
    expect(now.lookups.miss - before.lookups.miss).toBe(1);
    expect(now.databaseLookups.found - before.databaseLookups.found).toBe(1);
    expect(snapshot().databaseLookupSeconds.count - lookupsBefore).toBe(1);

    app.get(ApiTokenCacheService).clearLocal();
    expect((await whoami(token)).status).toBe(200);
    now = appScope();
    expect(now.lookups.redis_hit - before.lookups.redis_hit).toBe(1);
    expect(snapshot().localCache.entries).toBeGreaterThan(0);

    expect((await whoami(token)).status).toBe(200);
    now = appScope();
    expect(now.lookups.local_hit - before.lookups.local_hit).toBe(1);
    expect(now.lookups.miss - before.lookups.miss).toBe(1);
    expect(now.databaseLookups.found - before.databaseLookups.found).toBe(1);
  });

  it('counts cached negatives in both layers, malformed tokens and bad headers, none with a lookup', async () => {
    const token = unknownToken();
    const before = appScope();
    expect((await whoami(token)).status).toBe(401);
    app.get(ApiTokenCacheService).clearLocal();
    expect((await whoami(token)).status).toBe(401);
    expect((await whoami(token)).status).toBe(401);
    expect((await whoami('not*a*token')).status).toBe(401);
    expect((await whoami(undefined)).status).toBe(401);
    const now = appScope();
    const delta = (k: keyof typeof now.lookups) => now.lookups[k] - before.lookups[k];
    expect([delta('miss'), delta('redis_negative'), delta('local_negative'), delta('malformed'), delta('bad_header')]).toEqual([1, 1, 1, 1, 1]);
    expect(now.databaseLookups.not_found - before.databaseLookups.not_found).toBe(1);
  });

  it('counts misses that joined a lookup under way in the process', async () => {
    const token = await newToken();
    const before = appScope();
    const authenticator = app.get(ApiTokenAuthenticator);
    const results = await Promise.all(Array.from({ length: 5 }, () => authenticator.authenticate(token, 'app')));
    expect(new Set(results.map((r) => r?.id)).size).toBe(1);
    expect(results[0]).toMatchObject({ id: expect.any(String), scope: 'app' });
    const now = appScope();
    expect(now.singleFlightJoins - before.singleFlightJoins).toBe(4);
    expect(now.databaseLookups.found - before.databaseLookups.found).toBe(1);
  });

  it('counts a wait for a lookup lock held elsewhere, and its timeout', async () => {
    const token = await newToken();
    const lock = `api_token_query_lock:{api_token:app:${token}}`;
    await suite.redis.set(lock, 'held-by-another-instance', 'PX', 10_000);
    try {
      const before = appScope();
      const waits = snapshot().lockWaitSeconds.count;
      expect((await whoami(token)).status).toBe(200);
      const now = appScope();
      expect(now.lockWaits - before.lockWaits).toBe(1);
      expect(now.lockTimeouts - before.lockTimeouts).toBe(1);
      expect(snapshot().lockWaitSeconds.count - waits).toBe(1);
      expect(snapshot().lockWaitSeconds.sumSeconds).toBeGreaterThan(0);
    } finally {
      await suite.redis.del(lock);
    }
  });

  it('counts revocations, tenant invalidations, and the invalidation messages another instance acts on', async () => {
    const tenant = '3f9a6b1e-2c4d-4e5f-8a7b-9c0d1e2f3a4b';
    const token = await newToken('app', tenant);
    expect((await whoami(token)).status).toBe(200);
    const tokens = app.get(ApiTokenService);
    const received = () => other.get(ApiTokenMetrics).snapshot().invalidation.messagesReceived;
    const before = snapshot().invalidation;
    const receivedBefore = received();
    expect(other.get(ApiTokenMetrics).snapshot().invalidation.listening).toBe(true);

    await tokens.invalidateTenant(tenant);
    expect((await tokens.revoke(token)).revoked).toHaveLength(1);
    expect((await tokens.revoke(token)).revoked).toHaveLength(0);
    const now = snapshot().invalidation;
    expect(now.revocations.revoked - before.revocations.revoked).toBe(1);
    expect(now.revocations.not_found - before.revocations.not_found).toBe(1);
    expect(now.tenantInvalidations - before.tenantInvalidations).toBe(1);
    expect(now.failures).toEqual(before.failures);
    await until('the other instance acts on the invalidation messages', () => received() > receivedBefore);
  });

  it('counts a usage flush: keys scanned, taken, rows updated, bad keys dropped, duration, last success', async () => {
    const token = await newToken();
    expect((await whoami(token)).status).toBe(200);
    await suite.redis.set('api_token_active:app:app-observabilityBadTime', 'not-a-time', 'EX', 60);
    const before = snapshot().flush;
    const stats = await app.get(ApiTokenUsageFlushService).flushNow();
    expect(stats).not.toBeNull();
    const now = snapshot().flush;
    expect(now.runs.completed - before.runs.completed).toBe(1);
    expect(now.scanned - before.scanned).toBe(stats!.scanned);
    expect(now.taken - before.taken).toBe(stats!.taken);
    expect(now.updated - before.updated).toBeGreaterThanOrEqual(1);
    expect(now.updated - before.updated).toBe(stats!.updated);
    expect(now.dropped - before.dropped).toBe(1);
    expect(now.durationSeconds.count - before.durationSeconds.count).toBe(1);
    expect(now.lastSuccessAt).not.toBeNull();
  });

  it('counts a flush skipped because another instance holds its lock', async () => {
    await suite.redis.set('api_token_flush_lock', 'held-by-another-instance', 'PX', 10_000);
    try {
      const before = snapshot().flush.runs.skipped;
      expect(await app.get(ApiTokenUsageFlushService).flushNow()).toBeNull();
      expect(snapshot().flush.runs.skipped - before).toBe(1);
    } finally {
      await suite.redis.del('api_token_flush_lock');
    }
  });

  it('reports /health 200 with each store up', async () => {
    const answer = await whoami(undefined, '/health');
    expect(answer.status).toBe(200);
    const body = JSON.parse(answer.body);
    expect(body.status).toBe('ok');
    expect(body.details).toEqual({ api_token_database: { status: 'up' }, api_token_redis: { status: 'up', circuit: 'closed' } });
  });

  it('while Redis is cut: counts fallbacks, the outage, a revocation that did not reach Redis; /health 503; then recovers', async () => {
    const token = await newToken();
    const revoked = await newToken();
    const before = snapshot();
    redisProxy.cut('refuse');
    try {
      expect((await whoami(token)).status).toBe(200);
      await app.get(ApiTokenService).revoke(revoked);
      const during = snapshot();
      expect(during.redis.up).toBe(false);
      expect(during.redis.outages - before.redis.outages).toBe(1);
      const fallbacks = (s: ApiTokenMetricsSnapshot) =>
        Object.values(s.redis.fallbacks).reduce((sum, counts) => sum + counts.failed + counts.skipped, 0);
      expect(fallbacks(during)).toBeGreaterThan(fallbacks(before));
      expect(during.invalidation.failures.revoke - before.invalidation.failures.revoke).toBe(1);
      const health = await whoami(undefined, '/health');
      expect(health.status).toBe(503);
      const body = JSON.parse(health.body);
      expect(body.error.api_token_redis.status).toBe('down');
      expect(body.details.api_token_database.status).toBe('up');
    } finally {
      redisProxy.restore();
    }
    await until('Redis used again', async () => {
      await whoami(token);
      return snapshot().redis.up;
    });
  });

  it('counts an error reply (a key of the wrong type) as a fallback, and the lookup as a miss', async () => {
    const token = await newToken();
    await suite.redis.hset(`api_token:app:${token}`, 'not', 'a string');
    try {
      const before = snapshot();
      expect((await whoami(token)).status).toBe(200);
      const now = snapshot();
      expect(now.redis.fallbacks.get.error_reply - (before.redis.fallbacks.get?.error_reply ?? 0)).toBeGreaterThanOrEqual(1);
      expect(now.scopes.app.lookups.miss - before.scopes.app.lookups.miss).toBe(1);
      expect(now.redis.up).toBe(true);
    } finally {
      await suite.redis.del(`api_token:app:${token}`);
    }
  });

  it('while PostgreSQL is cut: counts the 503s, the failed lookups and a failed flush; /health 503', async () => {
    const token = await newToken();
    const used = await newToken();
    expect((await whoami(used)).status).toBe(200);
    const before = appScope();
    const flushBefore = snapshot().flush;
    pgProxy.cut('refuse');
    try {
      await expect(app.get(ApiTokenUsageFlushService).flushNow()).rejects.toThrow(/api_tokens/);
      const flush = snapshot().flush;
      expect(flush.runs.failed - flushBefore.runs.failed).toBe(1);
      expect(flush.taken - flushBefore.taken).toBeGreaterThanOrEqual(1);
      expect(flush.usesLost).toBe(flushBefore.usesLost);
      expect((await whoami(token)).status).toBe(503);
      const now = appScope();
      expect(now.unavailable - before.unavailable).toBe(1);
      expect(now.databaseLookups.error - before.databaseLookups.error).toBe(1);
      const health = await whoami(undefined, '/health');
      expect(health.status).toBe(503);
      expect(JSON.parse(health.body).error.api_token_database).toEqual({ status: 'down', message: expect.stringMatching(/^ApiTokenStoreError/) });
    } finally {
      pgProxy.restore();
    }
    expect((await whoami(token)).status).toBe(200);
  });

  it('serves /metrics as Prometheus text with every metric, the counts above, and no token', async () => {
    const answer = await whoami(undefined, '/metrics');
    expect(answer.status).toBe(200);
    expect(answer.headers['content-type']).toMatch(/^text\/plain;/);
    expect(answer.headers['content-type']).toContain('version=0.0.4');
    const families = parsePrometheusText(answer.body);
    for (const { name } of API_TOKEN_COUNTERS) expect(families.get(name)).toBe('counter');
    for (const { name } of API_TOKEN_GAUGES) expect(families.get(name)).toBe('gauge');
    for (const { name } of API_TOKEN_HISTOGRAMS) expect(families.get(name)).toBe('histogram');

    const s = snapshot();
    expect(sampleValue(answer.body, 'api_token_lookups_total', 'scope="app",outcome="local_hit"')).toBe(s.scopes.app.lookups.local_hit);
    expect(sampleValue(answer.body, 'api_token_database_lookups_total', 'scope="app",result="error"')).toBe(1);
    expect(sampleValue(answer.body, 'api_token_redis_up')).toBe(1);
    expect(sampleValue(answer.body, 'api_token_flush_runs_total', 'outcome="completed"')).toBe(1);
    expect(sampleValue(answer.body, 'api_token_database_lookup_seconds_count')).toBe(s.databaseLookupSeconds.count);

    expect(secrets.length).toBeGreaterThan(5);
    const texts = [answer.body, JSON.stringify(s)];
    for (const token of secrets) {
      const secret = token.slice(token.indexOf('-') + 1);
      for (let i = 0; i + 8 <= secret.length; i++) {
        for (const text of texts) expect(text.includes(secret.slice(i, i + 8))).toBe(false);
      }
    }
  });

  it('loses no use when PostgreSQL and Redis fail together during a flush: they stay in Redis, the next run writes them', async () => {
    await app.get(ApiTokenUsageFlushService).flushNow(); // the uses of the tests above
    const tokens = [await newToken(), await newToken()];
    const time = '2026-05-05T00:00:00.000000';
    for (const token of tokens) await suite.redis.set(`api_token_active:app:${token}`, time, 'EX', 3600);
    const lostBefore = snapshot().flush.usesLost;
    const update = repository.updateLastUsed.bind(repository);
    // Both stores go away once the uses are read from Redis, as the UPDATE starts.
    jest.spyOn(repository, 'updateLastUsed').mockImplementationOnce((page) => {
      pgProxy.cut('refuse');
      redisProxy.cut('refuse');
      return update(page);
    });
    try {
      await expect(app.get(ApiTokenUsageFlushService).flushNow()).rejects.toThrow(/api_tokens/);
    } finally {
      jest.restoreAllMocks();
      pgProxy.restore();
      redisProxy.restore();
    }
    for (const token of tokens) expect(await suite.redis.get(`api_token_active:app:${token}`)).toBe(time);
    await until('Redis answers the app again', async () => (await whoami(tokens[0])).status === 200 && !app.get(ApiTokenRedisService).isDown);
    await suite.redis.del(FLUSH_LOCK_KEY); // the failed run could not release its lock (let it expire now)
    expect(await app.get(ApiTokenUsageFlushService).flushNow()).toMatchObject({ updated: 2 });
    const lastUsed = async (token: string) =>
      (await suite.db.query(`SELECT to_char(last_used_at, 'YYYY-MM-DD"T"HH24:MI:SS.US') AS t FROM api_tokens WHERE token = $1`, [token]))[0]?.t as string;
    expect(await lastUsed(tokens[1])).toBe(time);
    expect(await lastUsed(tokens[0]) > time).toBe(true); // its use since (the whoami above) is newer
    expect(snapshot().flush.usesLost).toBe(lostBefore);
  });
});
