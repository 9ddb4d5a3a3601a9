import { Inject, Injectable, Logger, OnModuleDestroy, OnModuleInit, Optional } from '@nestjs/common';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { cacheKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { ApiTokenCacheService } from '../cache/token-cache.service';
import { ApiTokenRevokedTokens } from '../cache/revoked-tokens';
import { describeError } from '../api-token.errors';
import { ApiTokenRepository, type RevocationLogEntry } from '../store/api-token.repository';
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

/** How long after its revocation a token may still have cache entries somewhere (and so stays refused). */
export const revocationWindowMs = (options: Pick<ResolvedApiTokenOptions, 'cacheTtlSeconds'>): number =>
  options.cacheTtlSeconds * 1000 + REVOCATION_MARGIN_MS;

/**
 * The guarantee behind revocation. Every revocation is written to `api_token_revocations` in the
 * transaction that deletes the row ({@link ApiTokenRepository.revoke}); every instance reads the new
 * entries every `revocationPollIntervalMs` (one range scan of the primary key) and, for each, evicts
 * the token from its in-process cache, deletes its Redis entries again, and refuses it on its own
 * ({@link ApiTokenRevokedTokens}) until its cache entries can no longer exist, even if a stale entry
 * comes back in Redis (a failover, a lost write, a fill by Dify). Pub/sub stays the fast path.
 *
 * At start the entries still inside the window are loaded before the application takes requests.
 * While PostgreSQL does not answer the poll, the instance keeps serving (pub/sub and the in-process
 * TTL still apply), logs once, and reads what it missed as soon as PostgreSQL answers: the log is
 * durable, so nothing is lost, only late.
 */
@Injectable()
export class ApiTokenRevocationLogService implements OnModuleInit, OnModuleDestroy {
  private readonly logger = new Logger(ApiTokenRevocationLogService.name);
  private readonly windowMs: number;
  /** The highest id read (bigint as text). */
  private last = '0';
  /** Ids skipped by a read, with when they were first missed. */
  private readonly gaps = new Map<string, number>();
  private loaded = false;
  private lastReadAt: number | undefined;
  private failing = false;
  private nextPruneAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private stopped = false;
  private reads = 0;

  constructor(
    private readonly repository: ApiTokenRepository,
    private readonly cache: ApiTokenCacheService,
    private readonly revoked: ApiTokenRevokedTokens,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() metrics?: ApiTokenMetrics,
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
      const latest = initial ? await this.repository.latestRevocationId() : undefined;
      for (;;) {
        this.reads++;
        const entries = await this.repository.readRevocations(this.last, [...this.gaps.keys()], PAGE_SIZE);
        await this.apply(entries, initial);
        if (entries.length < PAGE_SIZE) break;
      }
      if (latest !== undefined && BigInt(latest) > BigInt(this.last)) this.last = latest;
      this.loaded = true;
      this.lastReadAt = performance.now();
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
   * Lists each entry still inside the window as revoked and, after start-up (when L1 is empty and
   * the entries are old news), evicts its keys from L1 and deletes them from Redis again.
   */
  private async apply(entries: RevocationLogEntry[], initial: boolean): Promise<void> {
    const now = performance.now();
    let last = BigInt(this.last);
    const keys: string[] = [];
    for (const entry of entries) {
      const id = BigInt(entry.id);
      if (!this.gaps.delete(entry.id) && id > last) {
        if (!initial) for (let gap = last + 1n; gap < id && this.gaps.size < MAX_GAPS; gap++) this.gaps.set(String(gap), now);
        last = id;
      }
      const remaining = this.windowMs - entry.ageMs;
      if (remaining <= 0) continue;
      this.revoked.add(entry.token, remaining);
      if (!initial) for (const scope of [null, ...entry.scopes]) keys.push(cacheKey(scope, entry.token));
    }
    this.last = String(last);
    for (const [id, since] of this.gaps) if (now - since > GAP_WAIT_MS) this.gaps.delete(id);
    await this.cache.dropRevoked(keys);
  }

  private async prune(): Promise<void> {
    this.nextPruneAt = performance.now() + PRUNE_EVERY_MS;
    this.revoked.prune();
    await this.repository.pruneRevocations(this.windowMs);
  }
}
