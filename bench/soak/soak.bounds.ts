/**
 * Every figure the soak judges by, in one place. Each bound is a statement of the README (or of
 * docs/DESIGN.md) turned into a number; the comment says which, so that a bound changes only when
 * the promise does. The library's defaults are assumed (the soak's instances run with them, apart
 * from the 10 s flush schedule and the rate-limit mode).
 */
export const SOAK_BOUNDS = {
  /**
   * README "The revocation log": "a revoked token is refused everywhere within
   * `revocationPollIntervalMs` plus one request, whatever Redis does, as long as PostgreSQL answers
   * the poll" (default 1 s). Judged on requests *sent* after `revoke()` answered, so "plus one
   * request" is the request already in flight; 1 s of slack covers the poll's own query and a
   * descheduled process on a shared two-core machine.
   */
  revocationMs: 1000 + 1000,
  /**
   * README "If pub/sub is lost" and the failure table's "PostgreSQL not answering the revocation
   * log's poll": without the log an instance relies on pub/sub, and "never longer than
   * `localCacheTtlMs`" (10 s) for what its in-process cache holds. Applies when the instance's
   * PostgreSQL was cut between the revocation and the request; plus the poll after it heals.
   */
  revocationWithoutPostgresMs: 10_000 + 1000 + 1000,
  /**
   * README "Expiry and rotation": "Refused from the moment it expires, on every instance, with no
   * I/O" and "the expiry is not padded"; one clock here (one host). The expiry is stored with
   * millisecond precision; 1 ms covers the rounding of a naive ISO time.
   */
  expiryMs: 1,
  /**
   * A rotated-out token's grace end is an expiry, but the cached records lack it until the rotation's
   * invalidation reaches the instance ("drops the old token's cache entries on every instance through
   * the revocation path"): the later of the grace end and the revocation bound after `rotate()` answered.
   */
  rotationPropagationMs: 1000 + 1000,
  /**
   * README failure table: Redis hanging costs "slowest answer 122 ms", PostgreSQL refusing "3–4 ms
   * per 503"; "PostgreSQL black-holed: the same, once pg's timeouts fire", and the stores' pool
   * (stores.modules.ts) bounds the wait for a pooled connection by the 2 s connect timeout and each
   * query by the 5 s query timeout. So no request may take longer than 2 s + 5 s, plus 1 s of
   * scheduling slack. (A first cut said 6 s, forgetting the pool wait: a seed-7 run met a PostgreSQL
   * stalled by another database's forced checkpoint during a Redis kill and answered in 6.9 s.)
   */
  hangMs: 2000 + 5000 + 1000,
  /**
   * A PostgreSQL that answers nothing for a while is, to the instances, a cut one. The soak probes
   * the database every 500 ms on a connection of its own (a read of `api_tokens`, as a lookup is);
   * a probe slower than this counts as a stall, and the 503 and revocation rules for a cut apply
   * to it (the machine's PostgreSQL is shared: other databases' forced checkpoints stall it).
   */
  postgresStallMs: 1000,
  /**
   * README failure table, "PostgreSQL refusing connections": "an uncached token gets 503 with
   * `Retry-After: 5`". A 503 is accepted only for a request that overlaps a PostgreSQL fault, widened
   * by this much on each side (the pool notices a cut connection at its next query and reconnects
   * within the 2 s connect timeout).
   */
  postgresFaultSlackMs: 3000,
  /**
   * README "Rate limits", approximate mode: "accepted per window ≤ limit + min((N − 1) × limit,
   * 2 × R × (I + d))", I = `rateLimitSyncIntervalMs` (100 ms); d, the round trip, is at most
   * `redisCommandTimeoutMs` (100 ms): a reconciliation slower than that counts as Redis down.
   */
  rateSyncIntervalMs: 100,
  rateRoundTripMs: 100,
  /**
   * README "Redis down": with `rateLimitWhenRedisDown: 'open'` "N instances allow up to N × limit per
   * window until Redis answers again" (in either mode). A window is judged so when a Redis fault,
   * widened by this much (the circuit's cool-down and a reconnect), overlaps it.
   */
  redisFaultSlackMs: 3000,
  /**
   * Not stated in the README: an instance killed mid-window takes what it counted and had not yet
   * sent with it, and its successor starts from Redis's total; so a window that holds a kill is
   * judged against one instance more (N + 1) × limit. A premise of the soak, said in its README.
   */
  killedInstanceExtraLimits: 1,
  /**
   * "No use lost": DESIGN §3 and README "Usage flush". A use is dated by the instance when it
   * answers (after the client sent it); "a pending use … may be up to 1 ms early".
   */
  usePrecisionMs: 1,
  /**
   * README "What a failure costs": an instance that dies without shutting down loses "its pending
   * usage writes (at most `usageWriteIntervalMs` of uses)" (1 s). Requests it answered this long
   * before its death are not counted as lost (plus 0.5 s for the write in flight).
   */
  killedInstanceUsesMs: 1000 + 500,
  /**
   * Up to 0.2 a process killed mid-run (during an UPDATE) lost the uses it had taken and not
   * committed: uses recorded since the run before, one flush interval (10 s) plus a coalescing
   * interval. From 0.3.0 (issue 29) a key leaves Redis only after its use is written, so a killed run
   * loses none; this allowance is now looser than the promise (not yet tightened to 0: no soak run
   * since).
   */
  killedFlushUsesMs: 10_000 + 1000 + 1000,
  /**
   * Redis runs with `appendonly yes`, `appendfsync everysec`: a SIGKILL loses up to about 2 s of
   * writes (Redis's documentation of everysec), uses included. Not the library's promise but the
   * store's; uses recorded this long before a kill are not counted as lost.
   */
  redisKillUsesMs: 2000 + 1000,
  /**
   * Memory flat after warm-up, judged on the heap after a full GC and on RSS, by the least-squares
   * slope over the instance's longest life after warm-up, only when that covers at least
   * `memoryMinSpanMs` (a shorter span extrapolated to an hour says nothing).
   */
  heapGrowthMBPerHour: 10,
  rssGrowthMBPerHour: 40,
  memoryMinSpanMs: 10 * 60_000,
  /**
   * Warm-up: the revocation log lists a revoked token for `cacheTtlSeconds` + 60 s (660 s, README
   * "The revocation log") and the in-process cache fills to its bound; memory grows until both are
   * full, so it is judged after that (or after 40 % of a shorter run). Instance 0 is never killed, so it
   * has one life as long as the run.
   */
  warmupMs: 720_000,
  /**
   * Event-loop delay p99 of each instance over its life (monitorEventLoopDelay, 10 ms resolution),
   * on a two-core machine shared with other work: the library adds no synchronous work that long.
   */
  eventLoopDelayP99Ms: 100,
} as const;

export type SoakBounds = typeof SOAK_BOUNDS;
