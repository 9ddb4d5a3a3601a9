import { Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { UNCONFIRMED } from '../redis/redis-access.service';
import { ApiTokenCacheService, type SweepPosition, namedKeys } from './token-cache.service';

/** Tokens waiting for the sweep; past this, new ones are not swept (their named keys were deleted all the same). */
const MAX_QUEUED = 10_000;
/** Time one slice may walk, then the sweep yields for {@link PAUSE_MS}: a shared Redis serves others meanwhile. */
const SLICE_MS = 25;
const PAUSE_MS = 50;
/** Wait after a slice Redis did not answer; the walk then resumes where it was. */
const RETRY_MS = 1000;
/**
 * A walk starts once revocations have paused for this long, and at most {@link MAX_WAIT_MS} after the
 * first token queued for it: a burst of revocations is swept by one walk, after the burst, instead of
 * one walk for its first token and another for the rest while the burst's own DELs queue behind the
 * first walk's SCANs.
 */
const QUIET_MS = 250;
const MAX_WAIT_MS = 5000;

/**
 * The every-scope sweep, in the background: after a revocation has deleted the keys its token can be
 * named by (`ApiTokenCacheService.deleteNamed`), it walks `api_token:*` once for entries nobody can
 * name (another scope's entry, cached by Dify or before a row's scope changed) and deletes those of the
 * revoked tokens. Paced (slices of {@link SLICE_MS}, pauses between), resumable (a slice Redis did not
 * answer is tried again from the same cursor), on the background Redis path: it never decides a
 * revocation's `cacheCleared`, its retry, nor whether the request path uses Redis. Tokens revoked
 * while a walk is under way wait for the next walk, which covers the whole keyspace for them.
 */
@Injectable()
export class ApiTokenScopeSweep implements OnApplicationShutdown {
  private readonly logger = new Logger(ApiTokenScopeSweep.name);
  /** Tokens waiting for a walk, each with the keys its invalidations deleted by name (not swept). */
  private queued = new Map<string, Set<string>>();
  private walking: Map<string, Set<string>> | null = null;
  private position: SweepPosition = { node: 0, cursor: '0' };
  private timer: NodeJS.Timeout | undefined;
  /** When the first token waiting for a walk that has not started was queued (`Date.now()`). */
  private firstQueuedAt: number | undefined;
  private running: Promise<void> | undefined;
  private closing = false;
  private walks = 0;

  constructor(private readonly cache: ApiTokenCacheService) {}

  /** Walks completed since start. */
  get completedWalks(): number {
    return this.walks;
  }

  /** Whether tokens wait for a walk or one is under way. */
  get busy(): boolean {
    return this.walking !== null || this.queued.size > 0;
  }

  /**
   * Adds a (stored) token to the next walk, after an invalidation deleted its entries in `scopes` by
   * name (`ApiTokenCacheService.deleteNamed`): the walk deletes its entries in every other scope.
   */
  enqueue(token: string, scopes: readonly (string | null)[]): void {
    if (this.closing) return;
    if (this.queued.size >= MAX_QUEUED) {
      this.logger.warn('Every-scope sweep queue full; a revoked token\'s entries in scopes it never had live until their TTL');
      return;
    }
    // Queued twice (a policy change, then a revocation): only keys both deleted by name are skipped.
    const named = new Set(namedKeys(token, scopes));
    const earlier = this.queued.get(token);
    this.queued.set(token, earlier ? new Set([...earlier].filter((key) => named.has(key))) : named);
    // A walk under way goes on at its pace and then starts the next, which takes this token.
    if (this.walking) return;
    const now = Date.now();
    this.firstQueuedAt ??= now;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.schedule(Math.max(0, Math.min(QUIET_MS, this.firstQueuedAt + MAX_WAIT_MS - now)));
  }

  /** Runs slices until nothing waits (for tests and tools; the sweep runs by itself otherwise). */
  async drain(): Promise<void> {
    while (this.busy && !this.closing) {
      clearTimeout(this.timer);
      this.timer = undefined;
      await (this.running ??= this.slice().finally(() => (this.running = undefined)));
    }
  }

  onApplicationShutdown(): void {
    this.closing = true;
    clearTimeout(this.timer);
  }

  private schedule(delayMs: number): void {
    if (this.timer || this.closing) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.running ??= this.slice().finally(() => (this.running = undefined));
    }, delayMs).unref();
  }

  private async slice(): Promise<void> {
    if (!this.walking) {
      if (this.queued.size === 0) return;
      this.walking = this.queued;
      this.queued = new Map();
      this.firstQueuedAt = undefined;
      this.position = { node: 0, cursor: '0' };
    }
    const done = await this.cache.sweepSlice(this.walking, this.position, SLICE_MS);
    if (done === true) {
      this.walking = null;
      this.walks++;
    }
    if (this.busy) this.schedule(done === UNCONFIRMED ? RETRY_MS : PAUSE_MS);
  }
}
