import { Injectable, Optional } from '@nestjs/common';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { type ApiTokenRecord, type RateLimitPolicy, naiveUtcToMs } from '../store/api-token.record';

/** A token's policy as a change set it: when it expires (Unix ms, null: never) and its own rate limit. */
export interface KnownPolicy {
  expiresAtMs: number | null;
  rateLimit: RateLimitPolicy | null;
}

/** A policy from its stored form (naive UTC expiry). */
export const knownPolicy = (expiresAt: string | null, rateLimit: RateLimitPolicy | null): KnownPolicy => ({
  expiresAtMs: expiresAt === null ? null : naiveUtcToMs(expiresAt),
  rateLimit,
});

/**
 * Tokens this instance refuses on its own, whatever Redis says, until their cache entries can no
 * longer exist: filled from the revocation log (`ApiTokenRevocationLogService`) and by this
 * instance's own revocations. Consulted only where an entry is accepted from Redis or enters the
 * in-process cache, never on an in-process hit (the log's poll evicts those).
 *
 * Times are `performance.now()` milliseconds: monotonic, so a wall-clock step neither revives a
 * token nor keeps one refused for ever.
 */
@Injectable()
export class ApiTokenRevokedTokens {
  /** Stored token → the monotonic time after which none of its cache entries can exist. */
  private readonly until = new Map<string, number>();
  /**
   * Stored token → its policy since its latest change, until no entry cached before the change can
   * exist: an entry that says otherwise (cached before the change, and the change's invalidation did
   * not reach Redis) is not trusted.
   */
  private readonly policies = new Map<string, { policy: KnownPolicy; until: number; id?: bigint }>();

  constructor(@Optional() metrics?: ApiTokenMetrics) {
    metrics?.source('revokedTokensListed', () => this.until.size);
  }

  /** Refuses the stored token for `forMs` from now (a longer earlier listing is kept). */
  add(token: string, forMs: number): void {
    const until = performance.now() + forMs;
    if (!((this.until.get(token) ?? -Infinity) >= until)) this.until.set(token, until);
  }

  /** Whether the stored token is listed (and not yet past its time). */
  has(token: string): boolean {
    const until = this.until.get(token);
    if (until === undefined) return false;
    if (until > performance.now()) return true;
    this.until.delete(token);
    return false;
  }

  /**
   * Notes the stored token's policy after a change, for `forMs` from now. `id` is the change's id in the
   * policy-change log: a change with a lower id than the one noted is older and never replaces it (a
   * late-committing entry read after a newer one). A note without an id (this instance's own change,
   * before the log tells it the id) is replaced by the next change the log brings.
   */
  notePolicy(token: string, policy: KnownPolicy, forMs: number, id?: bigint): void {
    const noted = this.policies.get(token);
    if (id !== undefined && noted?.id !== undefined && noted.id > id) return;
    this.policies.set(token, { policy, until: performance.now() + forMs, id });
  }

  /**
   * Whether a cached record of a kept token predates the latest change of its policy that this instance
   * knows of: its expiry or its rate limit differs from the one the change set. One map read for a
   * token whose policy never changed.
   */
  isStale(record: ApiTokenRecord): boolean {
    const known = this.policies.get(record.token);
    if (known === undefined) return false;
    if (known.until <= performance.now()) {
      this.policies.delete(record.token);
      return false;
    }
    const { expiresAtMs, rateLimit } = known.policy;
    const limit = record.rateLimit ?? null;
    return (
      (record.expiresAtMs ?? null) !== expiresAtMs ||
      (limit === null ? rateLimit !== null : rateLimit === null || limit.limit !== rateLimit.limit || limit.windowSeconds !== rateLimit.windowSeconds)
    );
  }

  /** Forgets the tokens past their time; returns how many are still listed as revoked. */
  prune(): number {
    const now = performance.now();
    for (const [token, until] of this.until) if (until <= now) this.until.delete(token);
    for (const [token, { until }] of this.policies) if (until <= now) this.policies.delete(token);
    return this.until.size;
  }

  get size(): number {
    return this.until.size;
  }
}
