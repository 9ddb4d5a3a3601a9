import { Injectable, Optional } from '@nestjs/common';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';

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

  /** Forgets the tokens past their time; returns how many are still listed. */
  prune(): number {
    const now = performance.now();
    for (const [token, until] of this.until) if (until <= now) this.until.delete(token);
    return this.until.size;
  }

  get size(): number {
    return this.until.size;
  }
}
