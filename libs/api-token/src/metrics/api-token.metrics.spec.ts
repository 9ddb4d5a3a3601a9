import { ApiTokenMetrics, LOOKUP_OUTCOMES, MAX_OPERATION_LABELS, MAX_SCOPE_LABELS, OTHER_LABEL } from './api-token.metrics';

describe('ApiTokenMetrics', () => {
  let metrics: ApiTokenMetrics;
  beforeEach(() => (metrics = new ApiTokenMetrics()));

  it('counts each lookup outcome under its scope, and a null scope under "any"', () => {
    LOOKUP_OUTCOMES.forEach((outcome, i) => {
      for (let n = 0; n <= i; n++) metrics.lookup('app', outcome);
    });
    metrics.scope(null).lookups.local_hit++;
    const { scopes } = metrics.snapshot();
    expect(scopes.app.lookups).toEqual(Object.fromEntries(LOOKUP_OUTCOMES.map((outcome, i) => [outcome, i + 1])));
    expect(scopes.any.lookups.local_hit).toBe(1);
  });

  it('hands out one counter object per scope, so the request path only increments', () => {
    expect(metrics.scope('app')).toBe(metrics.scope('app'));
    expect(metrics.scope(null)).toBe(metrics.scope('any'));
  });

  it(`keeps at most ${MAX_SCOPE_LABELS} scope labels and folds the rest into "${OTHER_LABEL}"`, () => {
    for (let i = 0; i < MAX_SCOPE_LABELS + 5; i++) metrics.lookup(`scope${i}`, 'miss');
    const { scopes } = metrics.snapshot();
    expect(Object.keys(scopes)).toHaveLength(MAX_SCOPE_LABELS + 1);
    expect(scopes[OTHER_LABEL].lookups.miss).toBe(5);
    expect(scopes[`scope${MAX_SCOPE_LABELS}`]).toBeUndefined();
  });

  it.each([
    ['a token', 'app-Ab3dEf6hIj9kLm2nOp5qRs8t'],
    ['a cache key', 'api_token:app:x'],
    ['an empty string', ''],
    ['control characters', 'a\nb'],
  ])('never takes %s as a scope label', (_name, scope) => {
    metrics.lookup(scope, 'malformed');
    const { scopes } = metrics.snapshot();
    expect(Object.keys(scopes)).toEqual([OTHER_LABEL]);
    expect(scopes[OTHER_LABEL].lookups.malformed).toBe(1);
  });

  it('shows "other" only once it counts something or the labels are full', () => {
    metrics.lookup('app', 'miss');
    expect(Object.keys(metrics.snapshot().scopes)).toEqual(['app']);
  });

  it('counts database lookups by result and times them in cumulative buckets', () => {
    metrics.databaseLookup('app', 'found', 0.002);
    metrics.databaseLookup('app', 'not_found', 0.02);
    metrics.databaseLookup('dataset', 'error', 30);
    const snapshot = metrics.snapshot();
    expect(snapshot.scopes.app.databaseLookups).toEqual({ found: 1, not_found: 1, error: 0 });
    expect(snapshot.scopes.dataset.databaseLookups).toEqual({ found: 0, not_found: 0, error: 1 });
    const timing = snapshot.databaseLookupSeconds;
    expect(timing.count).toBe(3);
    expect(timing.sumSeconds).toBeCloseTo(30.022);
    const le = (bound: number) => timing.buckets.find((b) => b.le === bound)?.count;
    expect([le(0.001), le(0.0025), le(0.025), le(10), le(Infinity)]).toEqual([0, 1, 2, 2, 3]);
  });

  it('counts lock waits, and the ones that timed out', () => {
    metrics.lockWaited('app', 0.05, false);
    metrics.lockWaited('app', 5, true);
    const snapshot = metrics.snapshot();
    expect(snapshot.scopes.app).toMatchObject({ lockWaits: 2, lockTimeouts: 1 });
    expect(snapshot.lockWaitSeconds.count).toBe(2);
  });

  it('counts Redis fallbacks by operation and reason, with a bounded operation set', () => {
    metrics.redisFallback('get', 'failed');
    metrics.redisFallback('get', 'skipped');
    metrics.redisFallback('get', 'skipped');
    metrics.redisFallback('api_token:app:secret', 'failed');
    for (let i = 0; i < MAX_OPERATION_LABELS + 1; i++) metrics.redisFallback(`op_${String.fromCharCode(97 + i)}`, 'error_reply');
    metrics.redisOutage();
    const { redis } = metrics.snapshot();
    expect(redis.fallbacks.get).toEqual({ skipped: 2, failed: 1, error_reply: 0 });
    expect(Object.keys(redis.fallbacks)).toHaveLength(MAX_OPERATION_LABELS + 1);
    expect(redis.fallbacks[OTHER_LABEL]).toEqual({ skipped: 0, failed: 1, error_reply: 2 });
    expect(redis.outages).toBe(1);
  });

  it('adds up flush runs by outcome and remembers the last success', () => {
    const stats = { scanned: 10, taken: 9, updated: 7, dropped: 1, elapsedMs: 250 };
    metrics.flushRan('completed', stats);
    metrics.flushRan('failed', stats);
    metrics.flushSkipped();
    metrics.flushUsesLost(3);
    const { flush } = metrics.snapshot();
    expect(flush).toMatchObject({ scanned: 20, taken: 18, updated: 14, dropped: 2, usesLost: 3 });
    expect(flush.runs).toEqual({ completed: 1, stopped: 0, failed: 1, skipped: 1 });
    expect(flush.durationSeconds.sumSeconds).toBeCloseTo(0.5);
    expect(flush.lastSuccessAt).toBeGreaterThan(Date.now() / 1000 - 60);
  });

  it('has no last success before a completed flush', () => {
    metrics.flushRan('stopped', { scanned: 0, taken: 0, updated: 0, dropped: 0, elapsedMs: 1 });
    expect(metrics.snapshot().flush.lastSuccessAt).toBeNull();
  });

  it('counts revocations, tenant invalidations and invalidation failures', () => {
    metrics.revocation(true);
    metrics.revocation(false);
    metrics.tenantInvalidation();
    metrics.invalidationFailed('revoke');
    metrics.usesDropped(4);
    const { invalidation, usage } = metrics.snapshot();
    expect(invalidation.revocations).toEqual({ revoked: 1, not_found: 1 });
    expect(invalidation.tenantInvalidations).toBe(1);
    expect(invalidation.failures).toEqual({ create: 0, revoke: 1, policy: 0, tenant: 0 });
    expect(usage.dropped).toBe(4);
  });

  it('reads live values from their sources when the snapshot is taken', () => {
    let pending = 1;
    metrics.source('usagePending', () => pending);
    metrics.source('redisUp', () => 0);
    metrics.source('invalidationListening', () => 1);
    pending = 7;
    const snapshot = metrics.snapshot();
    expect(snapshot.usage.pending).toBe(7);
    expect(snapshot.redis.up).toBe(false);
    expect(snapshot.invalidation.listening).toBe(true);
    expect(snapshot.localCache.entries).toBe(0);
  });

  it('returns copies: a snapshot does not move with later counts', () => {
    metrics.lookup('app', 'local_hit');
    const before = metrics.snapshot();
    metrics.lookup('app', 'local_hit');
    expect(before.scopes.app.lookups.local_hit).toBe(1);
    expect(metrics.snapshot().scopes.app.lookups.local_hit).toBe(2);
  });
});
