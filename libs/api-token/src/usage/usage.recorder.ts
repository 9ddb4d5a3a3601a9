import { BeforeApplicationShutdown, Inject, Injectable, Optional } from '@nestjs/common';
import { LRUCache } from 'lru-cache';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { ACTIVE_KEY_TTL_SECONDS, activeKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { formatNaiveUtc } from '../store/api-token.record';
import { ApiTokenRedisService, UNCONFIRMED } from '../redis/redis-access.service';
import { IndexList, writeUses } from './usage.index';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';

const MAX_TRACKED = 100_000;
const RETRY_MS = 1000;
/** Bound of one write of uses (a script per key, then on a Cluster the list of their indexes). */
const WRITE_TIMEOUT_MS = 1000;

/**
 * A use waiting for the timer: its newest time on the monotonic clock (`performance.now()`), which later
 * uses of the token move in place, and the wall clock's lead over that clock when the entry was made.
 * The use is dated `at + toWallClock`: a wall-clock step or a suspended host between the use and its
 * write does not move it (the lead is read in whole milliseconds, so the date may be up to 1 ms early).
 */
interface PendingUse {
  at: number;
  readonly toWallClock: number;
}

/** How far the wall clock is ahead of the monotonic one, now. */
const wallClockLead = (): number => Date.now() - performance.now();

/**
 * Records token uses in `api_token_active:{scope}:{token}` (the naive UTC time of the last use).
 *
 * Writes are coalesced per token: the first use is written at once, later uses within
 * `usageWriteIntervalMs` wait for one timer that writes the newest time of each. Uses Redis refused
 * stay pending and are tried again, and pending uses are written when the application shuts down.
 * A write never replaces a newer time another instance wrote, and names its key in the flush's index
 * (`usage.index.ts`), so the flush finds the library's uses without walking the keyspace.
 */
@Injectable()
export class ApiTokenUsageRecorder implements BeforeApplicationShutdown {
  private readonly recent: LRUCache<string, true> | null;
  private pending = new Map<string, PendingUse>();
  private timer: NodeJS.Timeout | undefined;
  private readonly writing = new Set<Promise<void>>();
  private readonly indexList = new IndexList();

  constructor(
    private readonly redis: ApiTokenRedisService,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() private readonly metrics?: ApiTokenMetrics,
  ) {
    metrics?.source('usagePending', () => this.pending.size);
    const interval = options.usageWriteIntervalMs;
    // ttlResolution 0: no 1 ms clock timer per busy millisecond (see the in-process cache).
    this.recent = interval > 0 ? new LRUCache({ max: MAX_TRACKED, ttl: interval, ttlAutopurge: false, ttlResolution: 0 }) : null;
  }

  /** Records a use now. */
  record(scope: string | null, token: string): void {
    this.recordKey(activeKey(scope, token), performance.now());
  }

  /**
   * {@link record} by the `api_token_active:*` key, for callers that keep it (an in-process cache hit),
   * at `at`, a `performance.now()` reading the caller took: a hit reads the clock once, for L1 and this.
   * Monotonic, so that the newest use wins whatever the wall clock does; the wall clock is read only when
   * a token's first use of a window is noted.
   */
  recordKey(key: string, at: number): void {
    // A hot token is already waiting for the timer, which writes its newest time: moving that time is all a
    // use costs (one map read and a number written in place; no LRU read, no clock read, no map write).
    const waiting = this.recent && this.pending.get(key);
    if (waiting) {
      if (waiting.at < at) waiting.at = at;
      return;
    }
    if (this.recent?.has(key)) {
      this.pending.set(key, { at, toWallClock: wallClockLead() });
      this.schedule();
      return;
    }
    this.recent?.set(key, true);
    // Written at once: dated by the wall clock itself (one read per token per window).
    void this.track(this.write([[key, Date.now()]]));
  }

  /**
   * Writes every use recorded so far: waits for the writes under way (one Redis refused leaves its use
   * pending), then writes what is pending; resolves when Redis has answered.
   */
  async flushPending(): Promise<void> {
    await Promise.all(this.writing);
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    for (const key of batch.keys()) this.recent?.set(key, true);
    await this.track(this.write(Array.from(batch, ([key, use]): [string, number] => [key, use.at + use.toWallClock])));
  }

  /** Keeps a write in {@link writing} until it ends, so a flush or shutdown that follows waits for it. */
  private track(write: Promise<void>): Promise<void> {
    const tracked = write.finally(() => this.writing.delete(tracked));
    this.writing.add(tracked);
    return tracked;
  }

  /**
   * Writes the uses under way and pending ({@link flushPending}), so closing the application loses no
   * use. Before shutdown, not on it: `@nestjs-modules/ioredis` may quit the connection in its own
   * `onApplicationShutdown` first.
   */
  async beforeApplicationShutdown(): Promise<void> {
    await this.flushPending();
  }

  private schedule(): void {
    this.timer ??= setTimeout(() => void this.flushPending(), this.options.usageWriteIntervalMs || RETRY_MS).unref();
  }

  /** Writes uses dated by the wall clock (milliseconds); what Redis refused waits for the timer again. */
  private async write(entries: [key: string, ms: number][]): Promise<void> {
    // Nobody waits on a use's write: on the background path (its own connection on a single node), so
    // a burst of first uses whose tail outlasts the request path's bound never takes requests off
    // Redis. While the request path finds Redis down, the use waits for the timer instead.
    const done =
      !this.redis.isDown &&
      (await this.redis.backgroundCall(
        'set',
        (r) => writeUses(r, entries.map(([key, ms]) => [key, formatNaiveUtc(new Date(ms))]), ACTIVE_KEY_TTL_SECONDS, this.indexList),
        { timeoutMs: WRITE_TIMEOUT_MS, commandTimeoutMs: WRITE_TIMEOUT_MS },
      )) !== UNCONFIRMED;
    if (done) return;
    const lead = wallClockLead();
    for (let i = 0; i < entries.length; i++) {
      if (this.pending.size >= MAX_TRACKED) {
        this.metrics?.usesDropped(entries.length - i);
        break;
      }
      const [key, ms] = entries[i];
      const waiting = this.pending.get(key);
      if (!waiting) this.pending.set(key, { at: ms - lead, toWallClock: lead });
      else if (waiting.at + waiting.toWallClock < ms) waiting.at = ms - waiting.toWallClock;
    }
    if (this.pending.size) this.schedule();
  }
}
