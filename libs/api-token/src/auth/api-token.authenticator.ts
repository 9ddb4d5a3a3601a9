import { Inject, Injectable, Logger, Optional } from '@nestjs/common';
import type { Lock } from '@sesamecare-oss/redlock';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiTokenCacheService, CacheLookup, type LocalHit } from '../cache/token-cache.service';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { storedToken } from '../tokens/token.hash';
import { cacheKey, lockKey } from '../api-token.keys';
import { MAX_TOKEN_LENGTH, type ResolvedApiTokenOptions } from '../api-token.options';
import { checkScope } from '../tokens/token.scope';
import { BEARER_PREFIX } from './authorization.header';
import { type ApiTokenRecord, type AuthenticatedApiToken, isExpired, toAuthenticated } from '../store/api-token.record';
import { ApiTokenRedisService, LOCKED } from '../redis/redis-access.service';
import { ApiTokenRepository } from '../store/api-token.repository';
import { ApiTokenUsageRecorder } from '../usage/usage.recorder';
import { ApiTokenStoreError } from '../api-token.errors';
import { ApiTokenMetrics, type LookupCounts } from '../metrics/api-token.metrics';

/** The longest usual `Authorization` value: `Bearer ` and a token of the longest length accepted. */
const MAX_HEADER_LENGTH = BEARER_PREFIX.length + MAX_TOKEN_LENGTH;

/**
 * The request path: shape check, in-process cache, Redis, then one database lookup per token at a
 * time (a shared promise in the process, a Redlock lock across processes). Every token it accepts
 * counts as a use.
 *
 * @hideconstructor
 */
@Injectable()
export class ApiTokenAuthenticator {
  private readonly logger = new Logger(ApiTokenAuthenticator.name);
  private readonly inflight = new Map<string, Promise<ApiTokenRecord | null>>();
  private countsScope: string | null = null;
  private counts: LookupCounts | undefined;

  /** @internal Nest's injection: inject the class, never construct it. */
  constructor(
    private readonly cache: ApiTokenCacheService,
    private readonly repository: ApiTokenRepository,
    private readonly usage: ApiTokenUsageRecorder,
    private readonly redis: ApiTokenRedisService,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() private readonly metrics: ApiTokenMetrics = new ApiTokenMetrics(),
  ) {
  }

  /** Whether a token is worth a lookup (at most 255 characters, then the `tokenPattern` option); anything else is refused with no I/O. */
  isWellFormed(token: string): boolean {
    return token.length <= MAX_TOKEN_LENGTH && this.options.tokenPattern.test(token);
  }

  /**
   * What the guard would hand a handler for this token, outside HTTP (a queue consumer, a WebSocket
   * handshake): the token's identity if it is valid in this scope (any scope when null), else null.
   * Counts as a use, like a request. Throws ApiTokenInputError for a scope that breaks `create()`'s
   * rule, and {@link ApiTokenStoreError} when the database is needed and does not answer.
   */
  async authenticate(token: string, scope: string | null): Promise<AuthenticatedApiToken | null> {
    if (scope !== null) checkScope(scope, 'ApiTokenAuthenticator.authenticate: "scope"');
    const local = this.authenticateLocal(token, scope);
    if (local !== undefined) return local && local.identity;
    const record = await this.authenticateRemote(token, scope);
    return record && toAuthenticated(record);
  }

  /**
   * The guard's first step, before it parses the header: the answer the process knows with no I/O for an
   * `Authorization` value as sent. In plain mode L1 knows each token by its usual header, `Bearer <token>`,
   * so a hit neither parses the header nor slices the token out of it (only tokens that passed the shape
   * check are ever written to L1). Undefined when L1 does not know the header (a miss, an unusual header,
   * hashed mode): parse it, then call {@link authenticateLocal}.
   * @internal the guard's step; applications call {@link authenticate}.
   */
  authenticateLocalHeader(header: string, scope: string | null): LocalHit | null | undefined {
    // Hashed mode has no header names (the cache refuses too; checked here so no clock is read for nothing),
    // and a header too long to hold a token is not hashed for a map read (the token path refuses it).
    if (this.options.hashTokens || header.length > MAX_HEADER_LENGTH) return undefined;
    // One clock reading per request: it checks the L1 entry's life and dates the use.
    const now = this.cache.localClock();
    const local = this.cache.peekLocalHeader(scope, header, now);
    return local === undefined ? undefined : this.localAnswer(local, scope, now);
  }

  /**
   * The answer the process knows with no I/O (the in-process cache's entry: record and identity), or
   * undefined when it must ask Redis or the database.
   * @internal the guard's step; applications call {@link authenticate}.
   */
  authenticateLocal(token: string, scope: string | null): LocalHit | null | undefined {
    // Before anything else, and in hashed mode before the SHA-256: a malformed token costs no hash and no I/O.
    if (!this.isWellFormed(token)) {
      this.lookupCounts(scope).malformed++;
      return null;
    }
    const now = this.cache.localClock();
    const local = this.cache.peekLocal(scope, storedToken(token, this.options), now);
    return local === undefined ? undefined : this.localAnswer(local, scope, now);
  }

  /** Counts an L1 answer; a hit of an unexpired token is a use, dated `now`. */
  private localAnswer(local: LocalHit | null, scope: string | null, now: number): LocalHit | null {
    const counts = this.lookupCounts(scope);
    if (local === null) {
      counts.local_negative++;
      return null;
    }
    if (isExpired(local.record)) {
      counts.expired++;
      return null;
    }
    counts.local_hit++;
    this.usage.recordKey(local.usageKey, now);
    return local;
  }

  /** The lookup counters of a scope; the last scope's are kept, as a guard asks for the same scope every time. */
  private lookupCounts(scope: string | null): LookupCounts {
    if (scope !== this.countsScope || this.counts === undefined) {
      this.counts = this.metrics.scope(scope).lookups;
      this.countsScope = scope;
    }
    return this.counts;
  }

  /**
   * The rest of the path, after the in-process cache missed (the token is well formed).
   * @internal the guard's step; applications call {@link authenticate}.
   */
  async authenticateRemote(token: string, scope: string | null): Promise<ApiTokenRecord | null> {
    token = storedToken(token, this.options);
    const record = await this.shared(token, scope).catch((error: unknown) => {
      if (error instanceof ApiTokenStoreError) this.metrics.scope(scope).unavailable++;
      throw error;
    });
    // A record from Redis (read here, or by a lock holder this lookup waited for) may be of an expired token.
    return record && !isExpired(record) ? this.used(record, scope) : null;
  }

  private used(record: ApiTokenRecord, scope: string | null): ApiTokenRecord {
    this.usage.record(scope, record.token);
    return record;
  }

  /** Single flight in the process: concurrent lookups of one key share one Redis read and, on a miss, one fill. */
  private shared(token: string, scope: string | null): Promise<ApiTokenRecord | null> {
    const key = cacheKey(scope, token);
    let pending = this.inflight.get(key);
    if (pending) this.metrics.scope(scope).singleFlightJoins++;
    else {
      pending = this.resolve(token, scope).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending;
  }

  private async resolve(token: string, scope: string | null): Promise<ApiTokenRecord | null> {
    const cached = await this.cache.lookupRedis(scope, token);
    const lookups = this.metrics.scope(scope).lookups;
    if (cached.status === 'hit') {
      lookups[isExpired(cached.record) ? 'expired' : 'redis_hit']++;
      return cached.record;
    }
    if (cached.status === 'negative') {
      lookups.redis_negative++;
      return null;
    }
    lookups.miss++;
    return this.fill(token, scope);
  }

  /**
   * One database lookup, written back to the cache only if the entry's generation, read before the
   * lookup, is unchanged when the write reaches Redis (one script): a fill that overlapped a revoke or
   * a create writes nothing and answers null. When the generation could not be read, nothing is
   * written to Redis; the row read still answers this request.
   */
  private async fill(token: string, scope: string | null): Promise<ApiTokenRecord | null> {
    const epoch = this.cache.localEpoch;
    const started = this.cache.localClock();
    const waited = await this.acquire(token, scope);
    if (waited.answer) return waited.answer.status === 'hit' ? waited.answer.record : null;
    try {
      if (waited.lock) {
        const again = await this.cache.lookupRedis(scope, token);
        if (again.status !== 'miss') return again.status === 'hit' ? again.record : null;
      }
      const generation = await this.cache.generation(scope, token);
      const found = await this.lookUp(token, scope);
      // An expired row is cached as "no such token", never as a record: Dify, reading the same Redis, ignores
      // `expires_at`. Nor is a row read before its revocation committed, once the revocation log lists the token.
      const record = found && (isExpired(found) || this.cache.isRevoked(token)) ? null : found;
      const outcome = await this.cache.fill(scope, token, record, generation, epoch, started);
      return outcome === 'changed' ? null : record;
    } finally {
      const lock = waited.lock;
      if (lock) this.redis.unlock(lock);
    }
  }

  /** The database lookup, counted and timed. */
  private async lookUp(token: string, scope: string | null): Promise<ApiTokenRecord | null> {
    const started = performance.now();
    try {
      const record = await this.repository.findByToken(token, scope);
      this.metrics.databaseLookup(scope, record ? 'found' : 'not_found', (performance.now() - started) / 1000);
      return record;
    } catch (error) {
      this.metrics.databaseLookup(scope, 'error', (performance.now() - started) / 1000);
      throw error;
    }
  }

  /**
   * Takes the lookup lock, or waits for whoever holds it: until the lock is free, the holder's
   * answer shows in Redis, or `lockWaitMs` runs out. When Redis fails or the wait runs out, the
   * caller goes to the database without the lock; while Redis is down that costs no wait at all.
   */
  private async acquire(token: string, scope: string | null): Promise<{ lock?: Lock; answer?: CacheLookup }> {
    const resource = lockKey(scope, token);
    const { lockTtlMs, lockWaitMs, lockRetryDelayMs } = this.options;
    const deadline = Date.now() + lockWaitMs;
    let waitedSince: number | undefined;
    const waited = (timedOut = false) => {
      if (waitedSince !== undefined) this.metrics.lockWaited(scope, (performance.now() - waitedSince) / 1000, timedOut);
    };
    for (;;) {
      const attempt = await this.redis.tryLock(resource, lockTtlMs);
      if (attempt !== LOCKED) {
        waited();
        return attempt === undefined ? {} : { lock: attempt };
      }
      waitedSince ??= performance.now();
      if (Date.now() >= deadline) {
        waited(true);
        this.logger.warn(`Lookup lock not had within ${lockWaitMs} ms; querying the database without it`);
        return {};
      }
      await sleep(lockRetryDelayMs / 2 + Math.random() * lockRetryDelayMs);
      const seen = await this.cache.lookupRedis(scope, token);
      if (seen.status !== 'miss') {
        waited();
        return { answer: seen };
      }
    }
  }
}
