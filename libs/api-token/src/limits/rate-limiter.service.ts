import { type HttpServer, Inject, Injectable, OnApplicationShutdown, Optional } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { rateKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import type { ApiTokenRecord, RateLimitPolicy } from '../store/api-token.record';
import type { RedisClient } from '../redis/redis.commands';
import { ApiTokenRedisService } from '../redis/redis-access.service';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { rateLimitField, rateLimitPolicyField, secondsUntilWindowEnd, windowIndex } from './rate-limit.policy';
import { refusalException } from '../auth/refusal';
import { RATE_LIMIT_ERRORS } from './rate-limit.errors';

/**
 * Adds to a window's count and answers the new total; the first addition to a window sets the key's
 * time to live (at least the window's length). One key, so one slot on a Redis Cluster.
 */
const COUNT_SCRIPT = `local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n`;
const COUNT_COMMAND = 'apiTokenRateCount';
/** Past its window's end a count key lives this long more, for clocks a little behind. */
const KEY_TTL_MARGIN_MS = 1000;

type CountingClient = RedisClient & { [COUNT_COMMAND](key: string, delta: number, ttlMs: number): Promise<number> };

/** One token's count in one window, as this instance knows it. */
class WindowCount {
  /** The highest total of the window Redis answered. */
  seen = 0;
  /** Requests sent to Redis in a reconciliation that has not answered yet. */
  inflight = 0;
  /**
   * Requests counted here and not yet sent to Redis: in approximate mode, those accepted since the last
   * reconciliation; in exact mode, those counted while Redis did not answer, sent with the next count.
   */
  pending = 0;
  syncing = false;

  constructor(
    readonly scope: string | null,
    readonly tokenId: string,
    readonly windowSeconds: number,
    readonly index: number,
  ) {}

  get key(): string {
    return rateKey(this.scope, this.tokenId, this.windowSeconds, this.index);
  }
}

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
  private readonly counts = new Map<string, WindowCount>();
  private readonly exact: boolean;
  private readonly closedWhenDown: boolean;
  private ticker: NodeJS.Timeout | undefined;
  private defined = false;
  /** Longest reconciliation round trip seen, milliseconds (the `d` of the README's bound; read by tests and the bench). */
  longestSyncMs = 0;

  constructor(
    private readonly redis: ApiTokenRedisService,
    private readonly adapterHost: HttpAdapterHost,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() private readonly metrics: ApiTokenMetrics = new ApiTokenMetrics(),
  ) {
    this.exact = options.rateLimitMode === 'exact';
    this.closedWhenDown = options.rateLimitWhenRedisDown === 'closed';
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
    const count = this.countOf(scope, record.id, policy.windowSeconds, now);
    if (this.exact) return this.countInRedis(count, policy, now, adapter, response);
    if (this.closedWhenDown && this.redis.isDown) throw this.unavailable(count.scope, adapter, response);
    const used = count.seen + count.inflight + count.pending + 1;
    if (used <= policy.limit) count.pending++;
    return this.answer(count, policy, used, now, adapter, response);
  }

  /** Sends every count this instance has not yet sent to Redis and waits for the answers. */
  async flush(): Promise<void> {
    await Promise.all([...this.counts.values()].filter((c) => c.pending > 0 && !c.syncing).map((c) => this.sync(c)));
  }

  /** Stops reconciling, after sending what is pending, so the other instances count it. */
  async onApplicationShutdown(): Promise<void> {
    this.stopTicker();
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
    const total = await this.add(count, 1 + owed);
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

  /** The token's count in the window `now` falls in; a new one when the window (or its length) changed. */
  private countOf(scope: string | null, tokenId: string, windowSeconds: number, now: number): WindowCount {
    const index = windowIndex(now, windowSeconds);
    const known = this.counts.get(tokenId);
    if (known && known.index === index && known.windowSeconds === windowSeconds && known.scope === scope) return known;
    const count = new WindowCount(scope, tokenId, windowSeconds, index);
    this.counts.set(tokenId, count);
    this.ticker ??= setInterval(() => this.tick(), this.options.rateLimitSyncIntervalMs).unref();
    return count;
  }

  /**
   * Every interval: forgets the counts of windows that are over, and sends what the others have pending
   * (approximate mode: what was accepted since the last reconciliation; exact mode: what was counted
   * while Redis did not answer, for a token with no request since).
   */
  private tick(): void {
    const now = Date.now();
    for (const [tokenId, count] of this.counts) {
      if (windowIndex(now, count.windowSeconds) !== count.index) this.counts.delete(tokenId);
      else if (count.pending > 0 && !count.syncing && !(this.exact && this.redis.isDown)) void this.sync(count);
    }
    if (this.counts.size === 0) this.stopTicker();
  }

  /** One reconciliation: adds what this instance accepted to Redis and learns the window's total. */
  private async sync(count: WindowCount): Promise<void> {
    count.syncing = true;
    const delta = count.pending;
    count.pending = 0;
    count.inflight = delta;
    const started = performance.now();
    const total = await this.add(count, delta);
    this.longestSyncMs = Math.max(this.longestSyncMs, performance.now() - started);
    count.inflight = 0;
    // Not answered: sent again on a later tick (a call that timed out but went through counts twice: stricter, never looser).
    if (total === undefined) count.pending += delta;
    else count.seen = Math.max(count.seen, total);
    count.syncing = false;
  }

  /** Adds `delta` to the window's key: the new total, or undefined when Redis did not answer. */
  private async add(count: WindowCount, delta: number): Promise<number | undefined> {
    const client = this.scriptedClient();
    const ttlMs = count.windowSeconds * 1000 + KEY_TTL_MARGIN_MS;
    const total = await this.redis.call('rate_limit', () => client[COUNT_COMMAND](count.key, delta, ttlMs));
    return total === undefined ? undefined : Number(total);
  }

  /** The client with the count script defined (ioredis sends EVALSHA, and EVAL once when Redis lacks the script). */
  private scriptedClient(): CountingClient {
    const client = this.redis.client as CountingClient;
    if (!this.defined) {
      if (typeof client[COUNT_COMMAND] !== 'function') client.defineCommand(COUNT_COMMAND, { numberOfKeys: 1, lua: COUNT_SCRIPT });
      this.defined = true;
    }
    return client;
  }

  private stopTicker(): void {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = undefined;
  }
}
