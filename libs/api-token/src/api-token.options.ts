import { ApiTokenInputError } from './api-token.errors';
import { assertFlushCron, DEFAULT_FLUSH_CRON } from './usage/flush.schedule';
import { HASHED_TOKEN_PREFIX } from './api-token.keys';
import { checkRateLimitPolicy } from './limits/rate-limit.policy';
import type { ExecutionContext } from '@nestjs/common';
import type { AuthenticatedApiToken, RateLimitPolicy } from './store/api-token.record';
import type { ApiTokenGuardRequest } from './auth/guard.request';

/** Options of {@link ApiTokenModule}; every field has a default. */
export interface ApiTokenModuleOptions {
  /** Seconds a found token stays in Redis. Default 600 (Dify). */
  cacheTtlSeconds?: number;
  /** Seconds a "no such token" entry stays in Redis. Default 60 (Dify). */
  negativeTtlSeconds?: number;
  /**
   * Seconds the tenant index `tenant_tokens:{tenant_id}` lives; at least `cacheTtlSeconds`, so the index
   * outlives every entry it names (else `invalidateTenant` would miss entries). Default `cacheTtlSeconds` + 60 (Dify: 660).
   */
  tenantIndexTtlSeconds?: number;
  /** Milliseconds the single-flight lock is held at most. Default 10000 (Dify). */
  lockTtlMs?: number;
  /** Milliseconds a lookup waits for the lock before it queries the database anyway. Default 5000 (Dify). */
  lockWaitMs?: number;
  /** Milliseconds between two attempts to take the lock. Default 50. */
  lockRetryDelayMs?: number;
  /** Entries in the in-process cache (L1); 0 turns it off. Default 10000. */
  localCacheMax?: number;
  /** Milliseconds an entry lives in the in-process cache. Bounds how long a revoked token can live on an instance that missed the revocation message. Default 10000. */
  localCacheTtlMs?: number;
  /** Milliseconds between two writes of `api_token_active:*` for one token by this process; 0 writes on every use. Default 1000. */
  usageWriteIntervalMs?: number;
  /**
   * Which tokens are worth a lookup; anything else is refused with no I/O. Must be anchored (`^…$`)
   * and must not match a stored hashed value (`sha256:…`). Whatever it says, a token longer than
   * 255 characters (the column's size) is refused. Default: RFC 6750 b64token.
   */
  tokenPattern?: RegExp;
  /**
   * Store and cache `sha256:` and the SHA-256 (hex) of each token instead of the token. Not
   * Dify-compatible: a Dify installation cannot read such a table. The stored form can never pass
   * the shape check, so neither mode accepts what the other stores. Default false.
   */
  hashTokens?: boolean;
  /**
   * Milliseconds one of the module's own Redis calls may take before it counts as failed and the
   * request carries on without Redis, whatever the client's settings. Default 100.
   */
  redisCommandTimeoutMs?: number;
  /** Milliseconds Redis is skipped after a failure before one call probes it again. Default 1000. */
  redisCooldownMs?: number;
  /**
   * When the usage flush runs: a cron expression (seconds field optional) that runs at least every
   * 900 s, or false for no schedule (`flushNow()` only). Needs `ScheduleModule.forRoot()` in the
   * application. Default `0 * * * * *` (every minute).
   */
  flushCron?: string | false;
  /** Uses the usage flush writes per UPDATE statement (and SCAN COUNT hint). Default 1000. */
  flushPageSize?: number;
  /**
   * Milliseconds one flush run spends walking a shared Redis for usage keys nobody indexed (Dify's):
   * the SCAN pages that found none count, the walk resumes where it stopped at the next run. A larger
   * budget covers a large keyspace in fewer runs, a smaller one keeps each run short (see
   * docs/usage-flush.md, "Bounds on a shared Redis"). Default 100.
   */
  flushScanBudgetMs?: number;
  /**
   * The shape of the module's refusals (401, 429, 503): `'nest'`, Nest's `{message, error, statusCode}`
   * with `WWW-Authenticate: Bearer`; or `'dify'`, Dify's service API `{code, message, status}` with
   * `WWW-Authenticate: Bearer realm="api"`, for clients written against Dify. Default `'nest'`.
   */
  errorFormat?: ApiTokenErrorFormat;
  /** The rate limit of tokens that have none of their own (`{ limit, windowSeconds }`), or null for none. Default null. */
  defaultRateLimit?: RateLimitPolicy | null;
  /**
   * How rate limits are counted across instances. `approximate`: each instance counts locally and adds
   * its count to Redis every `rateLimitSyncIntervalMs` (a hot token costs next to no Redis command; a
   * window may let a bounded number of requests past the limit, see the README). `exact`: one Redis
   * round trip per request of a limited token, never more than the limit per window. Default `approximate`.
   */
  rateLimitMode?: 'approximate' | 'exact';
  /** Milliseconds between two reconciliations of one token's count with Redis, per instance (approximate mode). Default 100. */
  rateLimitSyncIntervalMs?: number;
  /**
   * What a rate-limited token gets while Redis does not answer: `open` counts its requests per
   * instance (each instance allows the limit), `closed` answers 503 with `Retry-After`. Tokens without
   * a limit are not affected. Default `open`.
   */
  rateLimitWhenRedisDown?: 'open' | 'closed';
  /**
   * Milliseconds between two reads of the revocation log (`api_token_revocations`) by this instance:
   * a revoked token is refused everywhere within this interval plus one request, whatever Redis does,
   * as long as PostgreSQL answers. 0: never read (a short-lived process such as a CLI). Default 1000.
   */
  revocationPollIntervalMs?: number;
  /**
   * PostgreSQL lookups of the request path this instance runs at once, at most (tokens neither cache
   * could answer). Keep it at or below the connection pool's size, so a flood of unknown tokens cannot
   * take every connection. In-process and Redis hits never wait for it. Default 8.
   */
  maxConcurrentLookups?: number;
  /**
   * Lookups that may wait for a place under `maxConcurrentLookups`; past that, a request that needs a
   * lookup is answered 503 with `Retry-After` at once (nothing cached). 0: no waiting. Default 256.
   */
  maxQueuedLookups?: number;
  /**
   * Milliseconds between two builds of the membership filter: the fingerprints (4 bytes each) of every
   * stored token, read from the table in pages when the application starts and then at this interval
   * (to forget revoked tokens). A token the filter does not hold skips Redis and the lookup lock: it is
   * checked against the table in one statement with the other such tokens waiting (within the lookup
   * budget), so a flood of unknown tokens costs one statement per batch; a token a row holds (created
   * since the build, on any instance or by Dify) then takes the usual path. 0: no filter (a CLI, or a
   * table too large to read at start). Default 3600000 (an hour).
   */
  membershipFilterRebuildMs?: number;
  /**
   * A limit of failed authentications per client, across every instance: after `limit` refused tokens
   * (unknown, revoked, expired or malformed) from one client within a window of `windowSeconds`, that
   * client's requests get 429 with `Retry-After` (seconds until the window ends) before any lookup,
   * until the window ends. Accepted tokens are never counted; a request without a token (no header, not
   * `Bearer`) is not an attempt. The client is `clientKey(request, context)`, by default the request's
   * `ip` (Express's and Fastify's `trustProxy` settings decide whether a proxy's header is believed).
   * Counted like approximate rate limits (in the process, added to Redis every
   * `rateLimitSyncIntervalMs`). Recommended: `{ limit: 100, windowSeconds: 60 }`. Default null (off).
   */
  failedAttemptLimit?: FailedAttemptLimit | null;
  /**
   * Runs after a token is found (and its rate limit passed) and before the request is let in, for the
   * checks only the application can make: Dify's `validate_app_token` refuses a token whose app is
   * missing, not normal or has its API disabled, or whose tenant is not normal. Return true (or
   * nothing) to let the request in; false to refuse it like an unknown token (401, `Access token is
   * invalid`); an {@link ApiTokenValidationRefusal} to refuse with your status (401 or 403) and message.
   * Refusals take the `errorFormat` shape. An exception it throws goes to Nest's filters as it is.
   * Called for every request, including in-process cache hits: cache what it reads. Default null.
   */
  validate?: ApiTokenValidateHook | null;
}

/** The `failedAttemptLimit` option: at most `limit` failed authentications per client per window. */
export interface FailedAttemptLimit {
  /** Failed authentications a client may make in a window, 1 to 1,000,000; the next attempt gets 429. */
  limit: number;
  /** The window's length in seconds, 1 to 86,400 (fixed windows aligned to their length on the Unix epoch). */
  windowSeconds: number;
  /**
   * The client a request comes from, e.g. a header your proxy sets; undefined (or an empty string)
   * leaves the request uncounted. Default: the request's `ip`. Called only for requests the instance
   * must look up or refuse, never for a token it holds in memory. Never return the token: the key is
   * hashed before it goes to Redis, but it is kept in memory as given (up to 64 characters).
   */
  clientKey?: ApiTokenClientKey | null;
}

/** The `clientKey` of the `failedAttemptLimit` option: the request's client, or undefined for none. */
export type ApiTokenClientKey = (request: ApiTokenGuardRequest, context: ExecutionContext) => string | undefined;

/** What a `validate` hook answers: let in (true, nothing), refuse as an unknown token (false), or refuse as said. */
export type ApiTokenValidation = boolean | void | ApiTokenValidationRefusal;

/** A `validate` hook's refusal: the status (401 or 403) and the message the client reads (never quote the token). */
export interface ApiTokenValidationRefusal {
  /** 401 (not authenticated) or 403 (authenticated, not allowed). */
  status: 401 | 403;
  /** What the client reads; never quote the token. */
  message: string;
}

/** The `validate` option: the identity the guard found and Nest's execution context of the request. */
export type ApiTokenValidateHook = (
  identity: AuthenticatedApiToken,
  context: ExecutionContext,
) => ApiTokenValidation | Promise<ApiTokenValidation>;

/** The shapes the module's refusals can take (see {@link ApiTokenModuleOptions.errorFormat}). */
export type ApiTokenErrorFormat = 'nest' | 'dify';
const ERROR_FORMATS: readonly ApiTokenErrorFormat[] = ['nest', 'dify'];

/** Options after defaults are applied. */
export type ResolvedApiTokenOptions = Required<ApiTokenModuleOptions>;

/** RFC 6750 `b64token`; its length is bounded by {@link MAX_TOKEN_LENGTH}, checked before any pattern. */
export const DEFAULT_TOKEN_PATTERN = /^[A-Za-z0-9\-._~+/]+=*$/;
/** The size of the `token` column: no longer token can be valid, whatever `tokenPattern` says. */
export const MAX_TOKEN_LENGTH = 255;

export const DEFAULT_API_TOKEN_OPTIONS: ResolvedApiTokenOptions = {
  cacheTtlSeconds: 600,
  negativeTtlSeconds: 60,
  tenantIndexTtlSeconds: 660,
  lockTtlMs: 10_000,
  lockWaitMs: 5_000,
  lockRetryDelayMs: 50,
  localCacheMax: 10_000,
  localCacheTtlMs: 10_000,
  usageWriteIntervalMs: 1_000,
  tokenPattern: DEFAULT_TOKEN_PATTERN,
  hashTokens: false,
  redisCommandTimeoutMs: 100,
  redisCooldownMs: 1_000,
  flushCron: DEFAULT_FLUSH_CRON,
  flushPageSize: 1_000,
  flushScanBudgetMs: 100,
  errorFormat: 'nest',
  defaultRateLimit: null,
  rateLimitMode: 'approximate',
  rateLimitSyncIntervalMs: 100,
  rateLimitWhenRedisDown: 'open',
  revocationPollIntervalMs: 1_000,
  maxConcurrentLookups: 8,
  maxQueuedLookups: 256,
  membershipFilterRebuildMs: 3_600_000,
  failedAttemptLimit: null,
  validate: null,
};

const DAY_SECONDS = 86_400;
const MINUTE_MS = 60_000;
/**
 * Integer options with their least and greatest values. The upper bounds keep a typo (`2 ** 40`,
 * `1e9`) from turning a cache or a wait into "forever": a day for what lives in Redis, an hour for
 * the in-process cache (a revoked token lives on an instance that missed the message that long),
 * a minute for waits and timeouts.
 */
const INTEGER_RANGES: Partial<Record<keyof ApiTokenModuleOptions, [min: number, max: number]>> = {
  cacheTtlSeconds: [1, DAY_SECONDS],
  negativeTtlSeconds: [1, DAY_SECONDS],
  tenantIndexTtlSeconds: [1, DAY_SECONDS],
  lockTtlMs: [1, MINUTE_MS],
  lockWaitMs: [0, MINUTE_MS],
  lockRetryDelayMs: [0, MINUTE_MS],
  localCacheMax: [0, 10_000_000],
  localCacheTtlMs: [0, 60 * MINUTE_MS],
  usageWriteIntervalMs: [0, MINUTE_MS],
  redisCommandTimeoutMs: [1, MINUTE_MS],
  redisCooldownMs: [0, MINUTE_MS],
  flushPageSize: [1, 50_000],
  flushScanBudgetMs: [1, MINUTE_MS],
  rateLimitSyncIntervalMs: [1, MINUTE_MS],
  revocationPollIntervalMs: [0, MINUTE_MS],
  maxConcurrentLookups: [1, 10_000],
  maxQueuedLookups: [0, 1_000_000],
  membershipFilterRebuildMs: [0, DAY_SECONDS * 1000],
};

/** Applies defaults and refuses values that cannot work, naming the option. */
export function resolveApiTokenOptions(options: ApiTokenModuleOptions = {}): ResolvedApiTokenOptions {
  const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  const resolved = { ...DEFAULT_API_TOKEN_OPTIONS, ...defined } as ResolvedApiTokenOptions;
  for (const [name, [min, max]] of Object.entries(INTEGER_RANGES)) assertInteger(name, resolved[name as keyof ApiTokenModuleOptions], min, max);
  // Dify's index lives 60 s longer than the entries it names; so does this one unless told otherwise.
  if (options.tenantIndexTtlSeconds === undefined) resolved.tenantIndexTtlSeconds = Math.min(DAY_SECONDS, resolved.cacheTtlSeconds + 60);
  if (resolved.tenantIndexTtlSeconds < resolved.cacheTtlSeconds) {
    throw new ApiTokenInputError('ApiTokenModule: option "tenantIndexTtlSeconds" must not be shorter than "cacheTtlSeconds" (the index must outlive the entries it names)');
  }
  if (resolved.localCacheTtlMs > resolved.cacheTtlSeconds * 1000) {
    throw new ApiTokenInputError('ApiTokenModule: option "localCacheTtlMs" must not be longer than "cacheTtlSeconds"');
  }
  if (resolved.membershipFilterRebuildMs > 0 && resolved.membershipFilterRebuildMs < MINUTE_MS) {
    throw new ApiTokenInputError(`ApiTokenModule: option "membershipFilterRebuildMs" must be 0 (no filter) or at least ${MINUTE_MS} (each build reads the whole table)`);
  }
  assertTokenPattern(resolved.tokenPattern);
  if (typeof resolved.hashTokens !== 'boolean') {
    throw new ApiTokenInputError('ApiTokenModule: option "hashTokens" must be a boolean');
  }
  assertFlushCron(resolved.flushCron);
  assertOneOf('errorFormat', resolved.errorFormat, ERROR_FORMATS);
  resolved.defaultRateLimit = checkRateLimitPolicy(resolved.defaultRateLimit, 'ApiTokenModule: option "defaultRateLimit"');
  assertOneOf('rateLimitMode', resolved.rateLimitMode, ['approximate', 'exact']);
  assertOneOf('rateLimitWhenRedisDown', resolved.rateLimitWhenRedisDown, ['open', 'closed']);
  resolved.failedAttemptLimit = checkFailedAttemptLimit(resolved.failedAttemptLimit);
  if (resolved.validate !== null && typeof resolved.validate !== 'function') {
    throw new ApiTokenInputError('ApiTokenModule: option "validate" must be a function or null');
  }
  return resolved;
}

/** Most failed attempts a limit may allow per window. */
const MAX_FAILED_ATTEMPTS = 1_000_000;

/** Whether a value is an integer from `min` to `max` (Number.isInteger is false for anything but a number). */
const isIntegerIn = (value: unknown, min: number, max: number): value is number => Number.isInteger(value) && (value as number) >= min && (value as number) <= max;

/** The `failedAttemptLimit` option as a fresh object, or null; a clear error (never echoing a value) otherwise. */
function checkFailedAttemptLimit(value: unknown): FailedAttemptLimit | null {
  if (value === null) return null;
  const name = 'ApiTokenModule: option "failedAttemptLimit"';
  if (typeof value !== 'object') throw new ApiTokenInputError(`${name} must be null or { limit, windowSeconds, clientKey? }`);
  const { limit, windowSeconds, clientKey } = value as Partial<FailedAttemptLimit>;
  if (!isIntegerIn(limit, 1, MAX_FAILED_ATTEMPTS)) {
    throw new ApiTokenInputError(`${name}: "limit" must be an integer >= 1 and <= ${MAX_FAILED_ATTEMPTS}`);
  }
  if (!isIntegerIn(windowSeconds, 1, DAY_SECONDS)) {
    throw new ApiTokenInputError(`${name}: "windowSeconds" must be an integer >= 1 and <= ${DAY_SECONDS}`);
  }
  if (clientKey !== undefined && clientKey !== null && typeof clientKey !== 'function') {
    throw new ApiTokenInputError(`${name}: "clientKey" must be a function (request, context) => string | undefined, or left out`);
  }
  return { limit, windowSeconds, clientKey: clientKey ?? null };
}

function assertOneOf(name: string, value: unknown, allowed: readonly string[]): void {
  if (!allowed.includes(value as string)) {
    throw new ApiTokenInputError(`ApiTokenModule: option "${name}" must be ${allowed.map((a) => `"${a}"`).join(' or ')}`);
  }
}

function assertInteger(name: string, value: unknown, min: number, max: number): void {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ApiTokenInputError(`ApiTokenModule: option "${name}" must be an integer >= ${min} and <= ${max}, got ${String(value)}`);
  }
}

function assertTokenPattern(pattern: unknown): asserts pattern is RegExp {
  if (!(pattern instanceof RegExp)) {
    throw new ApiTokenInputError('ApiTokenModule: option "tokenPattern" must be a RegExp');
  }
  if (pattern.global || pattern.sticky) {
    throw new ApiTokenInputError('ApiTokenModule: option "tokenPattern" must not have the g or y flag (test() would keep state)');
  }
  if (!isAnchored(pattern.source)) {
    throw new ApiTokenInputError('ApiTokenModule: option "tokenPattern" must be anchored at both ends (^…$, no top-level |), or it would accept tokens with anything around them');
  }
  if (pattern.test(`${HASHED_TOKEN_PREFIX}${'0'.repeat(64)}`)) {
    throw new ApiTokenInputError('ApiTokenModule: option "tokenPattern" must not accept the stored form of hashed tokens ("sha256:" and hex)');
  }
}

/**
 * Whether a pattern source starts with `^`, ends with an unescaped `$`, and has no `|` outside
 * groups and classes (`^a|b$` is `(^a)|(b$)`). A small walk rather than a regex parser from npm: only
 * escapes, classes and group depth matter here.
 */
function isAnchored(source: string): boolean {
  if (!source.startsWith('^') || !source.endsWith('$')) return false;
  let depth = 0;
  let inClass = false;
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === '\\') {
      if (i === source.length - 2) return false;
      i++;
    } else if (inClass) inClass = c !== ']';
    else if (c === '[') inClass = true;
    else if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (c === '|' && depth === 0) return false;
  }
  return true;
}
