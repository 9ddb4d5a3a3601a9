import { Registry } from 'prom-client';
import { ApiTokenMetrics } from './api-token.metrics';
import { API_TOKEN_COUNTERS, API_TOKEN_GAUGES, API_TOKEN_HISTOGRAMS, registerApiTokenMetrics } from './prometheus.registration';

/** The value of one sample line, `name{labels} value`, or undefined when absent. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('registerApiTokenMetrics', () => {
  let metrics: ApiTokenMetrics;
  let registry: Registry;
  beforeEach(() => {
    metrics = new ApiTokenMetrics();
    registry = registerApiTokenMetrics(metrics, new Registry());
  });

  it('names every metric api_token_*, counters *_total, durations *_seconds', () => {
    for (const { name } of API_TOKEN_COUNTERS) expect(name).toMatch(/^api_token_[a-z_]+_total$/);
    for (const { name } of [...API_TOKEN_GAUGES, ...API_TOKEN_HISTOGRAMS]) expect(name).toMatch(/^api_token_[a-z_]+$/);
    for (const { name } of API_TOKEN_HISTOGRAMS) expect(name).toMatch(/_seconds$/);
  });

  it('reads the counters when scraped, never ahead of it', async () => {
    metrics.lookup('app', 'local_hit');
    const first = await registry.metrics();
    expect(sample(first, 'api_token_lookups_total', 'scope="app",outcome="local_hit"')).toBe(1);
    metrics.lookup('app', 'local_hit');
    metrics.lookup('app', 'local_hit');
    const second = await registry.metrics();
    expect(sample(second, 'api_token_lookups_total', 'scope="app",outcome="local_hit"')).toBe(3);
    expect(sample(second, 'api_token_lookups_total', 'scope="app",outcome="miss"')).toBe(0);
  });

  it('counts rate-limited requests per scope', async () => {
    metrics.scope('app').rateLimited += 2;
    metrics.scope('dataset').rateLimitUnavailable++;
    const text = await registry.metrics();
    expect(sample(text, 'api_token_rate_limited_total', 'scope="app"')).toBe(2);
    expect(sample(text, 'api_token_rate_limited_total', 'scope="dataset"')).toBe(0);
    expect(sample(text, 'api_token_rate_limit_unavailable_total', 'scope="dataset"')).toBe(1);
  });

  it('exports expired refusals as their own lookup outcome, and the expired tokens the job removed', async () => {
    metrics.lookup('app', 'expired');
    metrics.expiredRemoved(3);
    const text = await registry.metrics();
    expect(sample(text, 'api_token_lookups_total', 'scope="app",outcome="expired"')).toBe(1);
    expect(sample(text, 'api_token_lookups_total', 'scope="app",outcome="local_hit"')).toBe(0);
    expect(sample(text, 'api_token_expired_tokens_removed_total')).toBe(3);
  });

  it('exports the histograms with cumulative buckets, +Inf, _sum and _count', async () => {
    metrics.databaseLookup('app', 'found', 0.003);
    metrics.databaseLookup('app', 'found', 0.2);
    const text = await registry.metrics();
    expect(text).toContain('# TYPE api_token_database_lookup_seconds histogram');
    expect(sample(text, 'api_token_database_lookup_seconds_bucket', 'le="0.0025"')).toBe(0);
    expect(sample(text, 'api_token_database_lookup_seconds_bucket', 'le="0.005"')).toBe(1);
    expect(sample(text, 'api_token_database_lookup_seconds_bucket', 'le="+Inf"')).toBe(2);
    expect(sample(text, 'api_token_database_lookup_seconds_count')).toBe(2);
    expect(sample(text, 'api_token_database_lookup_seconds_sum')).toBeCloseTo(0.203);
  });

  it('exports the gauges from the live sources', async () => {
    metrics.source('usagePending', () => 12);
    metrics.source('redisUp', () => 0);
    const text = await registry.metrics();
    expect(sample(text, 'api_token_usage_pending')).toBe(12);
    expect(sample(text, 'api_token_redis_up')).toBe(0);
    expect(sample(text, 'api_token_flush_last_success_timestamp_seconds')).toBe(0);
  });

  it('gives the JSON view the same values', async () => {
    metrics.revocation(true);
    const json = await registry.getMetricsAsJSON();
    const revocations = json.find((m) => m.name === 'api_token_revocations_total');
    expect(revocations?.values).toEqual(expect.arrayContaining([expect.objectContaining({ labels: { outcome: 'revoked' }, value: 1 })]));
  });

  it('refuses a second registration on one registry', () => {
    expect(() => registerApiTokenMetrics(metrics, registry)).toThrow(/already been registered/);
  });
});

describe('without the optional peers installed', () => {
  const missing = (name: string) => () => {
    throw Object.assign(new Error(`Cannot find module '${name}'`), { code: 'MODULE_NOT_FOUND' });
  };

  afterEach(() => {
    jest.dontMock('prom-client');
    jest.dontMock('@nestjs/terminus');
    jest.dontMock('@nestjs-modules/ioredis');
  });

  it('the library loads and counts; registerApiTokenMetrics names what to install', () => {
    jest.isolateModules(() => {
      jest.doMock('prom-client', missing('prom-client'));
      jest.doMock('@nestjs/terminus', missing('@nestjs/terminus'));
      // @nestjs-modules/ioredis 2.2 itself requires @nestjs/terminus (its optional dependency) when it loads.
      jest.doMock('@nestjs-modules/ioredis', () => ({ getRedisConnectionToken: (name?: string) => `redis:${name ?? 'default'}` }));
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const library = require('../index') as typeof import('../index');
      const metrics = new library.ApiTokenMetrics();
      metrics.lookup('app', 'miss');
      expect(metrics.snapshot().scopes.app.lookups.miss).toBe(1);
      expect(() => library.registerApiTokenMetrics(metrics)).toThrow('registerApiTokenMetrics needs the optional peer dependency "prom-client" (npm install prom-client)');
    });
  });
});
