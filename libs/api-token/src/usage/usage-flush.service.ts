import { BeforeApplicationShutdown, Inject, Injectable, Logger, OnApplicationBootstrap, Optional } from '@nestjs/common';
import { Cron, SchedulerRegistry } from '@nestjs/schedule';
import type { Lock } from '@sesamecare-oss/redlock';
import { CronTime } from 'cron';
import type { Redis } from 'ioredis';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { ApiTokenStoreError } from '../api-token.errors';
import { ACTIVE_KEY_PREFIX } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { type RedisClient, deleteIfUnchanged, keyNodes } from '../redis/redis.commands';
import { activeIndexKey, indexesChecked, indexesToDrain, recheckIndexes } from './usage.index';
import { type IndexScan, type TakenUse, takePage, usesOf } from './flush.page';
import { describeError } from '../api-token.errors';
import { ApiTokenRedisService, LOCKED, type RedisStep, UNCONFIRMED, boundedStep } from '../redis/redis-access.service';
import { ApiTokenRepository } from '../store/api-token.repository';
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
const FLUSH_LOCK_TTL_MS = 30_000;
/**
 * Bound of each of the flush's calls to Redis (lock, each SCAN, SSCAN and page of reads or deletes,
 * lock extension), whatever the client's settings: with a frozen Redis, a run (and so shutdown) waits
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

/** What one flush did. */
export interface UsageFlushStats {
  /** `api_token_active:*` keys found: named by the library's index, or returned by SCAN (Dify's). */
  scanned: number;
  /**
   * Uses read from Redis (a key that expired or was flushed between SCAN and the read is not counted).
   * A key is deleted only once its use is in the database, and only if no newer use replaced it.
   */
  taken: number;
  /** Rows whose `last_used_at` moved forward. */
  updated: number;
  /** Keys read that could not be used (bad key shape or time), deleted and counted. */
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

/** Ends a walk early without it passing for a Redis failure. */
class WalkStopped extends Error {
  constructor(readonly reason: unknown) {
    super('usage flush walk stopped');
  }
}

/**
 * The uses one flush has read and not yet written, written a page (one statement) at a time, with at
 * most one page's UPDATE (and then its keys' deletion) in flight while the next page is read from
 * Redis: memory is bounded by two pages, and Redis's and PostgreSQL's round trips overlap instead of
 * adding up.
 */
class Walk {
  readonly stats: UsageFlushStats = { scanned: 0, taken: 0, updated: 0, dropped: 0, expired: 0, elapsedMs: 0 };
  /** Why the walk ended before the end of its work (lock lost, Redis did not answer), if it did. */
  stopped: unknown;
  /** The database error that ended the run, if one did. */
  failed: ApiTokenStoreError | undefined;
  /** An index read answered MOVED: its slot's new master drains it once a run asks every index. */
  slotMoved = false;
  /** This run asks every slot's index (on a Cluster, the pass due every `CHECK_ALL_EVERY_SECONDS`). */
  checkingAll = false;
  private buffer: TakenUse[] = [];
  private writing: TakenUse[] = [];
  /** The keys of `buffer` and `writing`: still in Redis until written, so a SCAN or SSCAN may name them again. */
  private readonly pending = new Set<string>();
  private inFlight: Promise<void> = Promise.resolve();

  constructor(
    readonly pageSize: number,
    private readonly update: (page: TakenUse[]) => Promise<number>,
  ) {}

  add(uses: TakenUse[]): void {
    for (const use of uses) {
      this.buffer.push(use);
      this.pending.add(use.key);
    }
  }

  /** The keys of a page found in Redis that this walk has not read yet (a SCAN can name a key twice). */
  unread(keys: string[]): string[] {
    return [...new Set(keys)].filter((key) => !this.pending.has(key));
  }

  /** Uses read and not written (after a database failure: everything not in the database; still in Redis). */
  get unwrittenCount(): number {
    return this.writing.length + this.buffer.length;
  }

  /**
   * Starts the UPDATE of every full page (the rest too when `rest`), each after the one before has
   * ended; returns with the last one in flight unless `final`. A database failure stops the walk.
   */
  async write(final: boolean, rest = final): Promise<void> {
    while (this.buffer.length >= this.pageSize || (rest && this.buffer.length > 0)) {
      await this.settle();
      const page = this.buffer.splice(0, this.pageSize);
      this.writing = page;
      this.inFlight = this.update(page).then(
        (updated) => {
          this.stats.updated += updated;
          for (const use of page) this.pending.delete(use.key);
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
 Moves usage from `api_token_active:{scope}:{token}` into `api_tokens.last_used_at`, on the `flushCron`
 * schedule (needs `ScheduleModule.forRoot()` in the application) or on demand with {@link flushNow}.
 *
 * One instance runs at a time (a Redlock lock, extended while the run works; an instance that does not
 * get it skips the tick), and one run per scheduled tick across instances. Each page of
 * `flushPageSize` uses is read (GET), written in one forward-only UPDATE, and only then deleted from
 * Redis, each key only while it still holds the time written (a script): a use recorded during the
 * run stays for the next one, and a run that stops anywhere (Redis or the database not answering, a
 * reply that comes late, the process killed) leaves every use it did not write in Redis.
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
      await this.bounded('unlock', () => held.lock.release());
    }
  }

  /** The run, under its lock and with its tick: the walk, the writes, the follow-up (expiry sweep), the report. */
  private async walkAll(tick: number | null, now: number, held: { lock: Lock }, started: number, span: TraceSpan): Promise<UsageFlushStats> {
    const release = new Release(this.redis);
    const walk = new Walk(this.options.flushPageSize, async (page) => {
      const updated = await this.repository.updateLastUsed(page);
      await release.delete(page);
      return updated;
    });
    const walked = await this.redis.background('flush', async (client, step) => {
      try {
        const onPage = async (node: Redis, found: string[]) => {
          const keys = walk.unread(found);
          walk.stats.scanned += keys.length;
          if (!keys.length) return;
          walk.add(await this.read(node, keys, walk.stats, now, step, release));
          await walk.write(false);
          release.check();
          held.lock = await this.extend(held.lock, step);
        };
        // The library's own uses: named by the index, no SCAN. SSCAN, not SPOP: a name leaves the
        // index with its key (see Release), so a run that stops leaves the rest indexed. A page is read
        // from as many of the node's indexes as it takes (one pipeline): on a Cluster a thousand uses
        // sit in about a thousand slots' indexes, and a page per index cost a thousand pages' round trips.
        const indexes = await indexesToDrain(client, step);
        walk.checkingAll = indexes.all;
        for (const node of keyNodes(client)) {
          const pending = await nonEmpty(node, indexes.drain(node), step, walk);
          while (pending.length) {
            const batch = takePage(pending, walk.pageSize);
            const replies = await step(() => {
              const pipeline = node.pipeline();
              for (const { index, cursor, size } of batch) pipeline.sscan(index, cursor, 'COUNT', Math.min(size, walk.pageSize));
              return pipeline.exec();
            });
            const keys: string[] = [];
            batch.forEach(({ index, size }, i) => {
              const [error, reply] = replies?.[i] ?? [null, ['0', []]];
              const [next, members] = error ? moved(error, walk) : (reply as [string, string[]]);
              keys.push(...members);
              if (next !== '0') pending.push({ index, cursor: next, size: Math.max(1, size - members.length) });
            });
            if (keys.length) await onPage(node, keys);
          }
        }
        // The index's last page is written while the SCAN walks (a key it finds meanwhile is pending,
        // not read twice): the statement's time is not added to the walk's budget.
        await walk.write(false, true);
        // Dify's uses (not indexed): a paced SCAN, its cursor kept in Redis across runs.
        await this.scanSlice(client, step, walk.pageSize, onPage);
        await walk.write(true);
      } catch (error) {
        if (!(error instanceof WalkStopped)) throw error;
        walk.stopped = error.reason;
      }
      return true;
    }, { timeoutMs: WALK_TIMEOUT_MS, commandTimeoutMs: BATCH_CALL_TIMEOUT_MS });
    if (walked === UNCONFIRMED) walk.stopped = 'Redis did not answer';
    if (!walk.failed) await walk.write(true).catch((error) => ignoreStopped(error));
    // Names this run took from the list and did not drain (it stopped, a database failure included, or a
    // slot moved): the next run asks every slot's index.
    if (walk.stopped !== undefined || walk.slotMoved) {
      await this.bounded('flush', (r) => recheckIndexes(r));
    } else if (walk.checkingAll) {
      await this.bounded('flush', (r) => indexesChecked(r));
    }
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
      this.logger.error(`Usage flush failed: ${line}; ${walk.failed.message}; ${walk.unwrittenCount} uses left in Redis for the next run`);
      throw walk.failed;
    }
    const reason = typeof walk.stopped === 'string' ? walk.stopped : describeError(walk.stopped);
    const note = walk.stopped === undefined ? '' : `; stopped early (${reason})`;
    this.logger.log(`Usage flush${tick === null ? '' : ` tick=${tick}`}: ${line}${note}`);
    return walk.stats;
  }

  /**
   * One run's share of the walk for keys nobody indexed (Dify's): SCAN pages of `api_token_active:*`
   * from the cursor the last run left in {@link FLUSH_CURSOR_KEY} (one per node), until the pages that
   * found no usage key have taken `flushScanBudgetMs` (at least one page a run, so a walk always moves
   * on); pages that found keys do not count, so a Redis full of Dify's uses is flushed in one run, a
   * page per statement. The cursor is saved once, at the end: a run that dies walks its share again.
   * A keyspace of K keys is covered in about K / (keys SCAN visits in the budget) runs
   * (docs/usage-flush.md states the figures measured here).
   */
  private async scanSlice(client: RedisClient, step: RedisStep, count: number, onPage: (node: Redis, keys: string[]) => Promise<void>): Promise<void> {
    const nodes = keyNodes(client);
    const names = nodes.map((node) => `${node.options.host}:${node.options.port}`);
    const saved = await step(() => client.hgetall(FLUSH_CURSOR_KEY));
    let at = Math.max(0, names.indexOf(saved.node ?? ''));
    let cursor = saved.node && names[at] === saved.node ? (saved.cursor ?? '0') : '0';
    let idleMs = 0;
    try {
      for (let visited = 0; visited < nodes.length && idleMs < this.options.flushScanBudgetMs; ) {
        const node = nodes[at];
        const started = performance.now();
        const [next, keys] = await step(() => node.scan(cursor, 'MATCH', `${ACTIVE_KEY_PREFIX}:*`, 'COUNT', count));
        if (keys.length) await onPage(node, keys);
        else idleMs += performance.now() - started;
        cursor = next;
        if (cursor === '0') {
          at = (at + 1) % nodes.length;
          visited++;
        }
      }
    } finally {
      // Not saved (Redis stalled): the next run walks this share again, nothing is lost.
      await step(() => client.multi().hset(FLUSH_CURSOR_KEY, 'node', names[at], 'cursor', cursor).expire(FLUSH_CURSOR_KEY, FLUSH_CURSOR_TTL_SECONDS).exec()).catch(() => undefined);
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
    const last = await this.bounded('flush', (r) => r.get(FLUSH_TICK_KEY));
    if (last === UNCONFIRMED || Number(last) >= tick) {
      this.logger.debug(`Usage flush skipped: tick ${tick} ${last === UNCONFIRMED ? 'unknown (Redis did not answer)' : 'already ran'}`);
      return false;
    }
    await this.bounded('flush', (r) => r.set(FLUSH_TICK_KEY, String(tick), 'EX', this.tickTtlSeconds));
    return true;
  }

  /**
   * Redis's clock (TIME), in milliseconds: the one clock every instance's use times are checked
   * against, so an instance whose own clock is behind does not drop the others' uses.
   */
  private async redisTime(): Promise<number | undefined> {
    const time = await this.bounded('time', (r) => r.time());
    return time === UNCONFIRMED ? undefined : Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000);
  }

  /**
   * One command of the run outside its walk, on the background path: a run's TIME or tick read that
   * goes unanswered skips the run, and never takes the request path off Redis.
   */
  private bounded<T>(operation: string, send: (redis: RedisClient) => Promise<T>): Promise<T | typeof UNCONFIRMED> {
    return this.redis.backgroundCall(operation, send, { timeoutMs: BATCH_CALL_TIMEOUT_MS });
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
   * Reads a page of keys on the node that holds them (GET, nothing deleted): the usable uses. Keys read
   * as missing (a stale name in the index) or unusable (counted as dropped) are deleted at once.
   */
  private async read(node: Redis, keys: string[], stats: UsageFlushStats, now: number, step: RedisStep, release: Release): Promise<TakenUse[]> {
    const replies = await step(() => {
      const pipeline = node.pipeline();
      for (const key of keys) pipeline.get(key);
      return pipeline.exec();
    });
    const { uses, discard } = usesOf(keys, replies ?? [], stats, now);
    if (discard.length) await release.delete(discard);
    return uses;
  }
}

/**
 * Deletes the keys of uses the database has, each only while it still holds the value read: the one
 * step of the flush that removes a use from Redis, so nothing is taken before it is written.
 *
 * Issue 29: the flush used to take each key with GETDEL and write what the reply held. A reply that
 * came after the flush's bound on it (or the client's `commandTimeout`, or never: a dropped connection)
 * left a GETDEL that Redis had run, the use out of Redis and in no reply: lost, and not even counted.
 * Catching late replies cannot close that (ioredis drops a reply once its command timed out, and a
 * connection can drop after Redis ran the command), and holding keys per run would need one per
 * Cluster slot. Read, write, then delete-if-unchanged needs neither: one script per page (per slot
 * on a Cluster: the keys and their slot's index, so any Cluster layout), a delete that fails or answers late only
 * leaves a use that is already written, and the next run writes it again (forward-only: no change)
 * and deletes it.
 */
class Release {
  /** Set once a delete went unanswered: the rest of the run's keys stay (written again next run) rather than wait on Redis. */
  private failed = false;

  constructor(private readonly redis: ApiTokenRedisService) {}

  /** Stops the walk once a delete went unanswered: Redis is failing, and the SCAN would find those keys again. */
  check(): void {
    if (this.failed) throw new WalkStopped('Redis did not answer a delete');
  }

  async delete(entries: readonly { key: string; value: string }[]): Promise<void> {
    if (this.failed || !entries.length) return;
    const done = await this.redis.background(
      'flush',
      (r, step) => step(() => Promise.all([...bySlot(r, entries)].map(([index, group]) => deleteIfUnchanged(r, index, group)))),
      { timeoutMs: BATCH_CALL_TIMEOUT_MS, commandTimeoutMs: BATCH_CALL_TIMEOUT_MS, retries: 0 },
    );
    if (done === UNCONFIRMED) this.failed = true;
  }
}

/**
 * Entries grouped by their index key: one group on a single node; on a Cluster one per slot (the
 * index's hash tag names the slot), so each group's script has its keys in one slot. An index page
 * is one slot, one group; a SCAN page of a master spreads over its slots.
 */
function bySlot<T extends { key: string }>(redis: RedisClient, entries: readonly T[]): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const entry of entries) {
    const index = activeIndexKey(redis, entry.key);
    const group = groups.get(index);
    if (group) group.push(entry);
    else groups.set(index, [entry]);
  }
  return groups;
}

function ignoreStopped(error: unknown): void {
  if (!(error instanceof WalkStopped)) throw error;
}

/** A slot that moved answers MOVED (or ASK, while it moves) to a read sent to its old master. */
const isMoved = (error: unknown): boolean => error instanceof Error && /^MOVED|^ASK/.test(error.message);

/** An SSCAN of a slot that moved: nothing to drain there now; its new master drains it (see `slotMoved`). */
function moved(error: unknown, walk: { slotMoved: boolean }): [string, string[]] {
  if (!isMoved(error)) throw error;
  walk.slotMoved = true;
  return ['0', []];
}

/**
 * The index keys that hold members, with their sizes, asked in one pipeline of SCARD (on a Cluster a
 * listed slot's index may have been drained already, and the pass over every index asks some 5,000 slots per
 * master: one SSCAN round trip per empty slot would cost seconds). An index that answers an error is
 * skipped (MOVED noted: see `slotMoved`).
 */
async function nonEmpty(node: Redis, keys: string[], step: RedisStep, walk: { slotMoved: boolean }): Promise<IndexScan[]> {
  if (!keys.length) return [];
  const pipeline = node.pipeline();
  for (const key of keys) pipeline.scard(key);
  const replies = (await step(() => pipeline.exec())) ?? [];
  const found: IndexScan[] = [];
  keys.forEach((index, i) => {
    const [error, reply] = replies[i] ?? [null, 0];
    if (error && isMoved(error)) walk.slotMoved = true;
    const size = error ? 0 : Number(reply);
    if (size > 0) found.push({ index, cursor: '0', size });
  });
  return found;
}
