import { Inject, Injectable, Optional } from '@nestjs/common';
import { LRUCache } from 'lru-cache';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { ANY_SCOPE, CACHE_KEY_PREFIX, activeKey, cacheKey, escapeGlob, generationKey, lookupLockKey, parseScopedKey, tenantIndexKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import type { ApiTokenRecord, AuthenticatedApiToken } from '../store/api-token.record';
import { parseRecord, serializeRecord, toAuthenticated } from '../store/api-token.record';
import { addToIndex, keyNodes, readOrLock, releaseLock, setIfGeneration } from '../redis/redis.commands';
import { ApiTokenRedisService, UNCONFIRMED, type Unconfirmed } from '../redis/redis-access.service';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { ApiTokenRevokedTokens } from './revoked-tokens';
import { BEARER_PREFIX, startsUsualToken } from '../auth/authorization.header';

/** The three outcomes of a cache lookup. */
export type CacheLookup =
  | { status: 'hit'; record: ApiTokenRecord }
  | { status: 'negative' }
  | { status: 'miss' };

/**
 * A Redis read that, on a miss, also read the entry's generation and tried the lookup lock:
 * `generation` ({@link UNCONFIRMED} when Redis did not answer) and `locked` (true: this reader holds
 * the lock; false: another does; undefined: not tried, or Redis did not answer).
 */
export type CacheRead = CacheLookup & { generation?: string | Unconfirmed; locked?: boolean };

/**
 * An L1 entry: a token's record, and the identity the guard hands handlers, built once when the entry
 * is written, so an in-process hit allocates nothing; or, with `record` null, "no such token". Both
 * kinds have one shape, so the hot path reads one kind of object. Evicting the entry drops it all.
 */
interface LocalEntry {
  readonly record: ApiTokenRecord | null;
  readonly identity: AuthenticatedApiToken | null;
  /** The token's `api_token_active:*` key, for the usage recorder: built once, its hash computed once. */
  readonly usageKey: string;
  /**
   * When the entry stops answering, on the {@link ApiTokenCacheService.localClock} clock. Kept here, not
   * as lru-cache's TTL: lru-cache would read the clock on every `get`, and the caller already has.
   */
  readonly expiresAt: number;
}

/** What an in-process hit hands back: an entry of a known token. */
export interface LocalHit extends LocalEntry {
  readonly record: ApiTokenRecord;
  readonly identity: AuthenticatedApiToken;
}
const MISS: CacheLookup = { status: 'miss' };
const NEGATIVE_ANSWER: CacheLookup = { status: 'negative' };
/**
 * Buckets one SCAN of the every-scope sweep visits. Redis runs a command at a time, so a revocation's
 * DEL sent while the sweep walks waits for the SCAN ahead of it: at COUNT 1000 on a master of 3.3M keys
 * that SCAN took 3–13 ms (SLOWLOG), and a revocation's p99 beside the sweep was 21–39 ms against 8 ms
 * without it. At 100 a SCAN holds Redis a tenth as long; the sweep, paced by time, walks a little slower.
 */
const SWEEP_SCAN_COUNT = 100;
/** The keys a token's entries can be named by: one per scope of `scopes` (null: `any`), and Dify's scope-less `None`. */
export const namedKeys = (token: string, scopes: readonly (string | null)[]): string[] => [
  ...new Set([...scopes.map((scope) => cacheKey(scope, token)), `${CACHE_KEY_PREFIX}:${DIFY_NO_SCOPE}:${token}`]),
];
const GENERATION_TTL_SECONDS = 3600;
/**
 * A fill's write is refused once this late by Redis's clock: well below the generation's TTL, so an
 * expired generation never passes for an unchanged one, and well above any sane clock skew between
 * the application and Redis (a refusal for lateness only costs the Redis write, never the answer).
 */
const FILL_WRITE_DEADLINE_SECONDS = 600;
/** Retries of each command of the every-scope sweep. */
const SWEEP_RETRIES = 2;
/** The scope segment Dify writes for a lookup without scope (Python's `None`). */
const DIFY_NO_SCOPE = 'None';

/** Where the every-scope sweep is: the index of the node (in `keyNodes`) and its SCAN cursor. */
export interface SweepPosition {
  node: number;
  cursor: string;
}

/**
 * What a fill's conditional write did: `stored`; `changed` (refused: the generation moved since it
 * was read, the token was revoked or created meanwhile); `unconfirmed` (no answer, or refused as too
 * late: a write may land later, but only while the generation is unchanged, so never after a revocation).
 */
export type FillOutcome = 'stored' | 'changed' | 'unconfirmed';
/** Deletions and generation changes are tried even while Redis is taken as down: skipping one could keep a revoked token cached. */
const FORCE = { force: true } as const;

/**
 * The token cache: an in-process LRU (L1) in front of Redis (L2), with Dify's keys, JSON and TTLs.
 *
 * A Redis error never fails a lookup: it is a miss ({@link ApiTokenRedisService}). Local entries are
 * guarded by an eviction epoch, so a Redis read or a fill that overlapped an eviction never puts
 * back what the eviction removed.
 */
@Injectable()
export class ApiTokenCacheService {
  private readonly local: LRUCache<string, LocalEntry> | null;
  private readonly localTtl: number;
  private readonly localNegativeTtl: number;
  private readonly evictionListeners: ((keys: readonly string[]) => Promise<boolean>)[] = [];
  private epoch = 0;
  /**
   * The L1 key of each token written to L1, by scope, built when the entry was written, under the name
   * {@link localName} gives the token: in plain mode its usual `Authorization` value, `Bearer <token>`, so
   * that the guard looks the header up as it came ({@link peekLocalHeader}: no parse, no slice, and a
   * flat string to hash); in hashed mode the stored hash. A hit then builds, flattens and hashes no
   * `api_token:{scope}:{token}` string, and the LRU compares its key by identity. Names keys, decides
   * nothing: a key whose entry is gone simply misses. Bounded: emptied once it holds `localCacheMax` keys.
   */
  private readonly localKeys = new Map<string, Map<string, string>>();
  private localKeyCount = 0;

  constructor(
    private readonly redis: ApiTokenRedisService,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() metrics?: ApiTokenMetrics,
    @Optional() private readonly revoked: ApiTokenRevokedTokens = new ApiTokenRevokedTokens(),
  ) {
    metrics?.source('localCacheEntries', () => this.local?.size ?? 0);
    const { localCacheMax, localCacheTtlMs, negativeTtlSeconds } = options;
    // lru-cache bounds the entries and orders them by use; their life is in the entries (`expiresAt`), so
    // a hit reads the clock once for L1 and the usage note together (lru-cache's TTL would read it again,
    // or cache it behind a 1 ms timer: bench/RESULTS.md).
    this.local = localCacheMax > 0 && localCacheTtlMs > 0 ? new LRUCache({ max: localCacheMax }) : null;
    this.localTtl = localCacheTtlMs;
    this.localNegativeTtl = Math.min(localCacheTtlMs, negativeTtlSeconds * 1000);
  }

  /**
   * The in-process answer, with no I/O: the entry (record, identity, usage key), null (cached
   * negative) or undefined (miss, expired entry, or L1 off). A record of another scope is a miss, as in
   * {@link lookupRedis}. `now`: a {@link localClock} reading the caller took (it also dates the use).
   */
  peekLocal(scope: string | null, token: string, now = this.localClock()): LocalHit | null | undefined {
    if (!this.local) return undefined;
    const name = this.localName(token);
    const kept = name === undefined ? undefined : this.localKeys.get(scope || ANY_SCOPE)?.get(name);
    return this.localEntry(kept ?? cacheKey(scope, token), scope, now);
  }

  /**
   * {@link peekLocal} by an `Authorization` value as sent, in plain mode: undefined unless it is the usual
   * `Bearer <token>` of a token L1 holds (then no parse and no slice was needed). Always undefined in
   * hashed mode, where L1 does not keep tokens in the clear.
   */
  peekLocalHeader(scope: string | null, header: string, now: number): LocalHit | null | undefined {
    // Not in hashed mode, where names are stored hashes: a client must not get in by sending the hash itself.
    const key = this.local && !this.options.hashTokens ? this.localKeys.get(scope || ANY_SCOPE)?.get(header) : undefined;
    return key === undefined ? undefined : this.localEntry(key, scope, now);
  }

  private localEntry(key: string, scope: string | null, now: number): LocalHit | null | undefined {
    const entry = this.local?.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= now) {
      this.local?.delete(key);
      return undefined;
    }
    const record = entry.record;
    if (record === null) return null;
    return scope && record.type !== scope ? undefined : (entry as LocalHit);
  }

  /**
   * Redis only; what it finds goes to L1. An unreadable entry, or one of another token or scope, is a miss.
   * With `lock` (the lookup's owner id and the lock's TTL), a miss also reads the entry's generation and
   * tries the lookup lock, in the same script: one round trip for all three.
   */
  async lookupRedis(scope: string | null, token: string, lock?: { owner: string; ttlMs: number }): Promise<CacheRead> {
    const key = cacheKey(scope, token);
    const epoch = this.epoch;
    const started = this.localClock();
    if (!lock) {
      const raw = await this.redis.call('get', (r) => r.get(key));
      return raw == null ? MISS : this.answer(key, raw, scope, token, epoch, started);
    }
    const send = (skipEntry: boolean) =>
      this.redis.call('get', (r) => readOrLock(r, key, generationKey(scope, token), lookupLockKey(scope, token), lock.owner, lock.ttlMs, skipEntry));
    let read = await send(false);
    if (read !== undefined && read[0] === 1) {
      const found = this.answer(key, read[1], scope, token, epoch, started);
      if (found.status !== 'miss') return found;
      // An unusable entry (Dify's, a stale one) is a miss, but this read took neither generation nor lock.
      read = await send(true);
    }
    // No answer: a miss, and a generation a fill must not take for "none".
    if (read === undefined || read[0] === 1) return { status: 'miss', generation: UNCONFIRMED };
    return { status: 'miss', generation: read[1], locked: read[2] === 1 };
  }

  /** Releases the lookup lock if `owner` still holds it, without waiting; if Redis does not answer, it expires. */
  releaseLookupLock(scope: string | null, token: string, owner: string): void {
    void this.redis.call('unlock', (r) => releaseLock(r, lookupLockKey(scope, token), owner));
  }

  private answer(key: string, raw: string, scope: string | null, token: string, epoch: number, started: number): CacheLookup {
    const record = parseRecord(raw);
    if (record === undefined || (record && (record.token !== token || (scope && record.type !== scope)))) return MISS;
    if (record && this.revoked.has(token)) {
      // A stale entry of a revoked token (a failover, a lost write, a fill by Dify): refused, and deleted again.
      if (epoch === this.epoch) this.setLocal(key, null, scope, started, token);
      void this.redis.call('del', (r) => r.del(key), FORCE);
      return NEGATIVE_ANSWER;
    }
    // An entry cached before a change of the token's policy that this instance knows of (from the change
    // log, when the change's own invalidation did not reach this Redis): read again from the database.
    if (record && this.revoked.isStale(record)) return MISS;
    if (epoch === this.epoch) this.setLocal(key, record, scope, started, token);
    return record ? { status: 'hit', record } : NEGATIVE_ANSWER;
  }

  /** Whether the revocation log lists this stored token as revoked, so no cache entry of it may be accepted. */
  isRevoked(token: string): boolean {
    return this.revoked.has(token);
  }

  /**
   * Drops a revoked token's keys from L1 and again from Redis, without publishing: every instance
   * does it itself when it reads the revocation log.
   */
  async dropRevoked(keys: readonly string[]): Promise<void> {
    if (keys.length === 0) return;
    this.evictLocal(keys);
    await this.redis.call('del', (r) => Promise.all(keys.map((key) => r.del(key))), FORCE);
  }

  /**
   * The generation of the token's entry in this scope ('' when it has none): it changes whenever the
   * token is created or revoked. {@link UNCONFIRMED} when Redis did not answer, which a fill must not
   * take for "none".
   */
  async generation(scope: string | null, token: string): Promise<string | Unconfirmed> {
    const value = await this.redis.attempt('get', (r) => r.get(generationKey(scope, token)));
    return value === UNCONFIRMED ? value : (value ?? '');
  }

  /**
   * Marks a change of the token in these scopes, so that no fill that read the generation before
   * writes after. True only when Redis confirmed every write.
   */
  async bumpGeneration(scopes: readonly (string | null)[], token: string, value: string): Promise<boolean> {
    const done = await this.redis.attempt(
      'set',
      (r) => Promise.all(scopes.map((scope) => r.set(generationKey(scope, token), value, 'EX', GENERATION_TTL_SECONDS))),
      FORCE,
    );
    return done !== UNCONFIRMED;
  }

  /** The local eviction epoch; hand it back to {@link fill} so a fill an eviction overlapped stays out of L1. */
  get localEpoch(): number {
    return this.epoch;
  }

  /**
   * The clock of L1's TTLs (monotonic milliseconds): hand a reading taken before a read to {@link fill},
   * so the entry's life counts from before the read.
   */
  localClock(): number {
    return performance.now();
  }

  /**
   * Writes a lookup result (a record, or null for "no such token") to Redis only if the entry's
   * generation is still `generation` (read before the lookup; {@link UNCONFIRMED} writes nothing to
   * Redis), then the tenant index. L1 gets it too unless the generation changed or an eviction
   * happened since `epoch`; its life counts from `started` (before the lookup), so an entry whose
   * lookup raced a revocation leaves L1 within `localCacheTtlMs` of that revocation, whatever Redis did.
   */
  async fill(
    scope: string | null,
    token: string,
    record: ApiTokenRecord | null,
    generation: string | Unconfirmed,
    epoch: number,
    started: number,
  ): Promise<FillOutcome> {
    const key = cacheKey(scope, token);
    const { cacheTtlSeconds, negativeTtlSeconds, tenantIndexTtlSeconds } = this.options;
    let outcome: FillOutcome = 'unconfirmed';
    if (generation !== UNCONFIRMED) {
      const now = Date.now();
      const value = record ? serializeRecord(record) : 'null';
      // An entry never outlives its token's expiry, so Dify, which ignores `expires_at`, stops finding it then too.
      const ttl = !record ? negativeTtlSeconds : record.expiresAtMs == null ? cacheTtlSeconds : Math.max(1, Math.min(cacheTtlSeconds, Math.ceil((record.expiresAtMs - now) / 1000)));
      // The deadline counts from before the read (`started`): a read that outlived the generation key must not write.
      const latest = Math.floor((now - (this.localClock() - started)) / 1000) + FILL_WRITE_DEADLINE_SECONDS;
      const written = await this.redis.attempt('set', (r) =>
        setIfGeneration(r, key, generationKey(scope, token), generation, value, ttl, latest),
      );
      outcome = written === 1 ? 'stored' : written === 0 ? 'changed' : 'unconfirmed';
    }
    if (outcome === 'stored' && record?.tenantId) {
      const index = tenantIndexKey(record.tenantId);
      await this.redis.call('set', (r) => addToIndex(r, index, key, tenantIndexTtlSeconds));
    }
    if (outcome !== 'changed' && epoch === this.epoch) this.setLocal(key, record, scope, started, token);
    return outcome;
  }

  /**
   * Remembers in L1 only that no row holds this token (the membership filter's confirmed unknowns:
   * Redis is left alone), unless an eviction came since `epoch`.
   */
  rememberUnknown(scope: string | null, token: string, epoch: number, started: number): void {
    if (epoch === this.epoch) this.setLocal(cacheKey(scope, token), null, scope, started, token);
  }

  /**
   * Drops cache keys in Redis and L1, then tells the {@link onEviction} listeners. True only when
   * Redis confirmed the deletes and every listener its part (an error reply or a timeout is false).
   */
  async deleteKeys(keys: readonly string[]): Promise<boolean> {
    if (keys.length === 0) return true;
    this.evictLocal(keys);
    const deleted = await this.redis.attempt('del', (r) => Promise.all(keys.map((key) => r.del(key))), FORCE);
    const told = await this.evicted(keys);
    return deleted !== UNCONFIRMED && told;
  }

  /**
   * Registers a listener called after every deletion of cache keys from Redis (`deleteKeys`,
   * `deleteAllScopes`, `invalidateTenant`), so that the other instances can drop them from their L1
   * (the invalidation service publishes them). Deleting and then telling keeps a reader from
   * re-caching what was just dropped. The listener answers whether its part was confirmed.
   */
  onEviction(listener: (keys: readonly string[]) => Promise<boolean>): void {
    this.evictionListeners.push(listener);
  }

  /**
   * Drops the keys a token's entries can be named by, and nothing else: in each of `scopes` (its rows'
   * `type`, and null for `any`), Dify's scope-less `api_token:None:{token}`, and their membership of the
   * tenant indexes of `tenantIds`. No SCAN, so it costs the same whatever else Redis holds. True only
   * when Redis confirmed the deletes and every {@link onEviction} listener its part.
   */
  async deleteNamed(token: string, scopes: readonly (string | null)[], tenantIds: readonly string[] = []): Promise<boolean> {
    const keys = namedKeys(token, scopes);
    this.evictLocal(keys);
    const deleted = await this.redis.attempt(
      'del',
      (r) => Promise.all([...keys.map((key) => r.del(key)), ...tenantIds.map((tenant) => r.srem(tenantIndexKey(tenant), ...keys))]),
      FORCE,
    );
    const told = await this.evicted(keys);
    return deleted !== UNCONFIRMED && told;
  }

  /**
   * One slice of the every-scope sweep (see `ApiTokenScopeSweep`): walks `api_token:*` from `position`
   * on the background path (bounded, retried, never the request path's circuit) for at most `budgetMs`,
   * deleting the entries whose token part is a key of `tokens` exactly (tokens are literals, never
   * patterns), except the keys its set names: those the revocation deleted by name, so an entry there
   * now was filled after it, from the row as it is (deleting it would only cost a query). Moves `position` on; answers whether the walk reached the end of the keyspace, or
   * {@link UNCONFIRMED} when Redis did not answer (the position stays where the last page was done).
   */
  async sweepSlice(tokens: ReadonlyMap<string, ReadonlySet<string>>, position: SweepPosition, budgetMs: number, deleted: string[] = []): Promise<boolean | Unconfirmed> {
    const found: string[] = [];
    const pattern = tokens.size === 1 ? `${CACHE_KEY_PREFIX}:*:${escapeGlob([...tokens.keys()][0])}` : `${CACHE_KEY_PREFIX}:*`;
    const done = await this.redis.background('scan', async (r, step) => {
      const nodes = keyNodes(r);
      const stopAt = Date.now() + budgetMs;
      while (position.node < nodes.length) {
        const node = nodes[position.node];
        const [next, keys] = await step(() => node.scan(position.cursor, 'MATCH', pattern, 'COUNT', SWEEP_SCAN_COUNT));
        const mine = keys.filter((key) => {
          const named = tokens.get(parseScopedKey(CACHE_KEY_PREFIX, key)?.token ?? '');
          return named !== undefined && !named.has(key);
        });
        if (mine.length) {
          await step(() => Promise.all(mine.map((key) => node.del(key))));
          found.push(...mine);
        }
        if (next === '0') {
          position.node++;
          position.cursor = '0';
        } else position.cursor = next;
        if (Date.now() >= stopAt) break;
      }
      return position.node >= nodes.length;
    }, { timeoutMs: budgetMs + this.options.redisCommandTimeoutMs * (1 + SWEEP_RETRIES) * 2, retries: SWEEP_RETRIES });
    this.evictLocal(found);
    if (found.length) await this.evicted(found);
    deleted.push(...found);
    return done;
  }

  /**
   * Walks the whole keyspace once for a token's entries in every scope, on the background path; the
   * keys deleted, or {@link UNCONFIRMED}. For tools and tests: revocations do not wait on it.
   */
  async deleteAllScopes(token: string): Promise<string[] | Unconfirmed> {
    const deleted: string[] = [];
    const position: SweepPosition = { node: 0, cursor: '0' };
    for (;;) {
      const done = await this.sweepSlice(new Map([[token, new Set<string>()]]), position, 1000, deleted);
      if (done === UNCONFIRMED) return UNCONFIRMED;
      if (done) return deleted;
    }
  }

  /**
   * Drops every cached entry of a tenant and its index, without touching the tokens. Returns the keys
   * dropped, and whether Redis confirmed it all (the index read, the deletes and the message).
   */
  async invalidateTenant(tenantId: string): Promise<{ keys: string[]; cleared: boolean }> {
    const index = tenantIndexKey(tenantId);
    const members = await this.redis.attempt('smembers', (r) => r.smembers(index), FORCE);
    const keys = members === UNCONFIRMED ? [] : members.filter((key) => parseScopedKey(CACHE_KEY_PREFIX, key) !== null);
    const deleted = await this.redis.attempt('del', (r) => Promise.all([...keys, index].map((key) => r.del(key))), FORCE);
    this.evictLocal(keys);
    const told = await this.evicted(keys);
    return { keys, cleared: members !== UNCONFIRMED && deleted !== UNCONFIRMED && told };
  }

  /** Drops keys from L1 only (what an invalidation message from another instance does). */
  evictLocal(keys: readonly string[]): void {
    this.epoch++;
    for (const key of keys) this.local?.delete(key);
  }

  /** Empties L1. */
  clearLocal(): void {
    this.epoch++;
    this.local?.clear();
  }

  /**
   * What {@link localKeys} names a stored token by: in hashed mode the hash; in plain mode its usual
   * header, when the guard reads that header back as this token ({@link startsUsualToken}), else no name
   * (a custom `tokenPattern` could allow such a token; it is found by its cache key, built per lookup).
   */
  private localName(token: string): string | undefined {
    if (this.options.hashTokens) return token;
    return startsUsualToken(token, 0) ? BEARER_PREFIX + token : undefined;
  }

  /** Keeps `key` as the L1 key of (scope, token) for {@link peekLocal} and {@link peekLocalHeader}. */
  private rememberKey(scope: string | null, token: string, key: string): void {
    const name = this.localName(token);
    if (name === undefined) return;
    const label = scope || ANY_SCOPE;
    let keys = this.localKeys.get(label);
    if (keys?.get(name) === key) return;
    if (this.localKeyCount >= this.options.localCacheMax) {
      this.localKeys.clear();
      this.localKeyCount = 0;
      keys = undefined;
    }
    if (!keys) this.localKeys.set(label, (keys = new Map()));
    if (!keys.has(name)) this.localKeyCount++;
    keys.set(name, key);
  }

  private async evicted(keys: readonly string[]): Promise<boolean> {
    if (keys.length === 0) return true;
    const told = await Promise.all(this.evictionListeners.map((listener) => listener(keys)));
    return told.every(Boolean);
  }

  /**
   * Puts an entry in L1: a record with its identity and usage key built once, or a negative.
   * `start`: when the read that produced the entry began (L1's clock); the entry's life counts from it.
   */
  private setLocal(key: string, record: ApiTokenRecord | null, scope: string | null, start: number, token: string): void {
    if (!this.local) return;
    this.rememberKey(scope, token, key);
    if (record) {
      this.local.set(key, { record, identity: toAuthenticated(record), usageKey: activeKey(scope, record.token), expiresAt: start + this.localTtl });
    } else if (this.localNegativeTtl > 0) {
      this.local.set(key, { record: null, identity: null, usageKey: '', expiresAt: start + this.localNegativeTtl });
    }
  }
}
