import { Inject, Injectable, Logger, OnModuleDestroy, OnModuleInit, Optional } from '@nestjs/common';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { cacheKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { ApiTokenCacheService } from '../cache/token-cache.service';
import { ApiTokenRevokedTokens, knownPolicy } from '../cache/revoked-tokens';
import { describeError } from '../api-token.errors';
import { ApiTokenRepository, type LogPage } from '../store/api-token.repository';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { ATTR, SPAN, inSpan } from '../metrics/api-token.tracing';

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
 * How far below the newest id skipped ids are watched as gaps. On a first read (at start, or after a
 * reset), the ids this far below the last one the log's sequence handed out that were not read: a
 * revocation whose transaction was still open then. Open transactions are at most PostgreSQL's
 * connections, so their ids are near the top; older missing ids were pruned or rolled back.
 */
const GAP_SPAN = 1000n;

/**
 * A reader's place in one log: the highest id read, the ids skipped (transactions that took an id but
 * had not committed when a later one was read), and the log's id sequence when last read, so a log
 * whose ids start again (TRUNCATE … RESTART IDENTITY, a migration's down and up) is seen.
 */
class LogPosition {
  last = 0n;
  readonly gaps = new Map<string, number>();
  /** Whether the next pages are a first read: no gaps noted between entries, the top settled at its end. */
  first = true;
  /** The ids a first read read near the top (the only ones {@link settle} asks about). */
  private readonly readNearTop = new Set<bigint>();
  private sequenceNode: string | undefined;
  /** Whether gaps were dropped at {@link MAX_GAPS} since the last read (reported once). */
  overflowed = false;

  /** The cursor of the next read. */
  cursor(): { after: string; gaps: string[] } {
    return { after: String(this.last), gaps: [...this.gaps.keys()] };
  }

  /**
   * Whether the log's ids started again since the last read: its sequence was restarted or made anew
   * (a new file node), or hands out ids below what was read. Pruning, TRUNCATE without RESTART
   * IDENTITY, VACUUM FULL and CLUSTER keep the sequence, so they are not resets.
   */
  wasReset(page: LogPage): boolean {
    const reset = this.sequenceNode !== undefined && (page.sequenceNode !== this.sequenceNode || BigInt(page.lastId) < this.last);
    this.sequenceNode = page.sequenceNode;
    return reset;
  }

  /** Back to the start of the log: the next read is a first read again. */
  rewind(): void {
    this.last = 0n;
    this.gaps.clear();
    this.first = true;
  }

  /**
   * Moves past one page of entries (in id order). Outside a first read, notes every id skipped since
   * the last one; in a first read, missing ids are old (pruned) unless near the top, which
   * {@link settle} watches once the last page is read.
   */
  advance(page: LogPage, pageSize: number, now: number): void {
    const top = BigInt(page.lastId);
    for (const entry of page.entries) {
      const id = BigInt(entry.id);
      if (this.first && id > top - GAP_SPAN) this.readNearTop.add(id);
      if (this.gaps.delete(entry.id) || id <= this.last) continue;
      if (!this.first) {
        // The ids just below a new entry are the ones open transactions may hold; a longer run of
        // skipped ids (a sequence moved by setval, many rollbacks) is watched only near its top, and
        // past MAX_GAPS the oldest gap makes room: the newest are the likeliest to commit late.
        const low = id - this.last > GAP_SPAN ? id - GAP_SPAN : this.last + 1n;
        for (let gap = low; gap < id; gap++) {
          this.gaps.set(String(gap), now);
          if (this.gaps.size > MAX_GAPS) {
            this.gaps.delete(this.gaps.keys().next().value!);
            this.overflowed = true;
          }
        }
      }
      this.last = id;
    }
    if (this.first && page.entries.length < pageSize) this.settle(top, now);
  }

  /** Ends a first read: watches the ids near the sequence's top that were not read, and moves there. */
  private settle(top: bigint, now: number): void {
    const low = top > GAP_SPAN ? top - GAP_SPAN + 1n : 1n;
    // A first read starts from 0 (at start, or after a reset), so every id from `low` up is its concern.
    for (let id = low; id <= top && this.gaps.size < MAX_GAPS; id++) {
      if (!this.readNearTop.has(id)) this.gaps.set(String(id), now);
    }
    if (top > this.last) this.last = top;
    this.readNearTop.clear();
    this.first = false;
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
  private policyLogFailing = false;
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
      let nextExpiryInMs: number | null = null;
      for (;;) {
        this.reads++;
        const readAt = Date.now();
        // Two statements, so a missing or broken policy-change log (a rollback's migration down())
        // never stops revocations from being read.
        const [revocations, policyRead] = await Promise.all([
          this.repository.readRevocationLog(this.revocations.cursor(), PAGE_SIZE),
          this.repository.readPolicyLog(this.policyChanges.cursor(), PAGE_SIZE).catch((error: unknown) => ({ error })),
        ]);
        // Only a policy log that fails while the revocation log answers is its own problem (a cut
        // connection fails both, and is logged as the poll's failure).
        const policyChanges = 'error' in policyRead ? this.policyLogFailed(policyRead.error) : policyRead;
        nextExpiryInMs = revocations.nextExpiryInMs;
        if (this.sawReset(revocations, policyChanges)) continue;
        const found = { [ATTR.revocations]: revocations.entries.length, [ATTR.policyChanges]: policyChanges?.entries.length ?? 0, [ATTR.initial]: initial };
        // A span only for a read that found entries, from the read on: an empty poll (one statement per
        // instance every revocationPollIntervalMs, nearly all of them) would bury the ones that matter.
        if (revocations.entries.length === 0 && found[ATTR.policyChanges] === 0) await this.apply(revocations, policyChanges, initial);
        else await inSpan(SPAN.revocationLogRead, found, async (span) => span.setAttribute(ATTR.keysDropped, await this.apply(revocations, policyChanges, initial)), readAt);
        if (revocations.entries.length < PAGE_SIZE && (policyChanges?.entries.length ?? 0) < PAGE_SIZE) break;
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

  /** Logs a failed read of the policy-change log (once until it is read again); the poll goes on without it. */
  private policyLogFailed(error: unknown): undefined {
    if (!this.policyLogFailing && !this.stopped) {
      this.policyLogFailing = true;
      this.logger.error(
        `Policy-change log not read while the revocation log was (${describeError(error)}: is api_token_policy_changes missing? ` +
          'run the migrations); revocations still apply, but ends of rotation grace and changed rate limits reach this instance only through Redis until it is read',
      );
    }
    return undefined;
  }

  /** Whether either log's ids started again (then both positions affected are rewound, and it is logged and counted). */
  private sawReset(revocations: LogPage, policyChanges: LogPage | undefined): boolean {
    const reset = this.revocations.wasReset(revocations);
    const policyReset = policyChanges !== undefined && this.policyChanges.wasReset(policyChanges);
    if (!reset && !policyReset) return false;
    this.metrics?.revocationLogReset();
    this.logger.error(
      'The revocation log was reset under this instance (its ids started again: TRUNCATE … RESTART IDENTITY, or its table made again); ' +
        'reading it again from the start. Revocations made while it was reset may have been missed by instances that did not restart: revoke them again.',
    );
    if (reset) this.revocations.rewind();
    if (policyReset) this.policyChanges.rewind();
    return true;
  }

  /**
   * Lists each revocation still inside the window as revoked, and notes each policy change's policy
   * (the newest change of a token wins, whatever order the entries arrive in); after start-up (when L1
   * is empty and the entries are old news), evicts their keys from L1 and deletes them from Redis again.
   * Answers how many keys it dropped.
   */
  private async apply(revocations: LogPage, policyChanges: LogPage | undefined, initial: boolean): Promise<number> {
    const now = performance.now();
    this.revocations.advance(revocations, PAGE_SIZE, now);
    if (policyChanges) {
      this.policyChanges.advance(policyChanges, PAGE_SIZE, now);
      this.policyLogFailing = false;
    }
    for (const position of [this.revocations, this.policyChanges]) {
      if (!position.overflowed) continue;
      position.overflowed = false;
      this.logger.warn(`More than ${MAX_GAPS} skipped log ids watched at once; the oldest are no longer watched (a revocation among them that commits late is read only after a restart)`);
    }
    const keys: string[] = [];
    for (const entry of [...revocations.entries, ...(policyChanges?.entries ?? [])]) {
      const remaining = this.windowMs - entry.ageMs;
      if (remaining <= 0) continue;
      if (entry.policy) this.revoked.notePolicy(entry.token, knownPolicy(entry.policy.expiresAt, entry.policy.rateLimit), remaining, BigInt(entry.id));
      else this.revoked.add(entry.token, remaining);
      if (!initial) for (const scope of [null, ...entry.scopes]) keys.push(cacheKey(scope, entry.token));
    }
    this.revocations.expireGaps(now);
    this.policyChanges.expireGaps(now);
    await this.cache.dropRevoked(keys);
    return keys.length;
  }

  private async prune(): Promise<void> {
    this.nextPruneAt = performance.now() + PRUNE_EVERY_MS;
    this.revoked.prune();
    await this.repository.pruneRevocations(this.windowMs);
  }
}
