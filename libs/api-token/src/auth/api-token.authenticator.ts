import { Inject, Injectable, Logger, Optional } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiTokenCacheService, type CacheRead, type LocalHit } from '../cache/token-cache.service';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { storedToken } from '../tokens/token.hash';
import { ANY_SCOPE, cacheKey } from '../api-token.keys';
import { MAX_TOKEN_LENGTH, type ResolvedApiTokenOptions } from '../api-token.options';
import { checkScope } from '../tokens/token.scope';
import { BEARER_PREFIX } from './authorization.header';
import { type ApiTokenRecord, type AuthenticatedApiToken, isExpired, toAuthenticated } from '../store/api-token.record';
import { ApiTokenRedisService, UNCONFIRMED } from '../redis/redis-access.service';
import { ApiTokenRepository } from '../store/api-token.repository';
import { ApiTokenUsageRecorder } from '../usage/usage.recorder';
import { ApiTokenStoreError } from '../api-token.errors';
import { ApiTokenMetrics, type LookupCounts } from '../metrics/api-token.metrics';
import { ApiTokenLookupShedError, LookupBudget } from './lookup-budget';
import { ApiTokenKnownTokens, type WithinBudget } from './known-tokens.service';
import { fingerprint } from './known-tokens.filter';
import { ATTR, NO_SPAN, SPAN, type TraceSpan, inSpan } from '../metrics/api-token.tracing';

/** The longest usual `Authorization` value: `Bearer ` and a token of the longest length accepted. */
const MAX_HEADER_LENGTH = BEARER_PREFIX.length + MAX_TOKEN_LENGTH;

/**
 * What a lookup past the in-process cache found, and how (the `api_token.lookup` span's attributes):
 * where the answer came from, why a row found was refused, the lookup lock, the lookup budget's queue.
 */
interface Resolved {
  readonly record: ApiTokenRecord | null;
  readonly source: 'redis' | 'negative' | 'postgres' | 'filter';
  /** Set when the database's row was not the answer: expired, revoked (the log lists it), or changed during the lookup. */
  readonly refused?: 'expired' | 'revoked' | 'changed';
  /** `acquired`: this lookup held the lookup lock; `waited`: another did, and this one waited; `none`: Redis did not answer. */
  readonly lock?: 'acquired' | 'waited' | 'none';
  readonly queued?: boolean;
}

const NEGATIVE: Resolved = { record: null, source: 'negative' };

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
  private readonly inflight = new Map<string, Promise<Resolved>>();
  private countsScope: string | null = null;
  private counts: LookupCounts | undefined;
  private readonly budget: LookupBudget;

  /** @internal Nest's injection: inject the class, never construct it. */
  constructor(
    private readonly cache: ApiTokenCacheService,
    private readonly repository: ApiTokenRepository,
    private readonly usage: ApiTokenUsageRecorder,
    private readonly redis: ApiTokenRedisService,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    private readonly known: ApiTokenKnownTokens,
    @Optional() private readonly metrics: ApiTokenMetrics = new ApiTokenMetrics(),
  ) {
    this.budget = new LookupBudget(options.maxConcurrentLookups, options.maxQueuedLookups);
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
    const stored = storedToken(token, this.options);
    // The one span of the request path: an in-process hit never gets here.
    return inSpan(SPAN.lookup, { [ATTR.scope]: scope ?? ANY_SCOPE }, async (span) => {
      const failed = (error: unknown): never => {
        if (error instanceof ApiTokenLookupShedError) this.metrics.scope(scope).lookupsShed++;
        else if (error instanceof ApiTokenStoreError) this.metrics.scope(scope).unavailable++;
        throw error;
      };
      // The fingerprint (a SHA-1) only when there is a filter to ask.
      if (this.known.built) {
        const print = fingerprint(stored);
        if (!this.known.mayHold(print) && (await this.confirmedUnknown(stored, print, scope, span).catch(failed))) return null;
      }
      const found = await this.shared(stored, scope, span).catch(failed);
      // A record from Redis (read here, or by a lock holder this lookup waited for) may be of an expired token.
      const expired = found.record !== null && isExpired(found.record);
      if (span !== NO_SPAN) traceLookup(span, found, expired);
      return found.record && !expired ? this.used(found.record, scope) : null;
    });
  }

  /**
   * A token the membership filter does not hold: true when the table confirms that no row holds it
   * (one statement for every such token waiting), refused then with no Redis command and remembered in
   * L1; false when a row holds it or the table did not answer: the usual path decides. Throws
   * {@link ApiTokenLookupShedError} when the check was shed (too many waiting, or the budget full).
   */
  private async confirmedUnknown(token: string, print: number, scope: string | null, span: TraceSpan): Promise<boolean> {
    // As for a fill: an eviction during the check (the token created meanwhile) keeps the negative out of L1.
    const epoch = this.cache.localEpoch;
    const started = this.cache.localClock();
    if ((await this.known.check(token, print, this.withinBudget(scope))) !== true) return false;
    this.lookupCounts(scope).filtered++;
    this.cache.rememberUnknown(scope, token, epoch, started);
    if (span !== NO_SPAN) traceLookup(span, { record: null, source: 'filter' }, false);
    return true;
  }

  /** The membership filter's statements take a place in the lookup budget like a lookup, and wait counted. */
  private withinBudget(scope: string | null): WithinBudget {
    return (lookup) => this.budget.run(lookup, () => this.metrics.scope(scope).lookupsQueued++);
  }

  private used(record: ApiTokenRecord, scope: string | null): ApiTokenRecord {
    this.usage.record(scope, record.token);
    return record;
  }

  /** Single flight in the process: concurrent lookups of one key share one Redis read and, on a miss, one fill. */
  private shared(token: string, scope: string | null, span: TraceSpan): Promise<Resolved> {
    const key = cacheKey(scope, token);
    let pending = this.inflight.get(key);
    if (pending) {
      this.metrics.scope(scope).singleFlightJoins++;
      span.setAttribute(ATTR.joined, true);
    } else {
      pending = this.resolve(token, scope).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending;
  }

  /**
   * A miss costs two round trips to Redis and one query: the first read, one script, also reads the
   * entry's generation and tries the lookup lock (`api_token_query_lock:{api_token:…}`, in the entry's
   * slot); the fill, one script, writes only if the generation is unchanged; the lock's release is
   * sent without waiting. Only a lookup that finds the lock taken by another (a stampede across
   * instances) waits: it watches the cache for the holder's answer.
   */
  private async resolve(token: string, scope: string | null): Promise<Resolved> {
    const owner = randomUUID();
    let read = await this.cache.lookupRedis(scope, token, { owner, ttlMs: this.options.lockTtlMs });
    // The fill's guards count from here, before the database read (what they protect), as they did when
    // the generation had a read of its own: an eviction the first read overlapped says nothing of the row.
    const epoch = this.cache.localEpoch;
    const started = this.cache.localClock();
    const lookups = this.metrics.scope(scope).lookups;
    if (read.status === 'hit') {
      lookups[isExpired(read.record) ? 'expired' : 'redis_hit']++;
      return { record: read.record, source: 'redis' };
    }
    if (read.status === 'negative') {
      lookups.redis_negative++;
      return NEGATIVE;
    }
    lookups.miss++;
    const lock = read.locked === undefined ? 'none' : read.locked ? 'acquired' : 'waited';
    if (read.locked === false) {
      read = await this.waitForHolder(token, scope, owner);
      if (read.status === 'hit') return { record: read.record, source: 'redis', lock };
      if (read.status === 'negative') return { ...NEGATIVE, lock };
    }
    try {
      let queued = false;
      const found = await this.lookUp(token, scope, () => (queued = true));
      // An expired row is cached as "no such token", never as a record: Dify, reading the same Redis, ignores
      // `expires_at`. Nor is a row read before its revocation committed, once the revocation log lists the token.
      const refused = found === null ? undefined : isExpired(found) ? 'expired' : this.cache.isRevoked(token) ? 'revoked' : undefined;
      const record = refused ? null : found;
      const outcome = await this.cache.fill(scope, token, record, read.generation ?? UNCONFIRMED, epoch, started);
      const changed = outcome === 'changed' && record !== null;
      return { record: changed ? null : record, source: 'postgres', refused: changed ? 'changed' : refused, lock, queued };
    } finally {
      if (read.locked) this.cache.releaseLookupLock(scope, token, owner);
    }
  }

  /**
   * Another process holds the lookup lock: watches the cache every `lockRetryDelayMs` (each look also
   * tries the lock, in the same script) until the holder's answer shows, the lock is this lookup's, or
   * `lockWaitMs` runs out; then the lookup queries the database itself, so a dead holder delays a
   * lookup but never fails it.
   */
  private waitForHolder(token: string, scope: string | null, owner: string): Promise<CacheRead> {
    return inSpan(SPAN.lockWait, { [ATTR.scope]: scope ?? ANY_SCOPE }, async (span) => {
      const { lockTtlMs, lockWaitMs, lockRetryDelayMs } = this.options;
      const deadline = Date.now() + lockWaitMs;
      const since = performance.now();
      for (;;) {
        if (Date.now() >= deadline) {
          this.metrics.lockWaited(scope, (performance.now() - since) / 1000, true);
          this.logger.warn(`Lookup lock not had within ${lockWaitMs} ms; querying the database without it`);
          span.setAttribute(ATTR.outcome, 'timed_out');
          // A fresh generation, read before the query; the lock is not taken (`owner` empty).
          return this.cache.lookupRedis(scope, token, { owner: '', ttlMs: lockTtlMs });
        }
        await sleep(lockRetryDelayMs / 2 + Math.random() * lockRetryDelayMs);
        const seen = await this.cache.lookupRedis(scope, token, { owner, ttlMs: lockTtlMs });
        if (seen.status !== 'miss' || seen.locked !== false) {
          this.metrics.lockWaited(scope, (performance.now() - since) / 1000, false);
          // The holder's answer is in the cache, or the lock is this lookup's now (the holder gave up or died).
          span.setAttribute(ATTR.outcome, seen.status === 'miss' ? 'acquired' : 'answered');
          return seen;
        }
      }
    });
  }

  /**
   * The database lookup, within the lookup budget (`maxConcurrentLookups`, then `maxQueuedLookups`
   * waiting, then {@link ApiTokenLookupShedError}), counted and timed from when it has its place.
   */
  private lookUp(token: string, scope: string | null, onQueued: () => void): Promise<ApiTokenRecord | null> {
    return this.budget.run(
      () => this.query(token, scope),
      () => {
        this.metrics.scope(scope).lookupsQueued++;
        onQueued();
      },
    );
  }

  private async query(token: string, scope: string | null): Promise<ApiTokenRecord | null> {
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
}

/**
 * The lookup span's attributes: where the answer came from, and the outcome (`valid`, `not_found`,
 * `expired`, `revoked`, `changed`); the lock and queue when the lookup went to PostgreSQL.
 */
function traceLookup(span: TraceSpan, found: Resolved, expired: boolean): void {
  const outcome = found.record ? (expired ? 'expired' : 'valid') : (found.refused ?? 'not_found');
  span.setAttributes({ [ATTR.source]: found.source, [ATTR.outcome]: outcome });
  if (found.lock !== undefined) span.setAttribute(ATTR.lock, found.lock);
  if (found.queued) span.setAttribute(ATTR.queued, true);
}
