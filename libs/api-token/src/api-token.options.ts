import { assertFlushCron, DEFAULT_FLUSH_CRON } from './usage/flush.schedule';

/** Options of {@link ApiTokenModule}; every field has a default. */
export interface ApiTokenModuleOptions {
  /** Seconds a found token stays in Redis. Default 600 (Dify). */
  cacheTtlSeconds?: number;
  /** Seconds a "no such token" entry stays in Redis. Default 60 (Dify). */
  negativeTtlSeconds?: number;
  /** Seconds the tenant index `tenant_tokens:{tenant_id}` lives. Default 660 (Dify). */
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
  /** Which tokens are worth a lookup; anything else is refused with no I/O. Default: RFC 6750 b64token, at most 255 characters. */
  tokenPattern?: RegExp;
  /**
   * Store and cache the SHA-256 (hex) of each token instead of the token. Not Dify-compatible:
   * a Dify installation cannot read such a table. Default false.
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
   * Milliseconds between two reads of the revocation log (`api_token_revocations`) by this instance:
   * a revoked token is refused everywhere within this interval plus one request, whatever Redis does,
   * as long as PostgreSQL answers. 0: never read (a short-lived process such as a CLI). Default 1000.
   */
  revocationPollIntervalMs?: number;
}

/** Options after defaults are applied. */
export type ResolvedApiTokenOptions = Required<ApiTokenModuleOptions>;

/** RFC 6750 `b64token`, at most 255 characters (the size of the `token` column). */
export const DEFAULT_TOKEN_PATTERN = /^[A-Za-z0-9\-._~+/]{1,255}=*$/;

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
  revocationPollIntervalMs: 1_000,
};

const POSITIVE_INTEGERS: (keyof ApiTokenModuleOptions)[] = [
  'cacheTtlSeconds',
  'negativeTtlSeconds',
  'tenantIndexTtlSeconds',
  'lockTtlMs',
  'redisCommandTimeoutMs',
  'flushPageSize',
];
const NON_NEGATIVE_INTEGERS: (keyof ApiTokenModuleOptions)[] = [
  'lockWaitMs',
  'lockRetryDelayMs',
  'localCacheMax',
  'localCacheTtlMs',
  'usageWriteIntervalMs',
  'redisCooldownMs',
  'revocationPollIntervalMs',
];

/** Applies defaults and refuses values that cannot work, naming the option. */
export function resolveApiTokenOptions(options: ApiTokenModuleOptions = {}): ResolvedApiTokenOptions {
  const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  const resolved = { ...DEFAULT_API_TOKEN_OPTIONS, ...defined } as ResolvedApiTokenOptions;
  for (const name of POSITIVE_INTEGERS) assertInteger(name, resolved[name], 1);
  for (const name of NON_NEGATIVE_INTEGERS) assertInteger(name, resolved[name], 0);
  if (!(resolved.tokenPattern instanceof RegExp)) {
    throw new TypeError('ApiTokenModule: option "tokenPattern" must be a RegExp');
  }
  if (resolved.tokenPattern.global || resolved.tokenPattern.sticky) {
    throw new TypeError('ApiTokenModule: option "tokenPattern" must not have the g or y flag (test() would keep state)');
  }
  if (typeof resolved.hashTokens !== 'boolean') {
    throw new TypeError('ApiTokenModule: option "hashTokens" must be a boolean');
  }
  assertFlushCron(resolved.flushCron);
  return resolved;
}

function assertInteger(name: string, value: unknown, min: number): void {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new TypeError(`ApiTokenModule: option "${name}" must be an integer >= ${min}, got ${String(value)}`);
  }
}
