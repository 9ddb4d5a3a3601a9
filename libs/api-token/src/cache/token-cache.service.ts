import { Inject, Injectable, Optional } from '@nestjs/common';
import { LRUCache } from 'lru-cache';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { CACHE_KEY_PREFIX, cacheKey, escapeGlob, generationKey, parseScopedKey, tenantIndexKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import type { ApiTokenRecord } from '../store/api-token.record';
import { parseRecord, serializeRecord } from '../store/api-token.record';
import { scanKeys } from '../redis/redis.commands';
import { ApiTokenRedisService } from '../redis/redis-access.service';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { ApiTokenRevokedTokens } from './revoked-tokens';

/** The three outcomes of a cache lookup. */
export type CacheLookup =
  | { status: 'hit'; record: ApiTokenRecord; layer: 'local' | 'redis' }
  | { status: 'negative'; layer: 'local' | 'redis' }
  | { status: 'miss' };

const NEGATIVE = Symbol('negative');
const MISS: CacheLookup = { status: 'miss' };
const LOCAL_NEGATIVE: CacheLookup = { status: 'negative', layer: 'local' };
const REDIS_NEGATIVE: CacheLookup = { status: 'negative', layer: 'redis' };
const SCAN_COUNT = 1000;
const GENERATION_TTL_SECONDS = 3600;
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
  private readonly local: LRUCache<string, ApiTokenRecord | typeof NEGATIVE> | null;
  private readonly localNegativeTtl: number;
  private readonly evictionListeners: ((keys: readonly string[]) => Promise<void>)[] = [];
  private epoch = 0;

  constructor(
    private readonly redis: ApiTokenRedisService,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() metrics?: ApiTokenMetrics,
    @Optional() private readonly revoked: ApiTokenRevokedTokens = new ApiTokenRevokedTokens(),
  ) {
    metrics?.source('localCacheEntries', () => this.local?.size ?? 0);
    const { localCacheMax, localCacheTtlMs, negativeTtlSeconds } = options;
    this.local = localCacheMax > 0 && localCacheTtlMs > 0 ? new LRUCache({ max: localCacheMax, ttl: localCacheTtlMs }) : null;
    this.localNegativeTtl = Math.min(localCacheTtlMs, negativeTtlSeconds * 1000);
  }

  /** The in-process answer, with no I/O; `miss` when L1 is off or holds nothing. */
  lookupLocal(scope: string | null, token: string): CacheLookup {
    const entry = this.peekLocal(scope, token);
    if (entry === undefined) return MISS;
    return entry === null ? LOCAL_NEGATIVE : { status: 'hit', record: entry, layer: 'local' };
  }

  /** {@link lookupLocal} without an answer object, for the request path: the record, null (cached negative) or undefined (miss). */
  peekLocal(scope: string | null, token: string): ApiTokenRecord | null | undefined {
    const entry = this.local?.get(cacheKey(scope, token));
    return entry === NEGATIVE ? null : entry;
  }

  /** L1, then Redis. */
  async lookup(scope: string | null, token: string): Promise<CacheLookup> {
    const local = this.lookupLocal(scope, token);
    return local.status === 'miss' ? this.lookupRedis(scope, token) : local;
  }

  /** Redis only; what it finds goes to L1. An unreadable entry, or one of another token or scope, is a miss. */
  async lookupRedis(scope: string | null, token: string): Promise<CacheLookup> {
    const key = cacheKey(scope, token);
    const epoch = this.epoch;
    const raw = await this.redis.call('get', (r) => r.get(key));
    if (raw == null) return MISS;
    const record = parseRecord(raw);
    if (record === undefined || (record && (record.token !== token || (scope && record.type !== scope)))) return MISS;
    if (record && this.revoked.has(token)) {
      // A stale entry of a revoked token (a failover, a lost write, a fill by Dify): refused, and deleted again.
      if (epoch === this.epoch) this.setLocal(key, null);
      void this.redis.call('del', (r) => r.del(key), FORCE);
      return REDIS_NEGATIVE;
    }
    if (epoch === this.epoch) this.setLocal(key, record);
    return record ? { status: 'hit', record, layer: 'redis' } : REDIS_NEGATIVE;
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

  /** The token's generation in Redis: it changes whenever the token is created or revoked. */
  async generation(token: string): Promise<string | null> {
    return (await this.redis.call('get', (r) => r.get(generationKey(token)))) ?? null;
  }

  /** Marks a change of the token, so that fills which overlapped it back off. */
  async bumpGeneration(token: string, value: string): Promise<void> {
    await this.redis.call('set', (r) => r.set(generationKey(token), value, 'EX', GENERATION_TTL_SECONDS), FORCE);
  }

  /** The local eviction epoch; hand it back to {@link store} so a fill an eviction overlapped stays out of L1. */
  get localEpoch(): number {
    return this.epoch;
  }

  /**
   * Writes a lookup result (a record, or null for "no such token") to Redis and the tenant index,
   * then to L1 unless an eviction happened since `epoch`.
   */
  async store(scope: string | null, token: string, record: ApiTokenRecord | null, epoch = this.epoch): Promise<void> {
    const key = cacheKey(scope, token);
    const { cacheTtlSeconds, negativeTtlSeconds, tenantIndexTtlSeconds } = this.options;
    await this.redis.call('set', async (r) => {
      if (!record) return r.set(key, 'null', 'EX', negativeTtlSeconds);
      const writes: Promise<unknown>[] = [r.set(key, serializeRecord(record), 'EX', cacheTtlSeconds)];
      if (record.tenantId) {
        const index = tenantIndexKey(record.tenantId);
        writes.push(r.sadd(index, key).then(() => r.expire(index, tenantIndexTtlSeconds)));
      }
      return Promise.all(writes);
    });
    if (epoch === this.epoch) this.setLocal(key, record);
  }

  /** Drops the entry of one token in one scope, in Redis and L1 (and every instance's L1, see {@link onEviction}). */
  async delete(scope: string | null, token: string): Promise<void> {
    await this.deleteKeys([cacheKey(scope, token)]);
  }

  /** Drops cache keys in Redis and L1, then tells the {@link onEviction} listeners. */
  async deleteKeys(keys: readonly string[]): Promise<void> {
    if (keys.length === 0) return;
    this.evictLocal(keys);
    await this.redis.call('del', (r) => Promise.all(keys.map((key) => r.del(key))), FORCE);
    await this.evicted(keys);
  }

  /**
   * Registers a listener called after every deletion of cache keys from Redis (`delete`, `deleteKeys`,
   * `deleteAllScopes`, `invalidateTenant`), so that the other instances can drop them from their L1
   * (the invalidation service publishes them). Deleting and then telling keeps a reader from
   * re-caching what was just dropped.
   */
  onEviction(listener: (keys: readonly string[]) => Promise<void>): void {
    this.evictionListeners.push(listener);
  }

  /**
   * Drops the entries of a token in every scope. The token is a literal: its glob characters are
   * escaped, and only keys whose token part equals it exactly are deleted. Returns the keys deleted.
   */
  async deleteAllScopes(token: string): Promise<string[]> {
    const deleted: string[] = [];
    await this.redis.call('scan', (r) =>
      scanKeys(r, `${CACHE_KEY_PREFIX}:*:${escapeGlob(token)}`, SCAN_COUNT, async (keys, node) => {
        const mine = keys.filter((key) => parseScopedKey(CACHE_KEY_PREFIX, key)?.token === token);
        for (const key of mine) await node.del(key);
        deleted.push(...mine);
      }),
      { timeoutMs: 0, force: true },
    );
    this.evictLocal(deleted);
    await this.evicted(deleted);
    return deleted;
  }

  /** Drops every cached entry of a tenant and its index, without touching the tokens. Returns the keys dropped. */
  async invalidateTenant(tenantId: string): Promise<string[]> {
    const index = tenantIndexKey(tenantId);
    const members = (await this.redis.call('smembers', (r) => r.smembers(index), FORCE)) ?? [];
    const keys = members.filter((key) => parseScopedKey(CACHE_KEY_PREFIX, key) !== null);
    await this.redis.call('del', (r) => Promise.all([...keys, index].map((key) => r.del(key))), FORCE);
    this.evictLocal(keys);
    await this.evicted(keys);
    return keys;
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

  private async evicted(keys: readonly string[]): Promise<void> {
    if (keys.length) await Promise.all(this.evictionListeners.map((listener) => listener(keys)));
  }

  private setLocal(key: string, record: ApiTokenRecord | null): void {
    if (!this.local) return;
    if (record) this.local.set(key, record);
    else if (this.localNegativeTtl > 0) this.local.set(key, NEGATIVE, { ttl: this.localNegativeTtl });
  }
}
