import { type ExecutionContext, Inject, Injectable, OnApplicationShutdown, Optional } from '@nestjs/common';
import { createHash } from 'node:crypto';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { failedAttemptKey } from '../api-token.keys';
import type { ApiTokenClientKey, FailedAttemptLimit, ResolvedApiTokenOptions } from '../api-token.options';
import { type ApiTokenGuardRequest, clientAddressOf } from '../auth/guard.request';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { ApiTokenRedisService } from '../redis/redis-access.service';
import { secondsUntilWindowEnd, windowIndex } from './rate-limit.policy';
import { WindowCounts } from './window-counts';

/**
 * Clients one instance keeps a count for at once. Past it a new client is not counted until a window
 * ends: a flood from that many addresses is the lookup budget's to bound, and memory stays bounded.
 */
export const MAX_COUNTED_CLIENTS = 100_000;
/** A client key longer than this (more than an IPv6 address with a zone) is known in memory by its hash. */
const MAX_PLAIN_CLIENT_KEY = 64;

const sha256 = (value: string): string => createHash('sha256').update(value).digest('hex');

/**
 * The `failedAttemptLimit` option: failed authentications per client, in fixed windows, across every
 * instance. Counted like approximate rate limits ({@link WindowCounts}: in the process, added to Redis
 * every `rateLimitSyncIntervalMs`), so a flood of failures from one client costs at most one Redis
 * command per client per instance per interval. The guard asks {@link retryAfter} before any lookup
 * and calls {@link fail} for each refused token; an accepted token never comes here.
 *
 * @hideconstructor
 */
@Injectable()
export class ApiTokenFailedAttemptLimiter implements OnApplicationShutdown {
  private readonly counts: WindowCounts;
  private readonly limit: FailedAttemptLimit | null;
  private readonly keyOf: ApiTokenClientKey;

  /** @internal Nest's injection: inject the class, never construct it. */
  constructor(
    redis: ApiTokenRedisService,
    @Inject(API_TOKEN_OPTIONS) options: ResolvedApiTokenOptions,
    @Optional() private readonly metrics: ApiTokenMetrics = new ApiTokenMetrics(),
  ) {
    this.limit = options.failedAttemptLimit;
    this.keyOf = this.limit?.clientKey ?? clientAddressOf;
    this.counts = new WindowCounts(redis, 'failed_attempts', options.rateLimitSyncIntervalMs, false);
  }

  /** Whether the option is set; when not, the guard never calls the other methods. */
  get enabled(): boolean {
    return this.limit !== null;
  }

  /** The request's client (the option's `clientKey`, else its address), or undefined: not counted. */
  clientOf(request: ApiTokenGuardRequest, context: ExecutionContext): string | undefined {
    const key = this.keyOf(request, context);
    if (typeof key !== 'string' || key === '') return undefined;
    // A long key is known by its hash: memory per client stays bounded whatever the key holds.
    return key.length > MAX_PLAIN_CLIENT_KEY ? sha256(key) : key;
  }

  /**
   * Seconds until the window ends when the client has made `limit` failed attempts in it (the 429's
   * `Retry-After`; counted in `api_token_failed_attempts_limited_total` under `scope`), else 0.
   */
  retryAfter(client: string, scope: string | null, now = Date.now()): number {
    const limit = this.limit;
    if (!limit) return 0;
    const index = windowIndex(now, limit.windowSeconds);
    const count = this.counts.peek(client, null, limit.windowSeconds, index);
    if (!count || count.used < limit.limit) return 0;
    this.metrics.scope(scope).failedAttemptsLimited++;
    return secondsUntilWindowEnd(now, index, limit.windowSeconds);
  }

  /** Counts a failed authentication of the client (sent to Redis with the next reconciliation). */
  fail(client: string, now = Date.now()): void {
    const limit = this.limit;
    if (!limit) return;
    const { windowSeconds } = limit;
    const index = windowIndex(now, windowSeconds);
    let count = this.counts.peek(client, null, windowSeconds, index);
    if (!count) {
      // At the bound a new client goes uncounted; the tick frees the places of windows that ended.
      if (this.counts.size >= MAX_COUNTED_CLIENTS) return;
      count = this.counts.start(client, null, windowSeconds, index, failedAttemptKey(sha256(client).slice(0, 32), windowSeconds, index));
    }
    count.pending++;
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
}
