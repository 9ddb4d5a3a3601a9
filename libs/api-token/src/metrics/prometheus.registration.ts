import type * as PromClient from 'prom-client';
import { errorCode } from '../api-token.errors';
import {
  type ApiTokenMetrics,
  type ApiTokenMetricsSnapshot,
  DATABASE_RESULTS,
  FLUSH_OUTCOMES,
  INVALIDATION_KINDS,
  LOOKUP_OUTCOMES,
  REDIS_FALLBACK_REASONS,
  type TimingSnapshot,
} from './api-token.metrics';

type Labels = Record<string, string>;
type Sample = readonly [labels: Labels, value: number];

interface Family {
  name: string;
  help: string;
  labelNames: readonly string[];
  samples: (snapshot: ApiTokenMetricsSnapshot) => Sample[];
}

const byScope = (read: (scope: ApiTokenMetricsSnapshot['scopes'][string]) => number) => (s: ApiTokenMetricsSnapshot): Sample[] =>
  Object.entries(s.scopes).map(([scope, counters]) => [{ scope }, read(counters)]);
const one = (read: (s: ApiTokenMetricsSnapshot) => number) => (s: ApiTokenMetricsSnapshot): Sample[] => [[{}, read(s)]];
const each = <K extends string>(label: string, keys: readonly K[], read: (s: ApiTokenMetricsSnapshot) => Record<K, number>) =>
  (s: ApiTokenMetricsSnapshot): Sample[] => keys.map((key) => [{ [label]: key }, read(s)[key]]);

/** The counters, by name (every name starts with `api_token_`). */
export const API_TOKEN_COUNTERS: readonly Family[] = [
  {
    name: 'api_token_lookups_total',
    help: 'Authentications by scope and by the step that answered: bad_header, malformed (no I/O), local_hit, local_negative, redis_hit, redis_negative, miss (looked up), expired (a cached record of an expired token, refused), filtered (not in the membership filter, no row confirmed in one batched statement).',
    labelNames: ['scope', 'outcome'],
    samples: (s) =>
      Object.entries(s.scopes).flatMap(([scope, c]) => LOOKUP_OUTCOMES.map((outcome): Sample => [{ scope, outcome }, c.lookups[outcome]])),
  },
  {
    name: 'api_token_database_lookups_total',
    help: 'Database lookups of the request path by scope and result (found, not_found, error).',
    labelNames: ['scope', 'result'],
    samples: (s) =>
      Object.entries(s.scopes).flatMap(([scope, c]) => DATABASE_RESULTS.map((result): Sample => [{ scope, result }, c.databaseLookups[result]])),
  },
  {
    name: 'api_token_single_flight_joins_total',
    help: 'Cache misses that shared a database lookup already under way in the process.',
    labelNames: ['scope'],
    samples: byScope((c) => c.singleFlightJoins),
  },
  {
    name: 'api_token_lock_waits_total',
    help: 'Lookups that found the lookup lock held by another and waited for it.',
    labelNames: ['scope'],
    samples: byScope((c) => c.lockWaits),
  },
  {
    name: 'api_token_lock_timeouts_total',
    help: 'Lock waits that ran out (lockWaitMs) and queried the database without the lock.',
    labelNames: ['scope'],
    samples: byScope((c) => c.lockTimeouts),
  },
  {
    name: 'api_token_unavailable_total',
    help: 'Authentications that failed because the database did not answer (the guard answers 503).',
    labelNames: ['scope'],
    samples: byScope((c) => c.unavailable),
  },
  {
    name: 'api_token_lookups_queued_total',
    help: 'Database lookups that waited for a place under maxConcurrentLookups.',
    labelNames: ['scope'],
    samples: byScope((c) => c.lookupsQueued),
  },
  {
    name: 'api_token_lookups_shed_total',
    help: 'Requests refused with 503 because maxConcurrentLookups lookups ran and maxQueuedLookups waited (no lookup made).',
    labelNames: ['scope'],
    samples: byScope((c) => c.lookupsShed),
  },
  {
    name: 'api_token_rate_limited_total',
    help: "Requests refused with 429 because their token's rate limit was reached.",
    labelNames: ['scope'],
    samples: byScope((c) => c.rateLimited),
  },
  {
    name: 'api_token_rate_limit_unavailable_total',
    help: 'Requests of rate-limited tokens refused with 503 because Redis did not answer (rateLimitWhenRedisDown: closed).',
    labelNames: ['scope'],
    samples: byScope((c) => c.rateLimitUnavailable),
  },
  {
    name: 'api_token_failed_attempts_limited_total',
    help: 'Requests refused with 429 before any lookup because their client made failedAttemptLimit failed authentications in the window.',
    labelNames: ['scope'],
    samples: byScope((c) => c.failedAttemptsLimited),
  },
  {
    name: 'api_token_redis_fallbacks_total',
    help: 'Redis calls that yielded nothing and were carried on without, by operation and reason (skipped, failed, error_reply).',
    labelNames: ['operation', 'reason'],
    samples: (s) =>
      Object.entries(s.redis.fallbacks).flatMap(([operation, counts]) =>
        REDIS_FALLBACK_REASONS.map((reason): Sample => [{ operation, reason }, counts[reason]]),
      ),
  },
  { name: 'api_token_redis_outages_total', help: 'Times Redis was taken as down (once per outage).', labelNames: [], samples: one((s) => s.redis.outages) },
  {
    name: 'api_token_usage_dropped_total',
    help: 'Token uses given up because too many were pending while Redis did not answer.',
    labelNames: [],
    samples: one((s) => s.usage.dropped),
  },
  {
    name: 'api_token_flush_runs_total',
    help: 'Usage flushes by outcome (completed, stopped early, failed on the database, skipped: another instance or Redis down).',
    labelNames: ['outcome'],
    samples: each('outcome', FLUSH_OUTCOMES, (s) => s.flush.runs),
  },
  { name: 'api_token_flush_keys_scanned_total', help: 'api_token_active keys the usage flush scanned.', labelNames: [], samples: one((s) => s.flush.scanned) },
  { name: 'api_token_flush_keys_taken_total', help: 'api_token_active keys the usage flush read and deleted.', labelNames: [], samples: one((s) => s.flush.taken) },
  { name: 'api_token_flush_rows_updated_total', help: 'Rows whose last_used_at the usage flush moved forward.', labelNames: [], samples: one((s) => s.flush.updated) },
  {
    name: 'api_token_flush_keys_dropped_total',
    help: 'api_token_active keys the usage flush dropped as unusable (bad key or time).',
    labelNames: [],
    samples: one((s) => s.flush.dropped),
  },
  {
    name: 'api_token_flush_uses_lost_total',
    help: 'Uses the usage flush took from Redis and could not write (0 from 0.3.0: a key is deleted only after its use is written).',
    labelNames: [],
    samples: one((s) => s.flush.usesLost),
  },
  {
    name: 'api_token_expired_tokens_removed_total',
    help: 'Expired tokens the scheduled job deleted, cache entries included (as a revocation does).',
    labelNames: [],
    samples: one((s) => s.flush.expiredRemoved),
  },
  {
    name: 'api_token_revocations_total',
    help: 'Revocations by outcome (revoked: a row was deleted; not_found).',
    labelNames: ['outcome'],
    samples: each('outcome', ['revoked', 'not_found'] as const, (s) => s.invalidation.revocations),
  },
  { name: 'api_token_tenant_invalidations_total', help: 'Tenant-wide cache invalidations.', labelNames: [], samples: one((s) => s.invalidation.tenantInvalidations) },
  {
    name: 'api_token_invalidation_failures_total',
    help: 'Creations, revocations and tenant invalidations whose cache invalidation did not reach Redis (entries may be served until they expire).',
    labelNames: ['kind'],
    samples: each('kind', INVALIDATION_KINDS, (s) => s.invalidation.failures),
  },
  {
    name: 'api_token_invalidation_messages_received_total',
    help: 'Invalidation messages from other instances acted on.',
    labelNames: [],
    samples: one((s) => s.invalidation.messagesReceived),
  },
];

/** The gauges, read when scraped. */
export const API_TOKEN_GAUGES: readonly Family[] = [
  { name: 'api_token_redis_up', help: '1 while the module uses Redis, 0 while it carries on without it.', labelNames: [], samples: one((s) => +s.redis.up) },
  { name: 'api_token_local_cache_entries', help: 'Entries in the in-process cache (L1).', labelNames: [], samples: one((s) => s.localCache.entries) },
  { name: 'api_token_usage_pending', help: 'Token uses waiting in the process to be written to Redis.', labelNames: [], samples: one((s) => s.usage.pending) },
  {
    name: 'api_token_invalidation_listening',
    help: '1 while the invalidation channel is subscribed (revocations on other instances reach this one).',
    labelNames: [],
    samples: one((s) => +s.invalidation.listening),
  },
  {
    name: 'api_token_revoked_tokens_listed',
    help: 'Revoked tokens this instance refuses on its own, from the revocation log, until their cache entries can no longer exist.',
    labelNames: [],
    samples: one((s) => s.invalidation.revokedListed),
  },
  {
    name: 'api_token_revocation_log_lag_seconds',
    help: 'Seconds since this instance last read the revocation log; grows while PostgreSQL does not answer the poll.',
    labelNames: [],
    samples: one((s) => s.invalidation.logLagSeconds),
  },
  {
    name: 'api_token_revocation_log_resets_total',
    help: 'Times this instance found the revocation log reset under it (truncated, or its table made again) and read it again from the start; alert on any.',
    labelNames: [],
    samples: one((s) => s.invalidation.logResets),
  },
  {
    name: 'api_token_flush_last_success_timestamp_seconds',
    help: 'Unix time of the end of the last completed usage flush in this process (0: none yet).',
    labelNames: [],
    samples: one((s) => s.flush.lastSuccessAt ?? 0),
  },
];

/** The histograms. */
export const API_TOKEN_HISTOGRAMS: readonly { name: string; help: string; read: (s: ApiTokenMetricsSnapshot) => TimingSnapshot }[] = [
  { name: 'api_token_database_lookup_seconds', help: 'Duration of the database lookups of the request path.', read: (s) => s.databaseLookupSeconds },
  { name: 'api_token_lock_wait_seconds', help: 'Time lookups waited for the lookup lock held by another.', read: (s) => s.lockWaitSeconds },
  { name: 'api_token_flush_duration_seconds', help: 'Duration of usage flush runs, lock included.', read: (s) => s.flush.durationSeconds },
];

/**
 * Exports the module's metrics to a prom-client registry (default: prom-client's global one) and
 * returns it. The values are read from {@link ApiTokenMetrics.snapshot} when the registry is
 * scraped, so the request path never calls prom-client. Call once per registry.
 *
 * `prom-client` is an optional peer dependency: it is loaded here, on this call, and the module
 * works without it. Throws an Error naming it when it is not installed.
 */
export function registerApiTokenMetrics(metrics: ApiTokenMetrics, registry?: PromClient.Registry): PromClient.Registry {
  const prom = loadPromClient();
  const target = registry ?? prom.register;
  for (const family of API_TOKEN_COUNTERS) {
    new prom.Counter({
      name: family.name,
      help: family.help,
      labelNames: family.labelNames,
      registers: [target],
      collect() {
        this.reset();
        for (const [labels, value] of family.samples(metrics.snapshot())) this.inc(labels, value);
      },
    });
  }
  for (const family of API_TOKEN_GAUGES) {
    new prom.Gauge({
      name: family.name,
      help: family.help,
      labelNames: family.labelNames,
      registers: [target],
      collect() {
        this.reset();
        for (const [labels, value] of family.samples(metrics.snapshot())) this.set(labels, value);
      },
    });
  }
  for (const histogram of API_TOKEN_HISTOGRAMS) target.registerMetric(snapshotHistogram(histogram.name, histogram.help, () => histogram.read(metrics.snapshot())));
  return target;
}

/**
 * A histogram whose buckets are kept by {@link ApiTokenMetrics}: prom-client's own Histogram can only
 * be fed observations, so this implements the `get()` its registry reads (the shape of the value of
 * `Histogram.get()` at run time; its typings call `type` an enum, it is the string); written here
 * because prom-client has no collector of precomputed buckets.
 */
function snapshotHistogram(name: string, help: string, read: () => TimingSnapshot): PromClient.Metric {
  const collector = {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    reset: () => undefined,
    get: async () => {
      const timing = read();
      return {
        name,
        help,
        type: 'histogram',
        aggregator: 'sum',
        values: [
          ...timing.buckets.map((b) => ({ metricName: `${name}_bucket`, labels: { le: Number.isFinite(b.le) ? String(b.le) : '+Inf' }, value: b.count })),
          { metricName: `${name}_sum`, labels: {}, value: timing.sumSeconds },
          { metricName: `${name}_count`, labels: {}, value: timing.count },
        ],
      };
    },
  };
  return collector as unknown as PromClient.Metric;
}

function loadPromClient(): typeof PromClient {
  try {
    // An optional peer dependency: required here, when the application opts in, never when the module loads.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('prom-client') as typeof PromClient;
  } catch (error) {
    if (errorCode(error) === 'MODULE_NOT_FOUND') {
      throw new Error('registerApiTokenMetrics needs the optional peer dependency "prom-client" (npm install prom-client)');
    }
    throw error;
  }
}
