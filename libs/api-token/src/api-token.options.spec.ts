import { ApiTokenInputError } from './api-token.errors';
import { DEFAULT_API_TOKEN_OPTIONS, resolveApiTokenOptions } from './api-token.options';

describe('resolveApiTokenOptions', () => {
  it('applies Dify defaults', () => {
    const options = resolveApiTokenOptions();
    expect(options).toEqual(DEFAULT_API_TOKEN_OPTIONS);
    expect([options.cacheTtlSeconds, options.negativeTtlSeconds, options.lockTtlMs, options.lockWaitMs]).toEqual([600, 60, 10_000, 5_000]);
  });

  it('keeps defaults for options given as undefined', () => {
    expect(resolveApiTokenOptions({ cacheTtlSeconds: undefined }).cacheTtlSeconds).toBe(600);
  });

  it.each([
    [{ cacheTtlSeconds: 0 }, /cacheTtlSeconds.*>= 1/],
    [{ negativeTtlSeconds: 1.5 }, /negativeTtlSeconds/],
    [{ localCacheMax: -1 }, /localCacheMax.*>= 0/],
    [{ usageWriteIntervalMs: Number.NaN }, /usageWriteIntervalMs/],
    [{ tokenPattern: '^a$' as unknown as RegExp }, /tokenPattern.*RegExp/],
    [{ tokenPattern: /a/g }, /tokenPattern.*g or y/],
    [{ hashTokens: 'yes' as unknown as boolean }, /hashTokens/],
    [{ localCacheTtlMs: 2 ** 40 }, /localCacheTtlMs.*<= 3600000/],
    [{ cacheTtlSeconds: 1e9 }, /cacheTtlSeconds.*<= 86400/],
    [{ lockWaitMs: 1e9 }, /lockWaitMs.*<= 60000/],
    [{ cacheTtlSeconds: 5, localCacheTtlMs: 5_001 }, /localCacheTtlMs.*not be longer than "cacheTtlSeconds"/],
    [{ tokenPattern: /[a-z]+/ }, /tokenPattern.*anchored/],
    [{ tokenPattern: /^[a-z]+/ }, /tokenPattern.*anchored/],
    [{ tokenPattern: /[a-z]+$/ }, /tokenPattern.*anchored/],
    [{ tokenPattern: /^[a-z]+\$/ }, /tokenPattern.*anchored/],
    [{ tokenPattern: /^app-x|dataset-x$/ }, /tokenPattern.*anchored/],
    [{ tokenPattern: /^[a-z0-9:]+$/ }, /tokenPattern.*hashed/],
    [{ errorFormat: 'Dify' as unknown as 'dify' }, /errorFormat.*"nest" or "dify"/],
    [{ flushCron: 'every minute' }, /flushCron/],
    [{ defaultRateLimit: { limit: 0, windowSeconds: 60 } }, /defaultRateLimit/],
    [{ defaultRateLimit: { limit: 10 } as never }, /defaultRateLimit/],
    [{ rateLimitMode: 'strict' as never }, /rateLimitMode.*"approximate" or "exact"/],
    [{ rateLimitWhenRedisDown: 'maybe' as never }, /rateLimitWhenRedisDown.*"open" or "closed"/],
    [{ rateLimitSyncIntervalMs: 0 }, /rateLimitSyncIntervalMs.*>= 1/],
    [{ revocationPollIntervalMs: -1 }, /revocationPollIntervalMs.*>= 0/],
    [{ maxConcurrentLookups: 0 }, /maxConcurrentLookups.*>= 1/],
    [{ maxQueuedLookups: -1 }, /maxQueuedLookups.*>= 0/],
    [{ maxConcurrentLookups: 1.5 }, /maxConcurrentLookups.*integer/],
    [{ cacheTtlSeconds: 3600, tenantIndexTtlSeconds: 3599 }, /tenantIndexTtlSeconds.*not be shorter than "cacheTtlSeconds"/],
    [{ failedAttemptLimit: 100 as never }, /failedAttemptLimit" must be null or \{ limit, windowSeconds, clientKey\? \}/],
    [{ failedAttemptLimit: { windowSeconds: 60 } as never }, /failedAttemptLimit": "limit" must be an integer >= 1 and <= 1000000/],
    [{ failedAttemptLimit: { limit: 0, windowSeconds: 60 } }, /failedAttemptLimit": "limit" must be an integer >= 1/],
    [{ failedAttemptLimit: { limit: 1_000_001, windowSeconds: 60 } }, /failedAttemptLimit": "limit".*<= 1000000/],
    [{ failedAttemptLimit: { limit: 2.5, windowSeconds: 60 } }, /failedAttemptLimit": "limit" must be an integer/],
    [{ failedAttemptLimit: { limit: 100 } as never }, /failedAttemptLimit": "windowSeconds" must be an integer >= 1 and <= 86400/],
    [{ failedAttemptLimit: { limit: 100, windowSeconds: 0 } }, /failedAttemptLimit": "windowSeconds"/],
    [{ failedAttemptLimit: { limit: 100, windowSeconds: 1.5 } }, /failedAttemptLimit": "windowSeconds" must be an integer/],
    [{ failedAttemptLimit: { limit: '100' as never, windowSeconds: 60 } }, /failedAttemptLimit": "limit" must be an integer/],
    [{ failedAttemptLimit: { limit: 100, windowSeconds: 86_401 } }, /failedAttemptLimit": "windowSeconds".*<= 86400/],
    [{ failedAttemptLimit: { limit: 100, windowSeconds: 60, clientKey: 'x-forwarded-for' as never } }, /failedAttemptLimit": "clientKey" must be a function/],
  ])('refuses %p with an ApiTokenInputError naming the option', (options, message) => {
    expect(() => resolveApiTokenOptions(options)).toThrow(message);
    expect(() => resolveApiTokenOptions(options)).toThrow(ApiTokenInputError);
  });

  it('accepts anchored patterns, alternatives inside a group, and an L1 TTL equal to the Redis TTL', () => {
    for (const tokenPattern of [/^(app|dataset)-[A-Za-z0-9]{24}$/, /^[|$]+$/, /^a\|b$/]) {
      expect(resolveApiTokenOptions({ tokenPattern }).tokenPattern).toBe(tokenPattern);
    }
    expect(resolveApiTokenOptions({ cacheTtlSeconds: 5, localCacheTtlMs: 5_000 }).localCacheTtlMs).toBe(5_000);
  });

  it('keeps the tenant index 60 s longer than the entries it names unless told otherwise, as Dify does', () => {
    expect(resolveApiTokenOptions({ cacheTtlSeconds: 3600 }).tenantIndexTtlSeconds).toBe(3660);
    expect(resolveApiTokenOptions({ cacheTtlSeconds: 86_400 }).tenantIndexTtlSeconds).toBe(86_400);
    expect(resolveApiTokenOptions({ cacheTtlSeconds: 3600, tenantIndexTtlSeconds: 3600 }).tenantIndexTtlSeconds).toBe(3600);
  });

  it('leaves the failed-attempt limit off by default, and takes one as a copy with its client key', () => {
    expect(resolveApiTokenOptions().failedAttemptLimit).toBeNull();
    expect(resolveApiTokenOptions({ failedAttemptLimit: null }).failedAttemptLimit).toBeNull();
    const given = { limit: 100, windowSeconds: 60 };
    const resolved = resolveApiTokenOptions({ failedAttemptLimit: given }).failedAttemptLimit;
    expect(resolved).toEqual({ limit: 100, windowSeconds: 60, clientKey: null });
    expect(resolved).not.toBe(given);
    // The bounds themselves are allowed, and a client key left null is the default.
    expect(resolveApiTokenOptions({ failedAttemptLimit: { limit: 1_000_000, windowSeconds: 1, clientKey: null } }).failedAttemptLimit).toEqual({
      limit: 1_000_000,
      windowSeconds: 1,
      clientKey: null,
    });
    const clientKey = () => 'client';
    expect(resolveApiTokenOptions({ failedAttemptLimit: { limit: 1, windowSeconds: 86_400, clientKey } }).failedAttemptLimit?.clientKey).toBe(clientKey);
  });

  it('never echoes a failed-attempt limit it refuses', () => {
    expect(() => resolveApiTokenOptions({ failedAttemptLimit: { limit: 'app-secret123' as never, windowSeconds: 60 } })).toThrow(
      expect.objectContaining({ message: expect.not.stringContaining('app-secret123') }),
    );
  });

  it('takes a default rate limit as a copy', () => {
    const given = { limit: 100, windowSeconds: 60 };
    const { defaultRateLimit } = resolveApiTokenOptions({ defaultRateLimit: given });
    expect(defaultRateLimit).toEqual(given);
    expect(defaultRateLimit).not.toBe(given);
  });

  it('accepts the shapes Dify generates and refuses what cannot be a token', () => {
    const { tokenPattern } = DEFAULT_API_TOKEN_OPTIONS;
    for (const ok of ['app-AbCdEfGhIjKlMnOpQrStUvWx', 'dataset-123', 'a.b~c+d/e_f', 'abc==']) expect(tokenPattern.test(ok)).toBe(true);
    for (const bad of ['', '*', 'app-*', 'a b', 'a\tb', 'tökén', 'a=b', 'a:b', 'sha256:00', '[a-z]']) {
      expect(tokenPattern.test(bad)).toBe(false);
    }
  });
});
