import { Inject, Injectable, Logger, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { ApiTokenStoreError } from '../api-token.errors';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { ApiTokenRedisService, LOCKED } from '../redis/redis-access.service';
import { ApiTokenUsageFlushService } from '../usage/usage-flush.service';
import { ApiTokenService } from './api-token.service';
import { ApiTokenRevocationLogService } from './revocation-log.service';
import { ATTR, SPAN, inSpan, recordFailure } from '../metrics/api-token.tracing';

/**
 * Expired tokens deleted per page. Each goes through the revocation path (a DELETE, then the deletes
 * of its cache keys and a publish), so a page is kept well inside the flush lock's lifetime.
 */
/** The longest timer set for an expiry; a later one is set by a poll closer to it. */
const MAX_TIMER_MS = 3_600_000;
const SWEEP_PAGE = 100;
/** The lock that lets one instance at a time sweep at a token's expiry (not Dify's). */
export const EXPIRY_LOCK_KEY = 'api_token_expiry_lock';
const EXPIRY_LOCK_TTL_MS = 30_000;
/** How long after the next expiry (by PostgreSQL's clock) the timer fires: past it, so the row counts as expired. */
const AFTER_EXPIRY_MS = 20;

/**
 * Removes expired tokens: each expired row is deleted and its cache entries dropped on every instance,
 * exactly as {@link ApiTokenService.revoke} does, so a Dify sharing PostgreSQL and Redis refuses the
 * token too. Expiry is judged by PostgreSQL's clock.
 *
 * It runs at each token's expiry: every poll of the revocation log also reads when the next token
 * expires, and a timer fires then; one instance at a time sweeps (a Redis lock; without Redis each
 * does, which only repeats deletes that find nothing). So a row is gone within one poll interval of
 * its expiry, plus a sweep (the README's bound). It also runs after each usage flush, under the
 * flush's lock, which catches what a timer missed (an instance that does not poll the log).
 */
@Injectable()
export class ApiTokenExpirySweep implements OnModuleInit, OnModuleDestroy {
  private readonly logger = new Logger(ApiTokenExpirySweep.name);
  private timer: NodeJS.Timeout | undefined;
  /** When the timer fires, on the monotonic clock. */
  private timerAt = Infinity;
  private sweeping: Promise<number> | undefined;
  private stopped = false;

  constructor(
    private readonly tokens: ApiTokenService,
    private readonly flush: ApiTokenUsageFlushService,
    private readonly log: ApiTokenRevocationLogService,
    private readonly redis: ApiTokenRedisService,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
  ) {}

  onModuleInit(): void {
    this.flush.setFollowUp((keepLock) => this.sweep(keepLock, 'flush'));
    this.log.onNextExpiry((inMs) => this.scheduleAt(inMs));
  }

  onModuleDestroy(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /**
   * Deletes expired tokens a page at a time while `keepLock` holds; returns how many. A database
   * failure is logged and leaves the rest for the next run. `trigger`: what started it (for its span).
   */
  sweep(keepLock: () => Promise<boolean> = async () => true, trigger: 'timer' | 'flush' = 'timer'): Promise<number> {
    return inSpan(SPAN.expirySweep, { [ATTR.trigger]: trigger }, async (span) => {
      const page = Math.min(SWEEP_PAGE, this.options.flushPageSize);
      let removed = 0;
      try {
        let outcome = 'completed';
        for (;;) {
          const count = await this.tokens.removeExpired(page);
          removed += count;
          if (count < page) break;
          if (!(await keepLock())) {
            outcome = 'stopped';
            break;
          }
        }
        span.setAttribute(ATTR.outcome, outcome);
      } catch (error) {
        if (!(error instanceof ApiTokenStoreError)) throw error;
        recordFailure(span, error);
        this.logger.error(`Expired tokens not removed: ${error.message}; the next run tries again`);
      }
      span.setAttribute(ATTR.expiredRemoved, removed);
      return removed;
    });
  }

  /** Sets the timer for the next expiry (`inMs` from now; null: none), unless it is already set as early. */
  private scheduleAt(inMs: number | null): void {
    // A later expiry is left to a later poll (every poll says when the next one is): Node fires a
    // timer longer than 2^31 - 1 ms at once, so a 90-day token would make every poll sweep.
    if (this.stopped || inMs === null || inMs > MAX_TIMER_MS) return;
    const at = performance.now() + Math.max(0, inMs) + AFTER_EXPIRY_MS;
    // Already due at about that time: a poll every second must not keep pushing a timer back.
    if (this.timer && Math.abs(this.timerAt - at) < AFTER_EXPIRY_MS) return;
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => void this.onTimer(), at - performance.now()).unref();
  }

  private async onTimer(): Promise<void> {
    this.timer = undefined;
    this.timerAt = Infinity;
    if (this.sweeping) return;
    const lock = await this.redis.tryLock(EXPIRY_LOCK_KEY, EXPIRY_LOCK_TTL_MS);
    // Another instance sweeps; the next poll sets the timer again if rows are left.
    if (lock === LOCKED) return;
    this.sweeping = this.sweep();
    try {
      await this.sweeping;
    } catch (error) {
      this.logger.error(`Expired tokens not removed: ${error instanceof Error ? error.name : 'error'}; the next poll tries again`);
    } finally {
      this.sweeping = undefined;
      if (lock) this.redis.unlock(lock);
    }
  }
}
