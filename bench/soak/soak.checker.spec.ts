import { SOAK_BOUNDS } from './soak.bounds';
import { CONNECTION_ERROR, type FaultEvent, type InvariantResult, type RequestRecord, type SoakHistory, type TokenLife, burstIn, checkInvariants, rateLimitBound, slopePerHour } from './soak.checker';

const T0 = 1_700_000_000_000;

function history(parts: Partial<SoakHistory> = {}): SoakHistory {
  return { startedAt: T0, endedAt: T0 + 60_000, instances: 2, rateLimitMode: 'approximate', requests: [], tokens: [], faults: [], memory: [], finalUses: [], ...parts };
}

let nextId = 0;
function req(token: number, sent: number, status: number, extra: Partial<RequestRecord> = {}): RequestRecord {
  return { id: nextId++, kind: token >= 0 ? 'churn' : 'unknown', token, instance: 0, sent: T0 + sent, done: T0 + sent + 5, status, ...extra };
}

function token(ref: number, extra: Partial<TokenLife> = {}): TokenLife {
  return { ref, id: `0000000${ref}-0000-4000-8000-000000000000`, kind: 'churn', validFrom: T0, ...extra };
}

const byName = (results: InvariantResult[], name: string) => results.find((r) => r.name === name)!;

describe('soak checker', () => {
  it('accepts a revoked token until the bound after revoke() answered, and flags the first request past it', () => {
    const revoked = token(0, { end: { how: 'revoked', started: T0 + 10_000, answered: T0 + 10_050 } });
    const h = history({
      tokens: [revoked],
      requests: [req(0, 10_000 + SOAK_BOUNDS.revocationMs, 200), req(0, 10_100 + SOAK_BOUNDS.revocationMs, 200), req(0, 20_000, 200)],
    });
    const result = byName(checkInvariants(h), 'ended tokens refused');
    expect(result.violations).toBe(2);
    expect(result.first).toMatch(/request #\d+ at \+12\.100 s/);
    expect(result.first).not.toContain(revoked.id); // the id is shortened; no token is ever known to the checker
  });

  it('widens the revocation bound to the in-process TTL when PostgreSQL was cut between revoke and request', () => {
    const revoked = token(0, { end: { how: 'revoked', started: T0 + 10_000, answered: T0 + 10_000 } });
    const cut: FaultEvent = { kind: 'pg-cut', start: T0 + 11_000, end: T0 + 14_000 };
    const h = history({ tokens: [revoked], faults: [cut], requests: [req(0, 18_000, 200)] });
    expect(byName(checkInvariants(h), 'ended tokens refused').violations).toBe(0);
    expect(byName(checkInvariants({ ...h, faults: [] }), 'ended tokens refused').violations).toBe(1);
  });

  it('refuses an expired token from its expiry, and lets a rotated-out one live its grace', () => {
    const expiring = token(0, { kind: 'expiring', expiresAt: T0 + 5000 });
    const rotated = token(1, { end: { how: 'rotated', started: T0 + 1000, answered: T0 + 1010, refuseFrom: T0 + 9000 } });
    const h = history({
      tokens: [expiring, rotated],
      requests: [req(0, 4990, 200), req(0, 5010, 200), req(1, 8000, 200), req(1, 4000, 401)],
    });
    const results = checkInvariants(h);
    expect(byName(results, 'ended tokens refused').violations).toBe(1);
    // A 401 inside the grace is a valid token refused.
    expect(byName(results, 'promised answers only').first).toMatch(/a valid token was refused/);
  });

  it('allows 503 only around a PostgreSQL fault, never 500, and connection errors only from a downed instance', () => {
    const h = history({
      tokens: [token(0)],
      faults: [
        { kind: 'pg-cut', start: T0 + 10_000, end: T0 + 12_000 },
        { kind: 'instance-kill', start: T0 + 30_000, end: T0 + 40_000, instance: 1 },
      ],
      requests: [req(0, 11_000, 503), req(-1, 14_000, 503), req(0, 20_000, 503), req(0, 21_000, 500), req(0, 35_000, CONNECTION_ERROR, { instance: 1 }), req(0, 35_000, CONNECTION_ERROR, { instance: 0 })],
    });
    const answers = byName(checkInvariants(h), 'promised answers only');
    expect(answers.checked).toBe(6);
    expect(answers.violations).toBe(3);
    expect(answers.first).toMatch(/at \+20\.000 s.*503 while PostgreSQL was neither cut nor stalled/);
  });

  it('flags 200 for an unknown token and 429 for a token without a limit', () => {
    const h = history({ tokens: [token(0)], requests: [req(-1, 1000, 200), req(0, 2000, 429)] });
    expect(byName(checkInvariants(h), 'promised answers only').violations).toBe(2);
  });

  it('bounds rate-limited windows by mode and fault', () => {
    const limit = { limit: 10, windowSeconds: 5 };
    const quiet = history();
    expect(rateLimitBound({ ...quiet, rateLimitMode: 'exact' }, limit, T0, 40).bound).toBe(10);
    // approximate: 10 + min(10, the most requests offered in 2 × (I + d) = 400 ms)
    expect(rateLimitBound(quiet, limit, T0, 4).bound).toBe(14);
    expect(rateLimitBound(quiet, limit, T0, 40).bound).toBe(20);
    const redisDown = history({ faults: [{ kind: 'redis-stop', start: T0 + 6000, end: T0 + 7000 }] });
    expect(rateLimitBound(redisDown, limit, T0, 4).bound).toBe(20);
    const killed = history({ faults: [{ kind: 'instance-kill', start: T0 + 1000, end: T0 + 2000, instance: 0 }] });
    expect(rateLimitBound({ ...killed, rateLimitMode: 'exact' }, limit, T0, 4).bound).toBe(20);

    const limited = token(0, { kind: 'limited', limit });
    const accepted = Array.from({ length: 16 }, (_, i) => req(0, 100 + i * 200, 200));
    const result = byName(checkInvariants(history({ tokens: [limited], requests: accepted })), 'rate limits held');
    expect(result.violations).toBe(1); // 16 accepted, one every 200 ms: at most 3 in 400 ms → bound 10 + 3
  });

  it('takes R from the busiest span of 2 × (I + d), not the window average', () => {
    expect(burstIn([0, 100, 1000, 1100, 1200, 1400, 5000], 400)).toBe(4);
    expect(burstIn([], 400)).toBe(0);
  });

  it('counts a window only with the requests wholly inside it', () => {
    const limit = { limit: 2, windowSeconds: 5 };
    const start = Math.ceil(T0 / 5000) * 5000 - T0;
    const h = history({
      tokens: [token(0, { kind: 'limited', limit })],
      requests: [req(0, start + 4990, 200, { done: T0 + start + 5010 }), req(0, start + 100, 200), req(0, start + 200, 200), req(0, start + 300, 200)],
    });
    expect(byName(checkInvariants({ ...h, rateLimitMode: 'exact' }), 'rate limits held').violations).toBe(1);
  });

  it('finds a lost use, and excuses the uses a killed instance or a Redis kill may lose', () => {
    const h = history({
      tokens: [token(0), token(1)],
      requests: [req(0, 1000, 200), req(0, 9000, 200), req(1, 1000, 200), req(1, 29_500, 200, { instance: 1 })],
      faults: [{ kind: 'instance-kill', start: T0 + 30_000, end: T0 + 40_000, instance: 1 }],
      finalUses: [
        { ref: 0, lastUsedAt: T0 + 1000 },
        { ref: 1, lastUsedAt: T0 + 1000 },
      ],
    });
    const uses = byName(checkInvariants(h), 'no use lost');
    expect(uses.violations).toBe(1);
    expect(uses.first).toMatch(/last_used_at 8000 ms earlier/);
    expect(uses.note).toMatch(/^1 accepted/);
  });

  it('judges memory by the slope after warm-up, only over a long enough life', () => {
    expect(slopePerHour([{ t: 0, y: 10 }, { t: 1_800_000, y: 15 }])).toBeCloseTo(10);
    const samples = (growthPerHour: number) =>
      Array.from({ length: 120 }, (_, i) => ({ instance: 0, life: 0, t: T0 + i * 30_000, rssBytes: (100 + (growthPerHour * i * 30_000) / 3_600_000) * 2 ** 20, heapBytes: 30 * 2 ** 20, loopP99Ms: 20 }));
    const long = { endedAt: T0 + 3_600_000, instances: 1 };
    expect(byName(checkInvariants(history({ ...long, memory: samples(5) })), 'memory flat').violations).toBe(0);
    expect(byName(checkInvariants(history({ ...long, memory: samples(80) })), 'memory flat').violations).toBe(1);
    const short = byName(checkInvariants(history({ instances: 1, memory: samples(80).slice(0, 4) })), 'memory flat');
    expect(short.checked).toBe(0);
    expect(short.note).toMatch(/not judged/);
  });
});

describe('soak checker, what the instances saw', () => {
  it('applies the Redis-down bound where an instance took Redis as down with no fault injected', () => {
    const limit = { limit: 10, windowSeconds: 5 };
    const h = history({ redisDown: [{ instance: 0, start: T0 + 7000, end: T0 + 12_000 }] });
    expect(rateLimitBound(h, limit, T0, 4).bound).toBe(20);
    expect(rateLimitBound(h, limit, T0 + 60_000, 4).bound).toBe(14);
  });
});

describe('soak checker, PostgreSQL stalls it did not inject', () => {
  it('judges a 503 during a probed stall as during a cut', () => {
    const h = history({ tokens: [token(0)], requests: [req(0, 20_000, 503)] });
    expect(byName(checkInvariants(h), 'promised answers only').violations).toBe(1);
    expect(byName(checkInvariants({ ...h, pgStalls: [{ start: T0 + 19_000, end: T0 + 21_500 }] }), 'promised answers only').violations).toBe(0);
  });
});
