import { SOAK_BOUNDS, type SoakBounds } from './soak.bounds';

/**
 * The soak's judge: pure functions from the history (the client's record of every request, what the
 * soak did to tokens and stores, what the instances and stores reported) to one result per invariant.
 * No I/O, so that bench/soak/soak.checker.spec.ts can feed it histories built by hand.
 * Times are milliseconds since the epoch, on the one clock of this host.
 */

/** What a request was sent with. */
export type RequestKind = 'hot' | 'churn' | 'unknown' | 'malformed' | 'limited' | 'expiring';

/** HTTP status, or {@link NO_ANSWER} (aborted after the hang bound) or {@link CONNECTION_ERROR}. */
export const NO_ANSWER = 0;
export const CONNECTION_ERROR = -1;

export interface RequestRecord {
  id: number;
  kind: RequestKind;
  /** Index into {@link SoakHistory.tokens}, or -1 (unknown and malformed tokens). */
  token: number;
  instance: number;
  sent: number;
  done: number;
  status: number;
  /** The client's error code (ECONNREFUSED, …) when there was no answer. */
  error?: string;
}

/** One token the soak created, and what it did to it. Never the token itself: its id and a label. */
export interface TokenLife {
  ref: number;
  id: string;
  kind: 'hot' | 'churn' | 'limited' | 'expiring';
  /** When `create()` (or the rotation that made it) answered: requests are sent only after. */
  validFrom: number;
  limit?: { limit: number; windowSeconds: number };
  /** Expiring tokens: the expiry `create()` returned. */
  expiresAt?: number;
  /** A revocation (or a rotation without grace), or a rotation with a grace ending at `refuseFrom`. */
  end?: { how: 'revoked' | 'rotated'; started: number; answered: number; refuseFrom?: number };
  /** An administrative call on the token failed: its state is not known from then on, so it is not judged. */
  uncertainFrom?: number;
}

export type FaultKind = 'redis-kill' | 'redis-stop' | 'redis-failover' | 'pg-cut' | 'pg-terminate' | 'instance-kill';

export interface FaultEvent {
  kind: FaultKind;
  start: number;
  /** When the fault was healed (the process answers again, the proxy forwards again). */
  end: number;
  /** instance-kill: which one. */
  instance?: number;
  /** instance-kill: the instance was killed while its usage flush wrote a page. */
  midFlush?: boolean;
  /** A short description for the report (never a token). */
  detail?: string;
}

export interface MemorySample {
  instance: number;
  /** The instance's process generation (0, then 1 after its first restart, …). */
  life: number;
  t: number;
  rssBytes: number;
  /** Used heap after a full GC. */
  heapBytes: number;
  /** Event-loop delay p99 over the life so far, ms. */
  loopP99Ms: number;
}

/** Per token still stored at the end, its `last_used_at` after the final flush (ms, or null). */
export interface FinalUse {
  ref: number;
  lastUsedAt: number | null;
}

export interface SoakHistory {
  startedAt: number;
  endedAt: number;
  instances: number;
  rateLimitMode: 'approximate' | 'exact';
  requests: RequestRecord[];
  tokens: TokenLife[];
  faults: FaultEvent[];
  memory: MemorySample[];
  finalUses: FinalUse[];
  /**
   * Spans in which an instance took Redis as down on its own (its `redis.outages` metric grew, or
   * `redis.up` was false, between two samples): a call timed out on a loaded machine with no fault
   * injected. The README's Redis-down rules apply there as well.
   */
  redisDown?: { instance: number; start: number; end: number }[];
  /** Probes of PostgreSQL (every 500 ms, its own connection) slower than `postgresStallMs`: when it started, how long it took. */
  pgStalls?: { start: number; end: number }[];
  /** The soak client's own event-loop delay, the longest per second: a stall there makes answers look late. */
  clientStalls?: { t: number; maxMs: number }[];
}

export interface InvariantResult {
  name: string;
  statement: string;
  checked: number;
  violations: number;
  pass: boolean;
  /** The first violation, described without the token. */
  first?: string;
  note?: string;
}

const overlaps = (a0: number, a1: number, b0: number, b1: number) => a0 <= b1 && b0 <= a1;
const PG_FAULTS: FaultKind[] = ['pg-cut', 'pg-terminate'];
const REDIS_FAULTS: FaultKind[] = ['redis-kill', 'redis-stop', 'redis-failover'];

class Tally {
  checked = 0;
  violations = 0;
  first?: string;
  constructor(
    readonly name: string,
    readonly statement: string,
  ) {}
  check(ok: boolean, describe: () => string): void {
    this.checked++;
    if (ok) return;
    this.violations++;
    this.first ??= describe();
  }
  result(note?: string): InvariantResult {
    return { name: this.name, statement: this.statement, checked: this.checked, violations: this.violations, pass: this.violations === 0, first: this.first, note };
  }
}

/** A request named for a person reading the report: its number, time into the run, instance, token label, answer. */
export function describeRequest(h: SoakHistory, r: RequestRecord): string {
  const token = r.token >= 0 ? `${h.tokens[r.token].kind} token #${r.token} (id ${h.tokens[r.token].id.slice(0, 8)}…)` : `${r.kind} token`;
  const answer = r.status === NO_ANSWER ? 'no answer' : r.status === CONNECTION_ERROR ? `connection error ${r.error ?? ''}`.trim() : `status ${r.status}`;
  return `request #${r.id} at +${((r.sent - h.startedAt) / 1000).toFixed(3)} s to instance ${r.instance}, ${token}: ${answer} after ${r.done - r.sent} ms`;
}

function pgFaultBetween(h: SoakHistory, from: number, to: number, slack = 0): boolean {
  return (
    h.faults.some((f) => PG_FAULTS.includes(f.kind) && overlaps(f.start - slack, f.end + slack, from, to)) ||
    (h.pgStalls ?? []).some((f) => overlaps(f.start - slack, f.end + slack, from, to))
  );
}

/** Whether the token's state is known at `t` (no failed administrative call before). */
const judged = (token: TokenLife, t: number) => token.uncertainFrom === undefined || t < token.uncertainFrom;

export function checkInvariants(h: SoakHistory, b: SoakBounds = SOAK_BOUNDS): InvariantResult[] {
  return [checkEnds(h, b), ...[checkAnswers(h, b), checkRateLimits(h, b), checkUses(h, b)], ...checkProcesses(h, b)];
}

/** No revoked, expired or rotated-out token accepted past its bound (one result per way of ending). */
function checkEnds(h: SoakHistory, b: SoakBounds): InvariantResult {
  const tally = new Tally(
    'ended tokens refused',
    `No revoked token accepted when sent more than ${b.revocationMs} ms after revoke() answered (${b.revocationWithoutPostgresMs} ms when PostgreSQL was cut or stalled meanwhile); no expired token accepted past its expiry (+${b.expiryMs} ms); no rotated-out token past the later of its grace end and ${b.rotationPropagationMs} ms after rotate() answered`,
  );
  for (const r of h.requests) {
    if (r.token < 0 || r.status !== 200) continue;
    const token = h.tokens[r.token];
    if (!judged(token, r.sent)) continue;
    let deadline: number | undefined;
    let why = '';
    const end = token.end;
    if (end) {
      const propagation = pgFaultBetween(h, end.answered, r.sent) ? b.revocationWithoutPostgresMs : end.how === 'revoked' ? b.revocationMs : b.rotationPropagationMs;
      deadline = end.how === 'revoked' ? end.answered + propagation : Math.max((end.refuseFrom ?? end.answered) + b.expiryMs, end.answered + propagation);
      why = end.how === 'revoked' ? `revoke() answered at +${((end.answered - h.startedAt) / 1000).toFixed(3)} s` : `rotated, grace until +${(((end.refuseFrom ?? 0) - h.startedAt) / 1000).toFixed(3)} s`;
    }
    if (token.expiresAt !== undefined && (deadline === undefined || token.expiresAt + b.expiryMs < deadline)) {
      deadline = token.expiresAt + b.expiryMs;
      why = `expired at +${((token.expiresAt - h.startedAt) / 1000).toFixed(3)} s`;
    }
    if (deadline === undefined) continue;
    tally.check(r.sent <= deadline, () => `${describeRequest(h, r)}; ${why}, accepted ${r.sent - deadline!} ms past the bound`);
  }
  return tally.result();
}

/** The answers the README promises, and no others. */
function checkAnswers(h: SoakHistory, b: SoakBounds): InvariantResult {
  const tally = new Tally(
    'promised answers only',
    `200 for valid tokens; 401 for unknown, malformed and ended tokens; 429 only for rate-limited tokens; 503 only while PostgreSQL is cut or stalled (±${b.postgresFaultSlackMs} ms); no 500; every answer within ${b.hangMs} ms; connection errors only from an instance that was down`,
  );
  for (const r of h.requests) {
    const token = r.token >= 0 ? h.tokens[r.token] : undefined;
    if (token && !judged(token, r.sent)) continue;
    const instanceDown = h.faults.some((f) => f.kind === 'instance-kill' && f.instance === r.instance && overlaps(f.start - 50, f.end, r.sent, r.done));
    const say = (why: string) => () => `${describeRequest(h, r)}: ${why}`;
    if (r.status === CONNECTION_ERROR || r.status === NO_ANSWER) {
      tally.check(instanceDown, say(r.status === NO_ANSWER ? `no answer within ${b.hangMs} ms` : 'connection error while the instance was up'));
      continue;
    }
    if (r.done - r.sent > b.hangMs) {
      const stall = Math.max(0, ...(h.clientStalls ?? []).filter((s) => s.t >= r.sent && s.t - 1000 <= r.done).map((s) => s.maxMs));
      tally.check(false, say(`answered after the ${b.hangMs} ms bound (the client's own event loop stalled up to ${stall.toFixed(0)} ms meanwhile)`));
      continue;
    }
    switch (r.status) {
      case 200:
        tally.check(token !== undefined, say('an unknown or malformed token was accepted'));
        break;
      case 401: {
        if (!token) {
          tally.check(true, say(''));
          break;
        }
        const endsFrom = Math.min(token.end ? (token.end.refuseFrom ?? token.end.started) : Infinity, token.expiresAt ?? Infinity);
        tally.check(r.done >= endsFrom, say('a valid token was refused'));
        break;
      }
      case 429:
        tally.check(token?.limit !== undefined, say('429 for a token without a rate limit'));
        break;
      case 503:
        tally.check(pgFaultBetween(h, r.sent, r.done, b.postgresFaultSlackMs), say('503 while PostgreSQL was neither cut nor stalled'));
        break;
      default:
        tally.check(false, say('an answer outside 200, 401, 429, 503'));
    }
  }
  return tally.result();
}

/** The most requests the README lets through in one window of a limited token. */
export function rateLimitBound(
  h: Pick<SoakHistory, 'instances' | 'rateLimitMode' | 'faults' | 'redisDown'>,
  limit: { limit: number; windowSeconds: number },
  windowStart: number,
  /** The most requests sent to the token in any span of 2 × (I + d) within the window: the README's 2 × R × (I + d). */
  burst: number,
  b: SoakBounds = SOAK_BOUNDS,
): { bound: number; why: string } {
  const windowEnd = windowStart + limit.windowSeconds * 1000;
  const n = h.instances;
  const redisDown =
    h.faults.some((f) => REDIS_FAULTS.includes(f.kind) && overlaps(f.start - b.redisFaultSlackMs, f.end + b.redisFaultSlackMs, windowStart, windowEnd)) ||
    (h.redisDown ?? []).some((d) => overlaps(d.start - b.redisFaultSlackMs, d.end + b.redisFaultSlackMs, windowStart, windowEnd));
  const killed = h.faults.some((f) => f.kind === 'instance-kill' && overlaps(f.start, f.end, windowStart, windowEnd));
  let bound: number;
  let why: string;
  if (redisDown) {
    bound = n * limit.limit;
    why = `Redis fault or an instance took Redis as down: N × limit`;
  } else if (h.rateLimitMode === 'exact') {
    bound = limit.limit;
    why = 'exact: limit';
  } else {
    bound = limit.limit + Math.min((n - 1) * limit.limit, burst);
    why = `approximate: limit + min((N − 1) × limit, 2 × R × (I + d)), at most ${burst} requests offered in any ${2 * (b.rateSyncIntervalMs + b.rateRoundTripMs)} ms`;
  }
  if (killed) {
    bound += b.killedInstanceExtraLimits * limit.limit;
    why += ', + limit for a killed instance';
  }
  return { bound, why };
}

/**
 * The most of these (ascending) send times within any span of `spanMs`. The README's term
 * 2 × R × (I + d) is what reaches the instances while they learn that the limit is reached, so R is
 * the rate in that span, not the window's average (a first cut averaged over the window and flagged
 * the run's last window, where the load stopped 3 s in: 22 accepted for a limit of 20, "bound 21").
 */
export function burstIn(sent: number[], spanMs: number): number {
  let most = 0;
  for (let i = 0, j = 0; i < sent.length; i++) {
    while (sent[i] - sent[j] > spanMs) j++;
    most = Math.max(most, i - j + 1);
  }
  return most;
}

/** Rate limits: per limited token and window, the 200s of requests wholly inside the window (a sound lower bound of what the instances counted in it). */
function checkRateLimits(h: SoakHistory, b: SoakBounds): InvariantResult {
  const tally = new Tally('rate limits held', 'Per limited token and window: accepted ≤ the README bound for the mode, widened for Redis faults (N × limit) and killed instances (+ limit)');
  let worst = 0;
  for (const token of h.tokens) {
    if (!token.limit) continue;
    const windowMs = token.limit.windowSeconds * 1000;
    const windows = new Map<number, { accepted: number; sent: number[]; last?: RequestRecord }>();
    for (const r of h.requests) {
      if (r.token !== token.ref || !judged(token, r.sent)) continue;
      const start = Math.floor(r.sent / windowMs) * windowMs;
      if (r.done >= start + windowMs) continue;
      const w = windows.get(start) ?? { accepted: 0, sent: [] };
      w.sent.push(r.sent);
      if (r.status === 200) {
        w.accepted++;
        w.last = r;
      }
      windows.set(start, w);
    }
    for (const [start, w] of windows) {
      const { bound, why } = rateLimitBound(h, token.limit, start, burstIn(w.sent, 2 * (b.rateSyncIntervalMs + b.rateRoundTripMs)), b);
      worst = Math.max(worst, w.accepted / token.limit.limit);
      tally.check(w.accepted <= bound, () => `${describeRequest(h, w.last!)}: ${w.accepted} accepted in the window from +${((start - h.startedAt) / 1000).toFixed(0)} s (limit ${token.limit!.limit}/${token.limit!.windowSeconds} s, bound ${bound}: ${why})`);
    }
  }
  return tally.result(`most accepted in a window: ${worst.toFixed(2)} × limit`);
}

/** No use lost: after the final flush, `last_used_at` is at or after the last accepted request that no stated loss covers. */
function checkUses(h: SoakHistory, b: SoakBounds): InvariantResult {
  const tally = new Tally('no use lost', `Per token stored at the end: last_used_at ≥ its last accepted request (−${b.usePrecisionMs} ms), except uses the README lets a kill lose`);
  const kills = h.faults.filter((f) => f.kind === 'instance-kill');
  const redisLosses = h.faults.filter((f) => f.kind === 'redis-kill' || f.kind === 'redis-failover');
  const lost = (r: RequestRecord) =>
    kills.some((k) => (k.instance === r.instance && r.sent >= k.start - b.killedInstanceUsesMs && r.sent <= k.start) || (k.midFlush && r.sent >= k.start - b.killedFlushUsesMs && r.sent <= k.start)) ||
    // A failover also drops what the old master took between the promotion and the clients' move (its resync discards it).
    redisLosses.some((k) => r.sent >= k.start - b.redisKillUsesMs && r.sent <= (k.kind === 'redis-failover' ? k.end : k.start));
  const last = new Map<number, RequestRecord>();
  let excused = 0;
  for (const r of h.requests) {
    if (r.status !== 200 || r.token < 0) continue;
    const prev = last.get(r.token);
    if (prev && prev.sent >= r.sent) continue;
    if (lost(r)) {
      excused++;
      continue;
    }
    last.set(r.token, r);
  }
  for (const use of h.finalUses) {
    const r = last.get(use.ref);
    if (!r) continue;
    tally.check(use.lastUsedAt !== null && use.lastUsedAt >= r.sent - b.usePrecisionMs, () =>
      `${describeRequest(h, r)}: last_used_at ${use.lastUsedAt === null ? 'null' : `${r.sent - use.lastUsedAt} ms earlier`}`,
    );
  }
  return tally.result(`${excused} accepted requests fell in a stated loss window (killed instance or Redis)`);
}

/** Least-squares slope of y over t, per hour. */
export function slopePerHour(points: { t: number; y: number }[]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mt = points.reduce((s, p) => s + p.t, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.y - my);
    den += (p.t - mt) ** 2;
  }
  return den === 0 ? 0 : (num / den) * 3_600_000;
}

/** Memory flat after warm-up, event-loop delay p99 below its figure. */
function checkProcesses(h: SoakHistory, b: SoakBounds): InvariantResult[] {
  const memory = new Tally('memory flat', `Per instance, over its longest life after warm-up (≥ ${b.memoryMinSpanMs / 60000} min needed): heap growth < ${b.heapGrowthMBPerHour} MB/h, RSS growth < ${b.rssGrowthMBPerHour} MB/h`);
  const loop = new Tally('event loop responsive', `Per instance life: event-loop delay p99 < ${b.eventLoopDelayP99Ms} ms`);
  const warmup = Math.min(b.warmupMs, 0.4 * (h.endedAt - h.startedAt));
  const notes: string[] = [];
  const loopNotes: string[] = [];
  for (let instance = 0; instance < h.instances; instance++) {
    const lives = new Map<number, MemorySample[]>();
    for (const s of h.memory) if (s.instance === instance) lives.set(s.life, [...(lives.get(s.life) ?? []), s]);
    let longest: MemorySample[] = [];
    for (const samples of lives.values()) {
      const last = samples[samples.length - 1];
      loop.check(last.loopP99Ms < b.eventLoopDelayP99Ms, () => `instance ${instance} life ${last.life}: p99 ${last.loopP99Ms.toFixed(1)} ms`);
      loopNotes.push(`i${instance}.${last.life}: ${last.loopP99Ms.toFixed(1)} ms`);
      const after = samples.filter((s) => s.t >= Math.max(samples[0].t, h.startedAt) + warmup);
      if (after.length && after[after.length - 1].t - after[0].t > (longest.length ? longest[longest.length - 1].t - longest[0].t : -1)) longest = after;
    }
    const span = longest.length ? longest[longest.length - 1].t - longest[0].t : 0;
    if (span < b.memoryMinSpanMs) {
      notes.push(`instance ${instance}: ${(span / 60000).toFixed(1)} min after warm-up, not judged`);
      continue;
    }
    const heap = slopePerHour(longest.map((s) => ({ t: s.t, y: s.heapBytes / 2 ** 20 })));
    const rss = slopePerHour(longest.map((s) => ({ t: s.t, y: s.rssBytes / 2 ** 20 })));
    notes.push(`instance ${instance}: heap ${heap.toFixed(2)} MB/h, RSS ${rss.toFixed(2)} MB/h over ${(span / 60000).toFixed(1)} min`);
    memory.check(heap < b.heapGrowthMBPerHour && rss < b.rssGrowthMBPerHour, () => `instance ${instance}: heap ${heap.toFixed(2)} MB/h, RSS ${rss.toFixed(2)} MB/h`);
  }
  return [memory.result(notes.join('; ')), loop.result(loopNotes.join(', '))];
}
