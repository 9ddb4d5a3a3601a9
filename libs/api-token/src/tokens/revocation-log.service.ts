import { Inject, Injectable, Logger, OnModuleDestroy, OnModuleInit, Optional } from '@nestjs/common';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { cacheKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { ApiTokenCacheService } from '../cache/token-cache.service';
import { ApiTokenRevokedTokens, knownPolicy } from '../cache/revoked-tokens';
import { describeError } from '../api-token.errors';
import { ApiTokenRepository, type LogPage, type RevocationLogEntry } from '../store/api-token.repository';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';

/**
 * How much longer than `cacheTtlSeconds` a revoked token stays refused: a fill that read the row just
 * before the revocation committed may write its entry (for `cacheTtlSeconds`) a little later; this
 * covers a database read and a Redis write that slow.
 */
export const REVOCATION_MARGIN_MS = 60_000;
/** Entries read per query; a longer backlog is read page after page. */
const PAGE_SIZE = 1000;
/**
 * How long an id skipped by a read is looked for again: ids are taken in insert order but committed
 * in any order, so a revocation with a lower id may commit after a higher one was read.
 */
const GAP_WAIT_MS = 60_000;
const MAX_GAPS = 10_000;
/** How often an instance prunes old entries from the log and from its list of revoked tokens. */
const PRUNE_EVERY_MS = 60_000;
/**
 * On a first read (at start, or after a reset), ids this far below the log's highest that were not
 * read are watched as gaps: a revocation whose transaction was still open then. Open transactions are
 * at most PostgreSQL's connections, so their ids are near the top; older missing ids were pruned.
 */
const FIRST_READ_GAP_SPAN = 1000n;

/**
 * A reader's place in one log: the highest id read, the ids skipped (transactions that took an id but
 * had not committed when a later one was read), and what the log looked like when last read, so a log
 * that was emptied and restarted (TRUNCATE … RESTART IDENTITY, a migration's down and up) is seen.
 */
class LogPosition {
  last = 0n;
  readonly gaps = new Map<string, number>();
  private fileNode: string | undefined;

  /** The cursor of the next read. */
  cursor(): { after: string; gaps: string[] } {
    return { after: String(this.last), gaps: [...this.gaps.keys()] };
  }

  /** Whether the log was reset since the last read: a new file node, or ids below what was read. */
  wasReset(page: LogPage): boolean {
    const reset = this.fileNode !== undefined && (page.fileNode !== this.fileNode || BigInt(page.maxId) < this.last);
    this.fileNode = page.fileNode;
    return reset;
  }

  /** Back to the start of the log: the next read is a first read again. */
  rewind(): void {
    this.last = 0n;
    this.gaps.clear();
  }

  /**
   * Moves past `entries`. Later reads note every id skipped since the last one; a first read notes the
   * missing ids within {@link FIRST_READ_GAP_SPAN} of the log's highest (`maxId`), and moves there.
   */
  advance(entries: readonly RevocationLogEntry[], first: boolean, maxId: string, now: number): void {
    const read = new Set<bigint>();
    const from = this.last;
    for (const entry of entries) {
      const id = BigInt(entry.id);
      read.add(id);
      if (this.gaps.delete(entry.id) || id <= this.last) continue;
      if (!first) for (let gap = this.last + 1n; gap < id && this.gaps.size < MAX_GAPS; gap++) this.gaps.set(String(gap), now);
      this.last = id;
    }
    if (first) {
      const top = BigInt(maxId);
      for (let id = top > FIRST_READ_GAP_SPAN ? top - FIRST_READ_GAP_SPAN + 1n : 1n; id <= top && this.gaps.size < MAX_GAPS; id++) {
        if (!read.has(id) && id > from) this.gaps.set(String(id), now);
      }
      if (top > this.last) this.last = top;
    }
  }

  /** Forgets gaps watched longer than {@link GAP_WAIT_MS}. */
  expireGaps(now: number): void {
    for (const [id, since] of this.gaps) if (now - since > GAP_WAIT_MS) this.gaps.delete(id);
  }
}

/** How long after its revocation a token may still have cache entries somewhere (and so stays refused). */
export const revocationWindowMs = (options: Pick<ResolvedApiTokenOptions, 'cacheTtlSeconds'>): number =>
  options.cacheTtlSeconds * 1000 + REVOCATION_MARGIN_MS;

/**
 * The guarantee behind revocation, and behind every change that narrows what a kept token may do.
 * Every revocation is written to `api_token_revocations` in the transaction that deletes the row
 * ({@link ApiTokenRepository.revoke}), every change of a token's expiry or rate limit to
 * `api_token_policy_changes` in the statement that makes it ({@link ApiTokenRepository.setPolicy}).
 * Every instance reads both every `revocationPollIntervalMs` (one statement) and, for each entry,
 * evicts the token from its in-process cache and deletes its Redis entries again; it then refuses a
 * revoked token on its own ({@link ApiTokenRevokedTokens}), and distrusts cached entries of a changed
 * token that predate the change, until such entries can no longer exist, even if a stale entry comes
 * back in Redis (a failover, a lost write, a fill by Dify). Pub/sub stays the fast path.
 *
 * A log that is reset under a running instance (truncated, or dropped and made again) is seen by its
 * file node or its ids going back: the instance logs it, counts it, and reads the log from the start.
 * The same poll learns when the next token expires, for the expiry sweep ({@link onNextExpiry}).
 *
 * At start the entries still inside the window are loaded before the application takes requests.
 * While PostgreSQL does not answer the poll, the instance keeps serving (pub/sub and the in-process
 * TTL still apply), logs once, and reads what it missed as soon as PostgreSQL answers: the logs are
 * durable, so nothing is lost, only late.
 */
@Injectable()
export class ApiTokenRevocationLogService implements OnModuleInit, OnModuleDestroy {
  private readonly logger = new Logger(ApiTokenRevocationLogService.name);
  private readonly windowMs: number;
  private readonly revocations = new LogPosition();
  private readonly policyChanges = new LogPosition();
  private loaded = false;
  private lastReadAt: number | undefined;
  private failing = false;
  private nextPruneAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private stopped = false;
  private reads = 0;
  private readonly expiryListeners: ((inMs: number | null) => void)[] = [];

  constructor(
    private readonly repository: ApiTokenRepository,
    private readonly cache: ApiTokenCacheService,
    private readonly revoked: ApiTokenRevokedTokens,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() private readonly metrics?: ApiTokenMetrics,
  ) {
    this.windowMs = revocationWindowMs(options);
    metrics?.source('revocationLogLagSeconds', () =>
      this.lastReadAt === undefined || this.stopped ? 0 : (performance.now() - this.lastReadAt) / 1000,
    );
  }

  /** Queries run against the log since start (reads, not prunes): the poll's cost. */
  get readCount(): number {
    return this.reads;
  }

  /**
   * Registers a listener told after every read when the next token expires (milliseconds from now by
   * PostgreSQL's clock, null when none expires): the expiry sweep's timer.
   */
  onNextExpiry(listener: (inMs: number | null) => void): void {
    this.expiryListeners.push(listener);
  }

  async onModuleInit(): Promise<void> {
    if (this.options.revocationPollIntervalMs === 0) return;
    this.nextPruneAt = performance.now() + Math.random() * PRUNE_EVERY_MS;
    await this.poll();
    this.schedule();
  }

  async onModuleDestroy(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.polling;
  }

  /** Reads the new entries now (one read at a time; a call during a read waits for it). */
  poll(): Promise<void> {
    this.polling ??= this.read().finally(() => (this.polling = undefined));
    return this.polling;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.poll().finally(() => this.schedule()), this.options.revocationPollIntervalMs).unref();
  }

  private async read(): Promise<void> {
    try {
      const initial = !this.loaded;
      let first = { revocations: initial, policyChanges: initial };
      let nextExpiryInMs: number | null = null;
      for (;;) {
        this.reads++;
        const read = await this.repository.readLogs(this.revocations.cursor(), this.policyChanges.cursor(), PAGE_SIZE);
        nextExpiryInMs = read.nextExpiryInMs;
        const reset = { revocations: this.revocations.wasReset(read.revocations), policyChanges: this.policyChanges.wasReset(read.policyChanges) };
        if (reset.revocations || reset.policyChanges) {
          this.metrics?.revocationLogReset();
          this.logger.error(
            'The revocation log was reset under this instance (truncated, or its table made again); reading it again from the start. ' +
              'Revocations made while it was reset may have been missed by instances that did not restart: revoke them again.',
          );
          if (reset.revocations) this.revocations.rewind();
          if (reset.policyChanges) this.policyChanges.rewind();
          first = { revocations: first.revocations || reset.revocations, policyChanges: first.policyChanges || reset.policyChanges };
          continue;
        }
        await this.apply(read.revocations, read.policyChanges, first, initial);
        first = { revocations: false, policyChanges: false };
        if (read.revocations.entries.length < PAGE_SIZE && read.policyChanges.entries.length < PAGE_SIZE) break;
      }
      this.loaded = true;
      this.lastReadAt = performance.now();
      for (const listener of this.expiryListeners) listener(nextExpiryInMs);
      if (this.failing) this.logger.log('Revocation log read again; revocations made meanwhile now apply here');
      this.failing = false;
      // A failed prune is retried next time; it never holds up the reads.
      if (performance.now() >= this.nextPruneAt) await this.prune().catch(() => undefined);
    } catch (error) {
      if (this.stopped || this.failing) return;
      this.failing = true;
      this.logger.warn(
        `Revocation log not read (${describeError(error)}); until PostgreSQL answers, revocations reach this instance over pub/sub only`,
      );
    }
  }

  /**
   * Lists each revocation still inside the window as revoked, and notes each policy change's policy;
   * after start-up (when L1 is empty and the entries are old news), evicts their keys from L1 and
   * deletes them from Redis again.
   */
  private async apply(
    revocations: LogPage,
    policyChanges: LogPage,
    first: { revocations: boolean; policyChanges: boolean },
    initial: boolean,
  ): Promise<void> {
    const now = performance.now();
    this.revocations.advance(revocations.entries, first.revocations, revocations.maxId, now);
    this.policyChanges.advance(policyChanges.entries, first.policyChanges, policyChanges.maxId, now);
    const keys: string[] = [];
    for (const entry of [...revocations.entries, ...policyChanges.entries]) {
      const remaining = this.windowMs - entry.ageMs;
      if (remaining <= 0) continue;
      if (entry.policy) this.revoked.notePolicy(entry.token, knownPolicy(entry.policy.expiresAt, entry.policy.rateLimit), remaining);
      else this.revoked.add(entry.token, remaining);
      if (!initial) for (const scope of [null, ...entry.scopes]) keys.push(cacheKey(scope, entry.token));
    }
    this.revocations.expireGaps(now);
    this.policyChanges.expireGaps(now);
    await this.cache.dropRevoked(keys);
  }

  private async prune(): Promise<void> {
    this.nextPruneAt = performance.now() + PRUNE_EVERY_MS;
    this.revoked.prune();
    await this.repository.pruneRevocations(this.windowMs);
  }
}
