/** Redis key names shared with Dify (DESIGN.md §1). */
export const CACHE_KEY_PREFIX = 'api_token';
export const ACTIVE_KEY_PREFIX = 'api_token_active';
export const LOCK_KEY_PREFIX = 'api_token_query_lock';
export const TENANT_INDEX_PREFIX = 'tenant_tokens';
/** Not in Dify: changes whenever a token is created or revoked, so a cache fill that overlapped it writes nothing. */
export const GENERATION_KEY_PREFIX = 'api_token_generation';
/** Not in Dify: the request count of a rate-limited token in one fixed window. */
export const RATE_KEY_PREFIX = 'api_token_rate';
/** Not in Dify: the failed authentications of one client (by the hash of its key) in one fixed window. */
export const FAILED_ATTEMPT_KEY_PREFIX = 'api_token_failed';
/** Seconds an `api_token_active:*` key lives (Dify). */
export const ACTIVE_KEY_TTL_SECONDS = 3600;
/** The scope segment used when a lookup has no scope. */
export const ANY_SCOPE = 'any';

const scopeOf = (scope: string | null | undefined): string => scope || ANY_SCOPE;

export const cacheKey = (scope: string | null | undefined, token: string): string =>
  `${CACHE_KEY_PREFIX}:${scopeOf(scope)}:${token}`;

export const activeKey = (scope: string | null | undefined, token: string): string =>
  `${ACTIVE_KEY_PREFIX}:${scopeOf(scope)}:${token}`;

export const lockKey = (scope: string | null | undefined, token: string): string =>
  `${LOCK_KEY_PREFIX}:${scopeOf(scope)}:${token}`;

/**
 * The lookup lock the library takes: `api_token_query_lock:{api_token:{scope}:{token}}`, in the cache
 * key's Cluster slot (like {@link generationKey}), so that the first read takes it in the same script
 * as it reads the entry and its generation, and a miss costs no round trip of its own for the lock.
 */
export const lookupLockKey = (scope: string | null | undefined, token: string): string =>
  `${LOCK_KEY_PREFIX}:{${cacheKey(scope, token)}}`;

export const tenantIndexKey = (tenantId: string): string => `${TENANT_INDEX_PREFIX}:${tenantId}`;

/**
 * The generation of one cache key: `api_token_generation:{api_token:{scope}:{token}}`. The braces make
 * it a Redis Cluster hash tag, so it lives in the cache key's slot and one script can check it and
 * write the entry atomically (a token containing `}` breaks the tag: on a Cluster such a token is
 * then never cached, see `setIfGeneration`).
 */
export const generationKey = (scope: string | null | undefined, token: string): string =>
  `${GENERATION_KEY_PREFIX}:{${cacheKey(scope, token)}}`;

/**
 * `api_token_rate:{scope}:{tokenId}:{windowSeconds}:{window}`: the token's id, never the token; the
 * window's length is part of the key, so a changed limit never shares a count with the old one.
 */
export const rateKey = (scope: string | null | undefined, tokenId: string, windowSeconds: number, window: number): string =>
  `${RATE_KEY_PREFIX}:${scopeOf(scope)}:${tokenId}:${windowSeconds}:${window}`;

/**
 * `api_token_failed:{clientHash}:{windowSeconds}:{window}`: a hash of the client key (never the key
 * itself, whatever an application's `clientKey` returns), of a fixed length.
 */
export const failedAttemptKey = (clientHash: string, windowSeconds: number, window: number): string =>
  `${FAILED_ATTEMPT_KEY_PREFIX}:${clientHash}:${windowSeconds}:${window}`;

/** Escapes a literal for a Redis glob pattern (`*`, `?`, `[`, `]`, `\`), so a token never widens a MATCH. */
export const escapeGlob = (literal: string): string => literal.replace(/[*?[\]\\]/g, '\\$&');

/**
 * Splits `{prefix}:{scope}:{token}` into scope and token like Dify: the scope is the segment
 * after the prefix, the token is everything after it (tokens may contain `:` in custom formats).
 * Scope `None` (written by Dify for scope-less lookups) and `any` map to `null`.
 */
export function parseScopedKey(prefix: string, key: string): { scope: string | null; token: string } | null {
  if (!key.startsWith(`${prefix}:`)) return null;
  const rest = key.slice(prefix.length + 1);
  const colon = rest.indexOf(':');
  if (colon <= 0 || colon === rest.length - 1) return null;
  const scope = rest.slice(0, colon);
  return { scope: scope === 'None' || scope === ANY_SCOPE ? null : scope, token: rest.slice(colon + 1) };
}

/**
 * What starts a stored hashed token. `:` is not a b64token character, so a stored hash can never
 * pass the shape check of a plain-mode instance: a leaked hashed table is no use as tokens.
 */
export const HASHED_TOKEN_PREFIX = 'sha256:';
