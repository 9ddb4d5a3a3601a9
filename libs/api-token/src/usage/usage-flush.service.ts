import { BeforeApplicationShutdown, Inject, Injectable, Logger, OnApplicationBootstrap, Optional } from '@nestjs/common';
import { Cron, SchedulerRegistry } from '@nestjs/schedule';
import type { Lock } from '@sesamecare-oss/redlock';
import { CronTime } from 'cron';
import type { Redis } from 'ioredis';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { ApiTokenStoreError } from '../api-token.errors';
import { ACTIVE_KEY_PREFIX, ACTIVE_KEY_TTL_SECONDS, parseScopedKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { toNaiveUtc } from '../store/api-token.record';
import { type RedisClient, keyNodes, setIfNewer } from '../redis/redis.commands';
import { activeIndexKey, nodeIndexKeys } from './usage.index';
import { describeError } from '../api-token.errors';
import { ApiTokenRedisService, LOCKED, type RedisStep, UNCONFIRMED, boundedStep } from '../redis/redis-access.service';
import { ApiTokenRepository, type LastUsedUpdate } from '../store/api-token.repository';
import { ApiTokenUsageRecorder } from './usage.recorder';
import { DEFAULT_FLUSH_CRON, MAX_FLUSH_GAP_SECONDS, longestCronGapSeconds } from './flush.schedule';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { ATTR, SPAN, type TraceSpan, inSpan, recordFailure } from '../metrics/api-token.tracing';

/** Name of the flush job in `SchedulerRegistry`. */
export const FLUSH_JOB_NAME = 'api-token-usage-flush';
/** Redlock resource held by the instance that runs a flush. */
export const FLUSH_LOCK_KEY = 'api_token_flush_lock';
/** The last scheduled tick (Unix seconds) an instance ran, so an instance that gets the lock late skips that tick. */
export const FLUSH_TICK_KEY = 'api_token_flush_tick';
/**
 * How many uses the running flush has taken from Redis and not yet written to the database. A run
 * that finds it left over (its writer was killed mid-run) counts those uses as lost.
 */
export const FLUSH_UNWRITTEN_KEY = 'api_token_flush_unwritten';
const FLUSH_LOCK_TTL_MS = 30_000;
/**
 * Bound of each of the flush's calls to Redis (lock, each SCAN and page of GETDEL, lock extension,
 * put-back), whatever the client's settings: with a frozen Redis, a run (and so shutdown) waits
 * about this long, then stops.
 */
const BATCH_CALL_TIMEOUT_MS = 1000;
/** Bound of one whole walk; what it has not reached waits for the next run. */
const WALK_TIMEOUT_MS = 5 * 60_000;
/**
 * Where the walk for keys nobody indexed (Dify's) stopped: a hash of `node` (host:port) and `cursor`,
 * so each run goes on from there. Lives a day: a cursor of a restarted Redis would only walk again.
 */
export const FLUSH_CURSOR_KEY = 'api_token_flush_cursor';
const FLUSH_CURSOR_TTL_SECONDS = 86_400;
/**
 * What a run spends on that walk: at most {@link SCAN_IDLE_PAGES} SCAN pages that found no usage key
 * (the walk over a shared Redis's unrelated keys, a fraction of a millisecond each), and at most
 * {@link SCAN_BUDGET_MS} in all. Pages that found keys do not count against the first bound: a Redis
 * full of Dify's uses is flushed in one run, one full page per statement.
 */
export const SCAN_IDLE_PAGES = 200;
export const SCAN_BUDGET_MS = 60_000;

/** What one flush did. */
export interface UsageFlushStats {
  /** `api_token_active:*` keys found: named by the library's index, or returned by SCAN (Dify's). */
  scanned: number;
  /** Keys read and deleted (GETDEL); a key that expired or was taken between SCAN and GETDEL is not counted. */
  taken: number;
  /** Rows whose `last_used_at` moved forward. */
  updated: number;
  /** Taken keys that could not be used (bad key shape or time), deleted and counted. */
  dropped: number;
  /** Expired tokens deleted after the walk, under the same lock (when the expiry sweep is set up). */
  expired: number;
  /** Milliseconds the flush took, lock included. */
  elapsedMs: number;
}

/**
 * Work a run does after its walk, under its lock, on the instance that has the tick (the expiry sweep,
 * set by `ApiTokenExpirySweep`). `keepLock` extends the lock when needed; false means it is lost: stop.
 * Resolves to the number of expired tokens removed.
 */
export type FlushFollowUp = (keepLock: () => Promise<boolean>) => Promise<number>;

interface TakenUse extends LastUsedUpdate {
  key: string;
}

/** Ends a walk early without it passing for a Redis failure. */
class WalkStopped extends Error {
  constructor(readonly reason: unknown) {
    super('usage flush walk stopped');
  }
}

/**
 * The uses one flush has taken and not yet written, written a page (one statement) at a time, with at
 * most one page's UPDATE in flight while the next page is taken from Redis: memory is bounded by two
 * pages, and Redis's and PostgreSQL's round trips overlap instead of adding up.
 */
class Walk {
  readonly stats: UsageFlushStats = { scanned: 0, taken: 0, updated: 0, dropped: 0, expired: 0, elapsedMs: 0 };
  /** Why the walk ended before the end of its work (lock lost, Redis did not answer), if it did. */
  stopped: unknown;
  /** The database error that ended the run, if one did. */
  failed: ApiTokenStoreError | undefined;
  private buffer: TakenUse[] = [];
  private writing: TakenUse[] = [];
  private inFlight: Promise<void> = Promise.resolve();

  constructor(
    readonly pageSize: number,
    private readonly update: (page: TakenUse[]) => Promise<number>,
  ) {}

  add(uses: TakenUse[]): void {
    for (const use of uses) this.buffer.push(use);
  }

  /** What was taken and not written (after a database failure: everything not in the database). */
  get unwritten(): readonly TakenUse[] {
    return this.writing.length ? [...this.writing, ...this.buffer] : this.buffer;
  }

  get unwrittenCount(): number {
    return this.writing.length + this.buffer.length;
  }

  /**
   * Starts the UPDATE of every full page (the rest too when `final`), each after the one before has
   * ended; returns with the last one in flight unless `final`. A database failure stops the walk.
   */
  async write(final: boolean): Promise<void> {
    while (this.buffer.length >= this.pageSize || (final && this.buffer.length > 0)) {
      await this.settle();
      const page = this.buffer.splice(0, this.pageSize);
      this.writing = page;
      this.inFlight = this.update(page).then(
        (updated) => {
          this.stats.updated += updated;
          this.writing = [];
        },
        (error: unknown) => {
          if (!(error instanceof ApiTokenStoreError)) throw error;
          this.failed = error;
        },
      );
    }
    if (final) await this.settle();
  }

  /** Waits for the page in flight; a database failure stops the walk. */
  async settle(): Promise<void> {
    await this.inFlight;
    if (this.failed) throw new WalkStopped(this.failed);
  }
}

/**
 * Moves usage from `api_token_active:{scope}:{token}` into `api_tokens.last_used_at`, on the `flushCron`
 * schedule (needs `ScheduleModule.forRoot()` in the application) or on demand with {@link flushNow}.
 *
 * One instance runs at a time (a Redlock lock, extended while the run works; an instance that does not
 * get it skips the tick), and one run per scheduled tick across instances. Each key is read and deleted
 * in one step (GETDEL), so a use recorded during the run stays for the next one; each page of
 * `flushPageSize` uses is one forward-only UPDATE. When the database refuses a page, the taken times
 * go back to Redis unless a newer one is there.
 *
 * @hideconstructor
 */
@Injectable()
export class ApiTokenUsageFlushService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(ApiTokenUsageFlushService.name);
  private queue: Promise<unknown> = Promise.resolve();
  private queued = 0;
  private scheduled = false;
  private closing = false;
  /** This process's last run accounted for its uses (written, put back or counted lost) and could not delete its marker. */
  private markerCounted = false;
  private readonly tickTtlSeconds: number;
  private followUp: FlushFollowUp | undefined;

  /** @internal Built by the module's injector. */
  constructor(
    private readonly redis: ApiTokenRedisService,
    private readonly repository: ApiTokenRepository,
    private readonly usage: ApiTokenUsageRecorder,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() private readonly scheduler?: SchedulerRegistry,
    @Optional() private readonly metrics?: ApiTokenMetrics,
  ) {
    this.tickTtlSeconds = 2 * (options.flushCron === false ? MAX_FLUSH_GAP_SECONDS : longestCronGapSeconds(options.flushCron));
  }

  /** Nest's bootstrap hook: warns when no flush job is scheduled (no `ScheduleModule.forRoot()`). */
  onApplicationBootstrap(): void {
    // ScheduleModule mounts its jobs in its own bootstrap hook, which may come after this one.
    if (!this.applySchedule()) setImmediate(() => this.applySchedule(true));
  }

  /** Lets a run under way finish before the connections close. */
  async beforeApplicationShutdown(): Promise<void> {
    this.closing = true;
    await this.queue;
  }

  /** @internal The scheduled run: skipped while this process runs one, or when another instance has this tick. */
  @Cron(DEFAULT_FLUSH_CRON, { name: FLUSH_JOB_NAME })
  async onSchedule(): Promise<void> {
    if (!this.scheduled && !this.applySchedule(true)) return;
    if (this.queued > 0 || this.closing) return;
    await this.enqueue(Math.round(Date.now() / 1000)).catch(() => undefined);
  }

  /**
   * Runs a flush now (after this process's pending usage is written to Redis) and returns what it did,
   * or null when it did not run: another instance holds the lock, or Redis did not answer.
   * Waits for a run of this process that is under way. Rejects with {@link ApiTokenStoreError} when
   * the database refused a page (its uses are back in Redis).
   */
  flushNow(): Promise<UsageFlushStats | null> {
    return this.enqueue(null);
  }

  private enqueue(tick: number | null): Promise<UsageFlushStats | null> {
    this.queued++;
    const run = this.queue.then(() => this.run(tick)).finally(() => this.queued--);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Sets the work each run does after its walk, under its lock (one; the last set wins). Wiring
   * inside the module, not for applications.
   *
   * @internal
   */
  setFollowUp(work: FlushFollowUp): void {
    this.followUp = work;
  }

  /** Re-times the `@Cron` job to `flushCron`; false when the job is not mounted yet. */
  private applySchedule(last = false): boolean {
    const cron = this.options.flushCron;
    if (this.scheduled) return true;
    if (!this.scheduler || !this.scheduler.doesExist('cron', FLUSH_JOB_NAME)) {
      if (last && cron !== false) {
        this.logger.warn('No flush job is scheduled (import ScheduleModule.forRoot() in the application); flushNow() still works');
      }
      return false;
    }
    const job = this.scheduler.getCronJob(FLUSH_JOB_NAME);
    if (cron === false) void job.stop();
    else if (cron !== DEFAULT_FLUSH_CRON) job.setTime(new CronTime(cron));
    this.scheduled = true;
    return true;
  }

  private async run(tick: number | null): Promise<UsageFlushStats | null> {
    const started = performance.now();
    const startedAt = Date.now();
    await this.usage.flushPending();
    const lock = await this.acquire();
    if (!lock) {
      this.metrics?.flushSkipped();
      return null;
    }
    const held = { lock };
    try {
      if (tick !== null && !(await this.claimTick(tick))) {
        this.metrics?.flushSkipped();
        return null;
      }
      const now = await this.redisTime();
      if (now === undefined) {
        this.metrics?.flushSkipped();
        return null;
      }
      // A span only for a run that holds the lock and the tick: every instance skips most ticks, and each
      // skip is a lock attempt, nothing more. It starts when the run did (lock attempt included).
      const trigger = tick === null ? 'manual' : 'schedule';
      return await inSpan(SPAN.flush, { [ATTR.trigger]: trigger }, (span) => this.walkAll(tick, now, held, started, span), startedAt);
    } finally {
      // Not answered in time: the lock expires by itself.
      // On the background path: a run that outlasted a stalled Redis must not open the request path's circuit.
      await this.redis.background('unlock', (_, step) => step(() => held.lock.release()), { timeoutMs: BATCH_CALL_TIMEOUT_MS, retries: 0 });
    }
  }

  /** The run, under its lock and with its tick: the walk, the writes, the follow-up (expiry sweep), the report. */
  private async walkAll(tick: number | null, now: number, held: { lock: Lock }, started: number, span: TraceSpan): Promise<UsageFlushStats> {
    await this.countLeftOver();
    const walk = new Walk(this.options.flushPageSize, (page) => this.repository.updateLastUsed(page));
    const walked = await this.redis.background('flush', async (client, step) => {
      try {
        const onPage = async (node: Redis, keys: string[]) => {
          walk.add(await this.take(node, keys, walk.stats, now, step));
          await this.markUnwritten(walk.unwrittenCount, step);
          await walk.write(false);
          held.lock = await this.extend(held.lock, step);
        };
        // The library's own uses: named by the index, no SCAN.
        for (const node of keyNodes(client)) {
          for (const index of await nonEmpty(node, nodeIndexKeys(client, node), step)) {
            for (;;) {
              const keys = await step(() => node.spop(index, walk.pageSize)).catch(movedIsEmpty);
              if (!keys.length) break;
              walk.stats.scanned += keys.length;
              await onPage(node, keys);
              if (keys.length < walk.pageSize) break;
            }
          }
        }
        // Dify's uses (not indexed): a paced SCAN, its cursor kept in Redis across runs.
        await this.scanSlice(client, step, walk.pageSize, async (node, keys) => {
          walk.stats.scanned += keys.length;
          await onPage(node, keys);
        });
        await walk.write(true);
        await this.markUnwritten(walk.unwrittenCount, step);
      } catch (error) {
        if (!(error instanceof WalkStopped)) throw error;
        walk.stopped = error.reason;
      }
      return true;
    }, { timeoutMs: WALK_TIMEOUT_MS, commandTimeoutMs: BATCH_CALL_TIMEOUT_MS });
    if (walked === UNCONFIRMED) walk.stopped = 'Redis did not answer';
    if (!walk.failed) await walk.write(true).catch((error) => ignoreStopped(error));
    if (!walk.failed && walk.stopped === undefined && this.followUp) {
      walk.stats.expired = await this.followUp(async () => {
        try {
          held.lock = await this.extend(held.lock, boundedStep(BATCH_CALL_TIMEOUT_MS));
          return true;
        } catch {
          return false;
        }
      });
    }
    walk.stats.elapsedMs = Math.round(performance.now() - started);
    const { scanned, taken, updated, dropped, expired, elapsedMs } = walk.stats;
    const line = `scanned=${scanned} taken=${taken} updated=${updated} dropped=${dropped} elapsed=${elapsedMs}ms expired=${expired}`;
    const outcome = walk.failed ? 'failed' : walk.stopped === undefined ? 'completed' : 'stopped';
    this.metrics?.flushRan(outcome, walk.stats);
    span.setAttributes({
      [ATTR.outcome]: outcome,
      [ATTR.keysScanned]: scanned,
      [ATTR.keysTaken]: taken,
      [ATTR.rowsWritten]: updated,
      [ATTR.keysUnusable]: dropped,
      [ATTR.expiredRemoved]: expired,
    });
    if (walk.failed) {
      recordFailure(span, walk.failed, outcome);
      const kept = await this.putBack(walk.unwritten);
      // Lost uses are counted by putBack; a marker left behind must not count them twice.
      this.markerCounted = !(await this.markUnwritten(0));
      this.logger.error(`Usage flush failed: ${line}; ${walk.failed.message}; ${kept}`);
      throw walk.failed;
    }
    this.markerCounted = !(await this.markUnwritten(0));
    const reason = typeof walk.stopped === 'string' ? walk.stopped : describeError(walk.stopped);
    const note = walk.stopped === undefined ? '' : `; stopped early (${reason})`;
    this.logger.log(`Usage flush${tick === null ? '' : ` tick=${tick}`}: ${line}${note}`);
    return walk.stats;
  }

  /**
   * One run's share of the walk for keys nobody indexed (Dify's): SCAN pages of `api_token_active:*`
   * from the cursor the last run left in {@link FLUSH_CURSOR_KEY} (one per node), for at most
   * {@link SCAN_IDLE_PAGES} empty pages (and {@link SCAN_BUDGET_MS}); the cursor is saved after each
   * page, so the walk resumes there next run. A keyspace of K keys is covered in about
   * K / ({@link SCAN_IDLE_PAGES} × `flushPageSize`, the SCAN COUNT) runs: 5 for 1M keys, 50 for 10M
   * at the default 1,000.
   */
  private async scanSlice(client: RedisClient, step: RedisStep, count: number, onPage: (node: Redis, keys: string[]) => Promise<void>): Promise<void> {
    const stopAt = Date.now() + SCAN_BUDGET_MS;
    const nodes = keyNodes(client);
    const names = nodes.map((node) => `${node.options.host}:${node.options.port}`);
    const saved = await step(() => client.hgetall(FLUSH_CURSOR_KEY));
    let at = Math.max(0, names.indexOf(saved.node ?? ''));
    let cursor = saved.node && names[at] === saved.node ? (saved.cursor ?? '0') : '0';
    let idle = 0;
    for (let visited = 0; visited < nodes.length && idle < SCAN_IDLE_PAGES && Date.now() < stopAt; ) {
      const node = nodes[at];
      const [next, keys] = await step(() => node.scan(cursor, 'MATCH', `${ACTIVE_KEY_PREFIX}:*`, 'COUNT', count));
      if (keys.length) await onPage(node, keys);
      else idle++;
      cursor = next;
      if (cursor === '0') {
        at = (at + 1) % nodes.length;
        visited++;
      }
      await step(() => client.hset(FLUSH_CURSOR_KEY, 'node', names[at], 'cursor', cursor).then(() => client.expire(FLUSH_CURSOR_KEY, FLUSH_CURSOR_TTL_SECONDS)));
    }
  }

  /** The run lock, or null when another instance holds it or Redis did not answer (logged by ApiTokenRedis). */
  private async acquire(): Promise<Lock | null> {
    const result = await this.redis.tryLock(FLUSH_LOCK_KEY, FLUSH_LOCK_TTL_MS, { timeoutMs: BATCH_CALL_TIMEOUT_MS });
    if (result === LOCKED || !result) {
      this.logger.debug(`Usage flush skipped: ${result === LOCKED ? 'another instance holds the lock' : 'Redis did not answer'}`);
      return null;
    }
    return result;
  }

  /**
   * Records that this tick ran; false when an instance already ran it (or a later one). Called under
   * the lock. The record lives two schedule gaps, so a host whose clock ran ahead blocks no tick for long.
   */
  private async claimTick(tick: number): Promise<boolean> {
    const last = await this.redis.call('get', (r) => r.get(FLUSH_TICK_KEY));
    if (last === undefined || Number(last) >= tick) {
      this.logger.debug(`Usage flush skipped: tick ${tick} ${last === undefined ? 'unknown (Redis did not answer)' : 'already ran'}`);
      return false;
    }
    await this.redis.call('set', (r) => r.set(FLUSH_TICK_KEY, String(tick), 'EX', this.tickTtlSeconds));
    return true;
  }

  /**
   * Redis's clock (TIME), in milliseconds: the one clock every instance's use times are checked
   * against, so an instance whose own clock is behind does not drop the others' uses.
   */
  private async redisTime(): Promise<number | undefined> {
    const time = await this.redis.call('time', (r) => r.time());
    return time && Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000);
  }

  /**
   * Counts as lost the uses a killed run had taken and not written (its marker is left over). Not
   * when this process's last run left the marker after accounting for its uses; another instance
   * would count those (a run whose Redis went down at its end, then a run elsewhere).
   */
  private async countLeftOver(): Promise<void> {
    const left = Number(await this.redis.call('get', (r) => r.get(FLUSH_UNWRITTEN_KEY)));
    const counted = this.markerCounted;
    this.markerCounted = false;
    if (left > 0 && !counted) {
      this.metrics?.flushUsesLost(left);
      this.logger.warn(`An earlier usage flush ended mid-run: ${left} uses it had taken were not written (lost)`);
    }
  }

  /**
   * Records how many taken uses are not in the database yet (0 deletes the marker); false when Redis did
   * not answer. On the background path: a slow answer must not send requests to the database.
   */
  private async markUnwritten(count: number, step?: RedisStep): Promise<boolean> {
    const send = (r: RedisClient): Promise<unknown> => (count > 0 ? r.set(FLUSH_UNWRITTEN_KEY, String(count), 'EX', ACTIVE_KEY_TTL_SECONDS) : r.del(FLUSH_UNWRITTEN_KEY));
    if (step) {
      await step(() => send(this.redis.client));
      return true;
    }
    return UNCONFIRMED !== (await this.redis.background('flush', (r, s) => s(() => send(r)), { timeoutMs: BATCH_CALL_TIMEOUT_MS * 3 }));
  }

  private async extend(lock: Lock, step: RedisStep): Promise<Lock> {
    if (lock.expiration - Date.now() > FLUSH_LOCK_TTL_MS / 2) return lock;
    try {
      return await step(() => lock.extend(FLUSH_LOCK_TTL_MS));
    } catch (error) {
      throw new WalkStopped(error);
    }
  }

  /**
   * Reads and deletes a page of keys on the node that holds them; returns the usable uses. When Redis
   * does not answer in time, the GETDELs may still run (a frozen Redis runs them when it resumes):
   * what they take then is put back, so giving up on a page loses none of its uses.
   */
  private async take(node: Redis, keys: string[], stats: UsageFlushStats, now: number, step: RedisStep): Promise<TakenUse[]> {
    const pipeline = node.pipeline();
    for (const key of keys) pipeline.getdel(key);
    let sent: ReturnType<typeof pipeline.exec> | undefined;
    let replies: Awaited<ReturnType<typeof pipeline.exec>>;
    try {
      replies = await step(() => (sent = pipeline.exec()));
    } catch (error) {
      const late = { scanned: 0, taken: 0, updated: 0, dropped: 0, expired: 0, elapsedMs: 0 };
      void sent?.then((r) => this.putBack(usesOf(keys, r ?? [], late, now), true)).catch(() => undefined);
      throw error;
    }
    return usesOf(keys, replies ?? [], stats, now);
  }

  /** Puts taken uses back in Redis, never over a newer time; says how it went. */
  private async putBack(uses: readonly TakenUse[], force = false): Promise<string> {
    void force;
    const done = await this.redis.background('flush', (r, step) =>
      step(() => Promise.all(uses.map((u) => setIfNewer(r, u.key, u.lastUsedAt, ACTIVE_KEY_TTL_SECONDS, activeIndexKey(r, u.key))))),
      { timeoutMs: BATCH_CALL_TIMEOUT_MS * 3, retries: 0 },
    ) !== UNCONFIRMED;
    if (!done) this.metrics?.flushUsesLost(uses.length);
    return done ? `${uses.length} uses put back in Redis` : `${uses.length} uses lost (Redis did not answer)`;
  }
}

/** The usable uses of a page of GETDEL replies, counted in `stats`. */
function usesOf(keys: string[], replies: [Error | null, unknown][], stats: UsageFlushStats, now: number): TakenUse[] {
  const uses: TakenUse[] = [];
  replies.forEach(([error, value], i) => {
    if (error || value == null) return;
    stats.taken++;
    const use = parseActiveEntry(keys[i], String(value), now);
    if (use) uses.push(use);
    else stats.dropped++;
  });
  return uses;
}

/** How far ahead of Redis's clock a use time may be (clock skew between hosts); later ones are dropped. */
export const MAX_FUTURE_SKEW_MS = 5 * 60_000;

/**
 * Reads one taken `api_token_active:{scope}:{token}` entry (scope `None` or `any`: every scope), or
 * null when the key or its time is unusable: a token PostgreSQL text cannot hold, or a time more than
 * {@link MAX_FUTURE_SKEW_MS} ahead of `now` (updates only move forward, so it would stick).
 */
export function parseActiveEntry(key: string, value: string, now = Date.now()): TakenUse | null {
  const parsed = parseScopedKey(ACTIVE_KEY_PREFIX, key);
  const lastUsedAt = toNaiveUtc(value);
  if (!parsed || !lastUsedAt || key.includes('\u0000')) return null;
  if (Date.parse(`${lastUsedAt}Z`) > now + MAX_FUTURE_SKEW_MS) return null;
  return { key, token: parsed.token, scope: parsed.scope, lastUsedAt };
}

function ignoreStopped(error: unknown): void {
  if (!(error instanceof WalkStopped)) throw error;
}

/** A slot that moved answers MOVED to a SPOP sent to its old master: nothing to drain there now. */
function movedIsEmpty(error: unknown): string[] {
  if (error instanceof Error && /^MOVED|^ASK/.test(error.message)) return [];
  throw error;
}

/**
 * The index keys that hold members, asked in one pipeline of SCARD (on a Cluster a master has some
 * 5,000 slots, and one SPOP round trip per empty slot would cost seconds per run).
 */
async function nonEmpty(node: Redis, keys: string[], step: RedisStep): Promise<string[]> {
  if (keys.length <= 1) return keys;
  const pipeline = node.pipeline();
  for (const key of keys) pipeline.scard(key);
  const replies = (await step(() => pipeline.exec())) ?? [];
  return keys.filter((_, i) => !replies[i]?.[0] && Number(replies[i]?.[1]) > 0);
}
