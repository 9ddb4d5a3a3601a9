import { Injectable } from '@nestjs/common';
import { ANY_SCOPE } from '../api-token.keys';

/**
 * How one authentication ended, first step that answered: the guard refused the `Authorization`
 * header, the shape check refused the token, the in-process cache or Redis answered (a record or a
 * cached "no such token"), both caches missed and the token was looked up, or a cached record (in
 * process or in Redis) was refused because its token has expired (no I/O beyond that cache read), or
 * the membership filter did not hold the token and the table confirmed that no row does (`filtered`:
 * no Redis command, one statement shared by every such token waiting).
 */
export type LookupOutcome = 'bad_header' | 'malformed' | 'local_hit' | 'local_negative' | 'redis_hit' | 'redis_negative' | 'miss' | 'expired' | 'filtered';
/** @internal */
export const LOOKUP_OUTCOMES: readonly LookupOutcome[] = ['bad_header', 'malformed', 'local_hit', 'local_negative', 'redis_hit', 'redis_negative', 'miss', 'expired', 'filtered'];

/** The result of one database lookup on the request path. */
export type DatabaseResult = 'found' | 'not_found' | 'error';
/** @internal */
export const DATABASE_RESULTS: readonly DatabaseResult[] = ['found', 'not_found', 'error'];

/** Why a Redis call yielded nothing: not sent (circuit open, connection down), failed or timed out, or an error reply. */
export type RedisFallbackReason = 'skipped' | 'failed' | 'error_reply';
/** @internal */
export const REDIS_FALLBACK_REASONS: readonly RedisFallbackReason[] = ['skipped', 'failed', 'error_reply'];

/** How a usage flush ended: every key walked, stopped early (lock lost, Redis gone), the database refused a page, or not run. */
export type FlushOutcome = 'completed' | 'stopped' | 'failed' | 'skipped';
/** @internal */
export const FLUSH_OUTCOMES: readonly FlushOutcome[] = ['completed', 'stopped', 'failed', 'skipped'];

/** What dropped cache entries in Redis: a token's creation, its revocation, a change of its policy (rate limit), or a tenant invalidation. */
export type InvalidationKind = 'create' | 'revoke' | 'policy' | 'tenant';
/** @internal */
export const INVALIDATION_KINDS: readonly InvalidationKind[] = ['create', 'revoke', 'policy', 'tenant'];

/** Values read from the services when a snapshot is taken, rather than counted. */
export type ApiTokenMetricsSource =
  | 'localCacheEntries'
  | 'usagePending'
  | 'redisUp'
  | 'invalidationListening'
  | 'invalidationMessagesReceived'
  | 'revokedTokensListed'
  | 'revocationLogLagSeconds';

/** Label of the scopes beyond {@link MAX_SCOPE_LABELS}, and of scope strings that cannot be a scope. */
export const OTHER_LABEL = 'other';
/** Distinct scope labels kept; later scopes count under {@link OTHER_LABEL}. */
export const MAX_SCOPE_LABELS = 20;
/** Distinct Redis operation labels kept; later ones count under {@link OTHER_LABEL}. */
export const MAX_OPERATION_LABELS = 20;
/** What a scope label may look like: the `type` column's size, no `:` (never a key, never a token of the generated shape). */
const SCOPE_LABEL = /^[A-Za-z0-9_.-]{1,16}$/;
const OPERATION_LABEL = /^[a-z_]{1,32}$/;

/** Upper bounds (seconds) of the histogram buckets. */
export const DATABASE_LOOKUP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;
export const LOCK_WAIT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;
export const FLUSH_DURATION_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120] as const;

/** Authentications by outcome (keys are the `outcome` label values). */
export class LookupCounts implements Record<LookupOutcome, number> {
  bad_header = 0;
  malformed = 0;
  local_hit = 0;
  local_negative = 0;
  redis_hit = 0;
  redis_negative = 0;
  miss = 0;
  expired = 0;
  filtered = 0;
}

/** Database lookups of the request path by result (keys are the `result` label values). */
export class DatabaseCounts implements Record<DatabaseResult, number> {
  found = 0;
  not_found = 0;
  error = 0;
}

/**
 * The counters of one scope label, as plain numbers: the request path increments them directly
 * (an in-process hit costs a map read and one increment).
 */
export class ScopeCounters {
  readonly lookups = new LookupCounts();
  readonly databaseLookups = new DatabaseCounts();
  /** Misses that shared a lookup already under way in the process. */
  singleFlightJoins = 0;
  /** Lookups that found the lookup lock held by another and waited. */
  lockWaits = 0;
  /** Waits that ran out (`lockWaitMs`) and went to the database without the lock. */
  lockTimeouts = 0;
  /** Authentications that failed because the database did not answer (the guard answers 503). */
  unavailable = 0;
  /** Database lookups that waited for a place under `maxConcurrentLookups`. */
  lookupsQueued = 0;
  /** Requests refused with 503 because the lookup budget and its queue were full (no lookup made). */
  lookupsShed = 0;
  /** Requests refused with 429: over their token's rate limit. */
  rateLimited = 0;
  /** Requests of rate-limited tokens refused with 503: Redis did not answer and `rateLimitWhenRedisDown` is `closed`. */
  rateLimitUnavailable = 0;
  /** Requests refused with 429 before any lookup: their client was over the `failedAttemptLimit`. */
  failedAttemptsLimited = 0;
}

/** One scope's counters in a snapshot. */
export interface ScopeMetricsSnapshot {
  /** Lookups by where they were answered (`api_token_lookups_total`). */
  lookups: Record<LookupOutcome, number>;
  /** PostgreSQL lookups by result (`api_token_database_lookups_total`). */
  databaseLookups: Record<DatabaseResult, number>;
  /** Lookups that joined one already under way in this process (`api_token_single_flight_joins_total`). */
  singleFlightJoins: number;
  /** Lookups that waited for another process's lookup lock (`api_token_lock_waits_total`). */
  lockWaits: number;
  /** Lock waits that gave up and looked up on their own (`api_token_lock_timeouts_total`). */
  lockTimeouts: number;
  /** Requests answered 503 because neither store could answer (`api_token_unavailable_total`). */
  unavailable: number;
  /** Lookups that waited for a place under `maxConcurrentLookups` (`api_token_lookups_queued_total`). */
  lookupsQueued: number;
  /** Requests answered 503 because the lookup queue was full (`api_token_lookups_shed_total`). */
  lookupsShed: number;
  /** Requests refused with 429 by the rate limit (`api_token_rate_limited_total`). */
  rateLimited: number;
  /** Requests refused with 503 by a rate limit failing closed without Redis (`api_token_rate_limit_unavailable_total`). */
  rateLimitUnavailable: number;
  /** Requests refused with 429 because their client was over the `failedAttemptLimit` (`api_token_failed_attempts_limited_total`). */
  failedAttemptsLimited: number;
}

/** A duration histogram in a snapshot: cumulative counts per upper bound, as Prometheus has them. */
export interface TimingSnapshot {
  /** Observations. */
  count: number;
  /** Their sum, in seconds. */
  sumSeconds: number;
  /** Cumulative counts: observations at or under `le` seconds. */
  buckets: {
    /** The bucket's upper bound, in seconds. */
    le: number;
    /** Observations at or under it. */
    count: number;
  }[];
}

/** Everything {@link ApiTokenMetrics} knows, as plain data. Scope labels: the scope, `any` (no scope), or `other`. */
export interface ApiTokenMetricsSnapshot {
  /** Request-path counters per scope label. */
  scopes: Record<string, ScopeMetricsSnapshot>;
  /** Durations of request-path database lookups. */
  databaseLookupSeconds: TimingSnapshot;
  /** Durations of waits for a lookup lock held by another process. */
  lockWaitSeconds: TimingSnapshot;
  /** The in-process cache (L1). */
  localCache: {
    /** Entries it holds now. */
    entries: number;
  };
  /** The module's use of Redis. */
  redis: {
    /** True while Redis is used, false while the module does without it. */
    up: boolean;
    /** Times Redis was taken as down (one per outage, however many calls failed). */
    outages: number;
    /** Calls that yielded nothing, by operation and reason. */
    fallbacks: Record<string, Record<RedisFallbackReason, number>>;
  };
  /** Usage recording in this process. */
  usage: {
    /** Uses waiting in the process to be written to Redis. */
    pending: number;
    /** Uses given up because too many were pending while Redis did not answer. */
    dropped: number;
  };
  /** The usage flush, as run by this process. */
  flush: {
    /** Runs by outcome: completed, stopped, failed, skipped. */
    runs: Record<FlushOutcome, number>;
    /** `api_token_active:*` keys the walks returned. */
    scanned: number;
    /** Uses read from Redis (each key deleted once its use is written). */
    taken: number;
    /** Rows whose `last_used_at` moved forward. */
    updated: number;
    /** Unusable keys dropped (bad shape, unreadable time, time too far ahead). */
    dropped: number;
    /**
     * Uses the flush took from Redis and could not write. Stays 0 from 0.3.0: a key leaves Redis only
     * after its use is written. Kept so dashboards and alerts keep their series.
     */
    usesLost: number;
    /** Expired tokens the job deleted (rows and cache entries, through the revocation path). */
    expiredRemoved: number;
    /** Durations of the runs. */
    durationSeconds: TimingSnapshot;
    /** Unix time (seconds) of the end of the last completed run, null before the first. */
    lastSuccessAt: number | null;
  };
  /** Revocations, tenant invalidations and the invalidation channel. */
  invalidation: {
    /** Revocations made by this process. */
    revocations: {
      /** Revocations that deleted a row. */
      revoked: number;
      /** Revocations that matched no row. */
      not_found: number;
    };
    /** Tenant invalidations made by this process. */
    tenantInvalidations: number;
    /** Times this instance found the revocation log reset under it (truncated, or made again) and read it from the start. */
    logResets: number;
    /** Invalidations whose Redis part did not go through (entries may be served until they expire), by kind. */
    failures: Record<InvalidationKind, number>;
    /** True while the invalidation channel reaches this instance (its own ping came back within 3 s). */
    listening: boolean;
    /** Invalidation messages from other instances acted on. */
    messagesReceived: number;
    /** Revoked tokens this instance refuses on its own until their cache entries can no longer exist. */
    revokedListed: number;
    /** Seconds since this instance last read the revocation log (0 when the log is not polled). */
    logLagSeconds: number;
  };
}

/** A duration histogram kept as plain numbers. */
class Timing {
  private count = 0;
  private sum = 0;
  private readonly counts: number[];

  /** @internal Nest's injection: inject the class, never construct it. */
  constructor(private readonly bounds: readonly number[]) {
    this.counts = bounds.map(() => 0);
  }

  observe(seconds: number): void {
    this.count++;
    this.sum += seconds;
    for (let i = 0; i < this.bounds.length; i++) {
      if (seconds <= this.bounds[i]) {
        this.counts[i]++;
        break;
      }
    }
  }

  snapshot(): TimingSnapshot {
    let cumulative = 0;
    const buckets = this.bounds.map((le, i) => ({ le, count: (cumulative += this.counts[i]) }));
    return { count: this.count, sumSeconds: this.sum, buckets: [...buckets, { le: Infinity, count: this.count }] };
  }
}

const zeros = <K extends string>(keys: readonly K[]): Record<K, number> =>
  Object.fromEntries(keys.map((key) => [key, 0])) as Record<K, number>;

/**
 * Counters and timings of the module, kept as plain numbers per low-cardinality label set (scope,
 * outcome), cheap enough for the request path. Read them with {@link snapshot}, or export them to
 * Prometheus with `registerApiTokenMetrics`. No label or value ever holds a token or a key: scope
 * labels are at most `MAX_SCOPE_LABELS` (20) strings shaped like the `type` column, others are `other`.
 */
@Injectable()
export class ApiTokenMetrics {
  private readonly scopes = new Map<string, ScopeCounters>();
  private readonly other = new ScopeCounters();
  private readonly fallbacks = new Map<string, Record<RedisFallbackReason, number>>();
  private readonly otherFallbacks = zeros(REDIS_FALLBACK_REASONS);
  private readonly sources = new Map<ApiTokenMetricsSource, () => number>();
  private readonly databaseLookupTiming = new Timing(DATABASE_LOOKUP_BUCKETS);
  private readonly lockWaitTiming = new Timing(LOCK_WAIT_BUCKETS);
  private readonly flushTiming = new Timing(FLUSH_DURATION_BUCKETS);
  private redisOutages = 0;
  private usageDropped = 0;
  private readonly flushRuns = zeros(FLUSH_OUTCOMES);
  private readonly flushTotals = { scanned: 0, taken: 0, updated: 0, dropped: 0, usesLost: 0, expiredRemoved: 0 };
  private lastFlushSuccess: number | null = null;
  private readonly revocations = { revoked: 0, not_found: 0 };
  private tenantInvalidations = 0;
  private revocationLogResets = 0;
  private readonly invalidationFailures = zeros(INVALIDATION_KINDS);

  /**
   * The counters of a scope (null: `any`); count on the returned object. Allocates only the first time a scope is seen.
   *
   * @hidden
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  scope(scope: string | null): ScopeCounters {
    return this.scopes.get(scope ?? ANY_SCOPE) ?? this.addScope(scope ?? ANY_SCOPE);
  }

  /**
   * Counts one authentication that ended at `outcome`.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  lookup(scope: string | null, outcome: LookupOutcome): void {
    this.scope(scope).lookups[outcome]++;
  }

  /**
   * Counts one database lookup of the request path and its duration.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  databaseLookup(scope: string | null, result: DatabaseResult, seconds: number): void {
    this.scope(scope).databaseLookups[result]++;
    this.databaseLookupTiming.observe(seconds);
  }

  /**
   * Counts a wait for the lookup lock held by another, and how long it lasted.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  lockWaited(scope: string | null, seconds: number, timedOut: boolean): void {
    const counters = this.scope(scope);
    counters.lockWaits++;
    if (timedOut) counters.lockTimeouts++;
    this.lockWaitTiming.observe(seconds);
  }

  /**
   * Counts a Redis call that yielded nothing.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  redisFallback(operation: string, reason: RedisFallbackReason): void {
    let counts = this.fallbacks.get(operation);
    if (!counts) {
      if (this.fallbacks.size >= MAX_OPERATION_LABELS || !OPERATION_LABEL.test(operation)) counts = this.otherFallbacks;
      else this.fallbacks.set(operation, (counts = zeros(REDIS_FALLBACK_REASONS)));
    }
    counts[reason]++;
  }

  /**
   * Counts the start of a Redis outage.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  redisOutage(): void {
    this.redisOutages++;
  }

  /**
   * Counts uses the recorder gave up on.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  usesDropped(count: number): void {
    this.usageDropped += count;
  }

  /**
   * Counts a usage flush that ran, with what it did.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  flushRan(outcome: Exclude<FlushOutcome, 'skipped'>, stats: { scanned: number; taken: number; updated: number; dropped: number; elapsedMs: number }): void {
    this.flushRuns[outcome]++;
    this.flushTotals.scanned += stats.scanned;
    this.flushTotals.taken += stats.taken;
    this.flushTotals.updated += stats.updated;
    this.flushTotals.dropped += stats.dropped;
    this.flushTiming.observe(stats.elapsedMs / 1000);
    if (outcome === 'completed') this.lastFlushSuccess = Date.now() / 1000;
  }

  /**
   * Counts a usage flush that did not run (another instance had the lock or the tick, or Redis did not answer).
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  flushSkipped(): void {
    this.flushRuns.skipped++;
  }

  /**
   * Counts uses the flush took from Redis and could not write (none since 0.3.0; kept for the series).
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  flushUsesLost(count: number): void {
    this.flushTotals.usesLost += count;
  }

  /**
   * Counts expired tokens the scheduled job deleted.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  expiredRemoved(count: number): void {
    this.flushTotals.expiredRemoved += count;
  }

  /**
   * Counts a revocation call: whether it deleted a row.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  revocation(found: boolean): void {
    this.revocations[found ? 'revoked' : 'not_found']++;
  }

  /**
   * Counts a tenant invalidation call.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  tenantInvalidation(): void {
    this.tenantInvalidations++;
  }

  /**
   * Counts a reset of the revocation log seen by this instance.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  revocationLogReset(): void {
    this.revocationLogResets++;
  }

  /**
   * Counts an invalidation whose Redis part did not go through.
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  invalidationFailed(kind: InvalidationKind): void {
    this.invalidationFailures[kind]++;
  }

  /**
   * Registers where a live value is read when a snapshot is taken (the last registration wins).
   *
   * @hidden
   * @internal the module's own counting; applications read {@link ApiTokenMetrics.snapshot}.
   */
  source(name: ApiTokenMetricsSource, read: () => number): void {
    this.sources.set(name, read);
  }

  /** A copy of every counter, timing and live value. */
  snapshot(): ApiTokenMetricsSnapshot {
    const read = (name: ApiTokenMetricsSource): number => this.sources.get(name)?.() ?? 0;
    const scopes: Record<string, ScopeMetricsSnapshot> = {};
    for (const [label, counters] of this.scopes) scopes[label] = copyScope(counters);
    if (this.scopes.size >= MAX_SCOPE_LABELS || hasCounts(this.other)) scopes[OTHER_LABEL] = copyScope(this.other);
    const fallbacks: Record<string, Record<RedisFallbackReason, number>> = {};
    for (const [operation, counts] of this.fallbacks) fallbacks[operation] = { ...counts };
    if (Object.values(this.otherFallbacks).some((n) => n > 0)) fallbacks[OTHER_LABEL] = { ...this.otherFallbacks };
    return {
      scopes,
      databaseLookupSeconds: this.databaseLookupTiming.snapshot(),
      lockWaitSeconds: this.lockWaitTiming.snapshot(),
      localCache: { entries: read('localCacheEntries') },
      redis: { up: this.sources.has('redisUp') ? read('redisUp') === 1 : true, outages: this.redisOutages, fallbacks },
      usage: { pending: read('usagePending'), dropped: this.usageDropped },
      flush: {
        runs: { ...this.flushRuns },
        ...this.flushTotals,
        durationSeconds: this.flushTiming.snapshot(),
        lastSuccessAt: this.lastFlushSuccess,
      },
      invalidation: {
        revocations: { ...this.revocations },
        tenantInvalidations: this.tenantInvalidations,
        logResets: this.revocationLogResets,
        failures: { ...this.invalidationFailures },
        listening: read('invalidationListening') === 1,
        messagesReceived: read('invalidationMessagesReceived'),
        revokedListed: read('revokedTokensListed'),
        logLagSeconds: read('revocationLogLagSeconds'),
      },
    };
  }

  private addScope(scope: string): ScopeCounters {
    if (this.scopes.size >= MAX_SCOPE_LABELS || !SCOPE_LABEL.test(scope)) return this.other;
    const counters = new ScopeCounters();
    this.scopes.set(scope, counters);
    return counters;
  }
}

function copyScope(counters: ScopeCounters): ScopeMetricsSnapshot {
  return { ...counters, lookups: { ...counters.lookups }, databaseLookups: { ...counters.databaseLookups } };
}

function hasCounts(counters: ScopeCounters): boolean {
  const { lookups, databaseLookups, ...rest } = counters;
  return [lookups, databaseLookups, rest].some((counts) => Object.values(counts).some((n) => n > 0));
}
