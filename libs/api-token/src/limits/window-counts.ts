import type { RedisClient } from '../redis/redis.commands';
import type { ApiTokenRedisService } from '../redis/redis-access.service';
import { windowIndex } from './rate-limit.policy';

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

/** One subject's count (a token's requests, a client's failed attempts) in one window, as this instance knows it. */
export class WindowCount {
  /** The highest total of the window Redis answered. */
  seen = 0;
  /** Counted here and sent to Redis in a reconciliation that has not answered yet. */
  inflight = 0;
  /**
   * Counted here and not yet sent to Redis: in approximate mode, what was counted since the last
   * reconciliation; in exact mode, what was counted while Redis did not answer, sent with the next count.
   */
  pending = 0;
  syncing = false;

  constructor(
    /** The metrics scope the count's refusals are counted in. */
    readonly scope: string | null,
    readonly windowSeconds: number,
    readonly index: number,
    /** The window's Redis key. */
    readonly key: string,
  ) {}

  /** The window's total as this instance knows it: what Redis said plus what it has not heard yet. */
  get used(): number {
    return this.seen + this.inflight + this.pending;
  }
}

/**
 * Counts in fixed windows shared across instances through Redis, the machinery of the per-token rate
 * limit and of the failed-attempt limit: each instance counts in the process and, every `intervalMs`,
 * adds what it counted to the window's key (one script per subject that had counts) and learns the
 * total. Counts of windows that are over are forgotten on the next tick.
 */
export class WindowCounts {
  /** The current window's count of each subject seen, by subject. */
  private readonly counts = new Map<string, WindowCount>();
  private ticker: NodeJS.Timeout | undefined;
  private defined = false;
  /** Longest reconciliation round trip seen, milliseconds. */
  longestSyncMs = 0;

  constructor(
    private readonly redis: ApiTokenRedisService,
    /** What Redis calls are named in logs and metrics. */
    private readonly operation: string,
    private readonly intervalMs: number,
    /** Whether the tick holds what is pending while Redis is down (exact mode sends it with the next count). */
    private readonly holdWhileDown: boolean,
  ) {}

  /** Subjects with a count in memory. */
  get size(): number {
    return this.counts.size;
  }

  /** The subject's count in the window `index` of `windowSeconds`, if this instance has one (none after a change of scope); no allocation. */
  peek(subject: string, scope: string | null, windowSeconds: number, index: number): WindowCount | undefined {
    const known = this.counts.get(subject);
    return known && known.index === index && known.windowSeconds === windowSeconds && known.scope === scope ? known : undefined;
  }

  /** A new count of the subject in the window `index`, its Redis key `key`, in place of the one it had. */
  start(subject: string, scope: string | null, windowSeconds: number, index: number, key: string): WindowCount {
    const count = new WindowCount(scope, windowSeconds, index, key);
    this.counts.set(subject, count);
    this.ticker ??= setInterval(() => this.tick(), this.intervalMs).unref();
    return count;
  }

  /** Sends every count this instance has not yet sent to Redis and waits for the answers. */
  async flush(): Promise<void> {
    await Promise.all([...this.counts.values()].filter((c) => c.pending > 0 && !c.syncing).map((c) => this.sync(c)));
  }

  stop(): void {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = undefined;
  }

  /** Adds `delta` to the window's key: the new total, or undefined when Redis did not answer. */
  async add(count: WindowCount, delta: number): Promise<number | undefined> {
    const client = this.scriptedClient();
    const ttlMs = count.windowSeconds * 1000 + KEY_TTL_MARGIN_MS;
    const total = await this.redis.call(this.operation, () => client[COUNT_COMMAND](count.key, delta, ttlMs));
    return total === undefined ? undefined : Number(total);
  }

  /**
   * Every interval: forgets the counts of windows that are over, and sends what the others have pending
   * (approximate mode: what was counted since the last reconciliation; exact mode: what was counted
   * while Redis did not answer, for a subject with no count since).
   */
  private tick(): void {
    const now = Date.now();
    for (const [subject, count] of this.counts) {
      if (windowIndex(now, count.windowSeconds) !== count.index) this.counts.delete(subject);
      else if (count.pending > 0 && !count.syncing && !(this.holdWhileDown && this.redis.isDown)) void this.sync(count);
    }
    if (this.counts.size === 0) this.stop();
  }

  /** One reconciliation: adds what this instance counted to Redis and learns the window's total. */
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

  /** The client with the count script defined (ioredis sends EVALSHA, and EVAL once when Redis lacks the script). */
  private scriptedClient(): CountingClient {
    const client = this.redis.client as CountingClient;
    if (!this.defined) {
      if (typeof client[COUNT_COMMAND] !== 'function') client.defineCommand(COUNT_COMMAND, { numberOfKeys: 1, lua: COUNT_SCRIPT });
      this.defined = true;
    }
    return client;
  }
}
