import type * as Keys from './api-token.keys';

/**
 * The module loaded afresh inside the test: the key prefixes and key functions are module-level values,
 * evaluated while the test runs, so a change to them is seen here (and mutation testing counts them as
 * covered by these tests, not only by whichever test happened to load the module first).
 */
function fresh(): typeof Keys {
  let loaded: typeof Keys | undefined;
  jest.isolateModules(() => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    loaded = require('./api-token.keys') as typeof Keys;
  });
  return loaded!;
}

describe('key names shared with Dify (DESIGN.md §1)', () => {
  it('names every key with its prefix, the scope ("any" without one) and the token', () => {
    const keys = fresh();
    expect(keys.cacheKey('app', 't-1')).toBe('api_token:app:t-1');
    expect(keys.cacheKey(null, 't-1')).toBe('api_token:any:t-1');
    expect(keys.cacheKey(undefined, 't-1')).toBe('api_token:any:t-1');
    expect(keys.cacheKey('', 't-1')).toBe('api_token:any:t-1');
    expect(keys.activeKey('dataset', 't-1')).toBe('api_token_active:dataset:t-1');
    expect(keys.activeKey(null, 't-1')).toBe('api_token_active:any:t-1');
    expect(keys.lockKey('app', 't-1')).toBe('api_token_query_lock:app:t-1');
    expect(keys.lockKey(null, 't-1')).toBe('api_token_query_lock:any:t-1');
    expect(keys.tenantIndexKey('tenant-1')).toBe('tenant_tokens:tenant-1');
  });

  it('exports the prefixes those names start with', () => {
    const keys = fresh();
    expect([keys.CACHE_KEY_PREFIX, keys.ACTIVE_KEY_PREFIX, keys.LOCK_KEY_PREFIX, keys.TENANT_INDEX_PREFIX]).toEqual([
      'api_token',
      'api_token_active',
      'api_token_query_lock',
      'tenant_tokens',
    ]);
    expect(keys.ANY_SCOPE).toBe('any');
    expect(keys.ACTIVE_KEY_TTL_SECONDS).toBe(3600);
  });
});

describe('key names of the library', () => {
  it('puts the generation in the cache key\'s Cluster slot (hash tag)', () => {
    const keys = fresh();
    expect(keys.GENERATION_KEY_PREFIX).toBe('api_token_generation');
    expect(keys.generationKey('app', 't-1')).toBe('api_token_generation:{api_token:app:t-1}');
    expect(keys.generationKey(null, 't-1')).toBe('api_token_generation:{api_token:any:t-1}');
  });

  it('names a rate window by scope, token id, window length and window number', () => {
    const keys = fresh();
    expect(keys.RATE_KEY_PREFIX).toBe('api_token_rate');
    expect(keys.rateKey('app', 'id-1', 60, 29_000_000)).toBe('api_token_rate:app:id-1:60:29000000');
    expect(keys.rateKey(null, 'id-1', 1, 0)).toBe('api_token_rate:any:id-1:1:0');
  });

  it('starts a stored hash with "sha256:"', () => {
    expect(fresh().HASHED_TOKEN_PREFIX).toBe('sha256:');
  });

  it('escapes glob characters', () => {
    expect(fresh().escapeGlob('*?[]\\x')).toBe('\\*\\?\\[\\]\\\\x');
  });
});

describe('parseScopedKey', () => {
  it('refuses a key whose prefix is only the start of a longer one', () => {
    const { parseScopedKey } = fresh();
    // Without the ":" after the prefix, "api_token_activeXapp:t" would split into scope "app", token "t".
    expect(parseScopedKey('api_token_active', 'api_token_activeXapp:t')).toBeNull();
    // A cache key's prefix is the start of an active key's: an active key is no cache key.
    expect(parseScopedKey('api_token', 'api_token_active:app:t')).toBeNull();
  });

  it('parses a key of its prefix', () => {
    expect(fresh().parseScopedKey('api_token', 'api_token:app:t')).toEqual({ scope: 'app', token: 't' });
  });
});
