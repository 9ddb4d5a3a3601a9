import { type HttpServer, Inject, Injectable, OnApplicationShutdown, Optional } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { rateKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import type { ApiTokenRecord, RateLimitPolicy } from '../store/api-token.record';
import { ApiTokenRedisService } from '../redis/redis-access.service';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { rateLimitField, rateLimitPolicyField, secondsUntilWindowEnd, windowIndex } from './rate-limit.policy';
import { type WindowCount, WindowCounts } from './window-counts';
import { refusalException } from '../auth/refusal';
import { RATE_LIMIT_ERRORS } from './rate-limit.errors';

/**
 * Per-token rate limits across every instance, in fixed windows aligned to their length.
 *
 * Approximate mode (default): a request is decided in the process, against the window's total Redis
 * last answered plus what this instance has accepted since; every `rateLimitSyncIntervalMs` each
 * instance adds what it accepted to the window's key in Redis (one INCRBY script per token that had
 * requests) and learns the total. Exact mode: one script per request, the decision is Redis's count.
 * A request over the limit gets 429 with `Retry-After`; limited requests carry the `RateLimit-Policy`
 * and `RateLimit` header fields of draft-ietf-httpapi-ratelimit-headers.
 */
@Injectable()
export class ApiTokenRateLimiter implements OnApplicationShutdown {
  /** The current window's count of each limited token seen, by token id. */
  private readonly counts: WindowCounts;
  private readonly exact: boolean;
  private readonly closedWhenDown: boolean;

  constructor(
    private readonly redis: ApiTokenRedisService,
    private readonly adapterHost: HttpAdapterHost,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() private readonly metrics: ApiTokenMetrics = new ApiTokenMetrics(),
  ) {
    this.exact = options.rateLimitMode === 'exact';
    this.closedWhenDown = options.rateLimitWhenRedisDown === 'closed';
    this.counts = new WindowCounts(redis, 'rate_limit', options.rateLimitSyncIntervalMs, this.exact);
  }

  /** Longest reconciliation round trip seen, milliseconds (the `d` of the README's bound; read by tests and the bench). */
  get longestSyncMs(): number {
    return this.counts.longestSyncMs;
  }

  /** The module-wide limit of tokens without their own (the `defaultRateLimit` option), or null. */
  get defaultRateLimit(): RateLimitPolicy | null {
    return this.options.defaultRateLimit;
  }

  /**
   * Counts a request of an accepted token against its limit (its own, else the default) and sets the
   * rate-limit header fields on `response`: true, or throws 429 (over the limit) or 503 (Redis down,
   * `rateLimitWhenRedisDown: 'closed'`). Call it only for a token that has a limit.
   */
  enforce(scope: string | null, record: ApiTokenRecord, response: unknown): true | Promise<true> {
    const policy = record.rateLimit ?? this.options.defaultRateLimit;
    if (!policy) return true;
    const adapter = this.adapterHost.httpAdapter;
    const now = Date.now();
    const { windowSeconds } = policy;
    const index = windowIndex(now, windowSeconds);
    const count = this.counts.peek(record.id, scope, windowSeconds, index) ?? this.counts.start(record.id, scope, windowSeconds, index, rateKey(scope, record.id, windowSeconds, index));
    if (this.exact) return this.countInRedis(count, policy, now, adapter, response);
    if (this.closedWhenDown && this.redis.isDown) throw this.unavailable(count.scope, adapter, response);
    const used = count.seen + count.inflight + count.pending + 1;
    if (used <= policy.limit) count.pending++;
    return this.answer(count, policy, used, now, adapter, response);
  }

  /** Sends every count this instance has not yet sent to Redis and waits for the answers. */
  flush(): Promise<void> {
    return this.counts.flush();
  }

  /** Stops reconciling, after sending what is pending, so the other instances count it. */
  async onApplicationShutdown(): Promise<void> {
    this.counts.stop();
    await this.flush();
  }

  private async countInRedis(
    count: WindowCount,
    policy: RateLimitPolicy,
    now: number,
    adapter: HttpServer,
    response: unknown,
  ): Promise<true> {
    // What was counted here while Redis did not answer goes with this count, so the window's total in
    // Redis holds every request once Redis answers again (a count whose call timed out but landed is
    // then counted twice: stricter, never looser).
    const owed = count.pending;
    count.pending = 0;
    const total = await this.counts.add(count, 1 + owed);
    let used: number;
    if (total !== undefined) {
      // Redis's total only grows within a window, so one below what it said before plus this count
      // means it lost the window (a restart without persistence, a promoted replica): count on from
      // what was known, and put the difference back with the next count.
      const known = count.seen + owed + 1;
      if (total < known) count.pending += known - total;
      used = Math.max(total, known);
      count.seen = used;
    } else {
      count.pending += owed;
      if (this.closedWhenDown) throw this.unavailable(count.scope, adapter, response);
      // Redis down, failing open: this instance counts alone, from the window's last total it knows, so a
      // stall never hands a token a fresh quota, and at most the limit per instance when it knew none.
      used = count.seen + count.inflight + ++count.pending;
    }
    return this.answer(count, policy, used, now, adapter, response);
  }

  private answer(count: WindowCount, policy: RateLimitPolicy, used: number, now: number, adapter: HttpServer, response: unknown): true {
    const reset = secondsUntilWindowEnd(now, count.index, policy.windowSeconds);
    adapter.setHeader(response, 'RateLimit-Policy', rateLimitPolicyField(policy));
    adapter.setHeader(response, 'RateLimit', rateLimitField(policy.limit - used, reset));
    if (used <= policy.limit) return true;
    adapter.setHeader(response, 'Retry-After', String(reset));
    this.metrics.scope(count.scope).rateLimited++;
    throw refusalException(this.options.errorFormat, 429, RATE_LIMIT_ERRORS.exceeded);
  }

  private unavailable(scope: string | null, adapter: HttpServer, response: unknown): never {
    adapter.setHeader(response, 'Retry-After', String(Math.max(1, Math.ceil(this.options.redisCooldownMs / 1000))));
    this.metrics.scope(scope).rateLimitUnavailable++;
    throw refusalException(this.options.errorFormat, 503, RATE_LIMIT_ERRORS.unavailable);
  }
}
