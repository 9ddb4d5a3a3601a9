import type { Cluster, Redis } from 'ioredis';

/** The ioredis client the module works with: one node or a Cluster. */
export type RedisClient = Redis | Cluster;

const isCluster = (redis: RedisClient): redis is Cluster => redis.isCluster;

/** The nodes that hold keys: the client itself, or every master of a Cluster. */
export function keyNodes(redis: RedisClient): Redis[] {
  return isCluster(redis) ? redis.nodes('master') : [redis];
}

/** The logical database of a single-node client (Redlock's scripts SELECT it); 0 on a Cluster. */
export function redisDb(redis: RedisClient): number {
  return isCluster(redis) ? 0 : (redis.options.db ?? 0);
}

/**
 * Walks every key matching `pattern` on every node with SCAN (never KEYS), one page at a time.
 * `onPage` is awaited before the next page is read, so memory stays bounded by `count`. Each SCAN
 * goes through `step` (see `ApiTokenRedisService.walk`), which bounds it.
 */
export async function scanKeys(
  redis: RedisClient,
  pattern: string,
  count: number,
  onPage: (keys: string[], node: Redis) => Promise<void>,
  step: <T>(send: () => Promise<T>) => Promise<T>,
): Promise<void> {
  for (const node of keyNodes(redis)) {
    let cursor = '0';
    do {
      const [next, keys] = await step(() => node.scan(cursor, 'MATCH', pattern, 'COUNT', count));
      cursor = next;
      if (keys.length) await onPage(keys, node);
    } while (cursor !== '0');
  }
}

const SET_IF_NEWER = `
local current = redis.call('GET', KEYS[1])
if current and current >= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if KEYS[2] then
  redis.call('SADD', KEYS[2], KEYS[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1`;

type WithSetIfNewer = {
  apiTokenSetIfNewer(key: string, value: string, ttlSeconds: number): Promise<number>;
  apiTokenSetIfNewerIndexed(key: string, index: string, value: string, ttlSeconds: number): Promise<number>;
};

/**
 * Sets a usage time unless the key holds a newer one (naive ISO-8601 times sort as text), and, given
 * `index`, names the key in that set (the flush's index; same slot on a Cluster). Returns 1 when
 * written. Runs as one script, so it is atomic on a node and on a Cluster.
 */
export function setIfNewer(redis: RedisClient, key: string, value: string, ttlSeconds: number, index?: string): Promise<number> {
  const client = redis as RedisClient & Partial<WithSetIfNewer>;
  if (!client.apiTokenSetIfNewer) {
    client.defineCommand('apiTokenSetIfNewer', { numberOfKeys: 1, lua: SET_IF_NEWER });
    client.defineCommand('apiTokenSetIfNewerIndexed', { numberOfKeys: 2, lua: SET_IF_NEWER });
  }
  const defined = client as RedisClient & WithSetIfNewer;
  return index === undefined ? defined.apiTokenSetIfNewer(key, value, ttlSeconds) : defined.apiTokenSetIfNewerIndexed(key, index, value, ttlSeconds);
}

const DELETE_IF_UNCHANGED = `
local deleted = 0
for i = 2, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if not current or current == ARGV[i - 1] then
    if current then redis.call('DEL', KEYS[i]) end
    redis.call('SREM', KEYS[1], KEYS[i])
    deleted = deleted + 1
  end
end
return deleted`;

type WithDeleteIfUnchanged = { apiTokenDeleteIfUnchanged(numberOfKeys: number, ...keysThenValues: string[]): Promise<number> };

/**
 * Deletes each usage key only while it still holds its `value` (what the flush read and wrote; '' for
 * a key read as missing), and then drops its name from `index` (the flush's index). A key a newer use
 * replaced since is left alone, indexed, for the next run. One script for the lot, so no use recorded
 * in between is deleted; on a Cluster the keys and `index` must share a slot (`activeIndexKey`).
 * Returns how many keys were deleted or found missing.
 */
export function deleteIfUnchanged(redis: RedisClient, index: string, entries: readonly { key: string; value: string }[]): Promise<number> {
  const client = redis as RedisClient & Partial<WithDeleteIfUnchanged>;
  if (!client.apiTokenDeleteIfUnchanged) client.defineCommand('apiTokenDeleteIfUnchanged', { lua: DELETE_IF_UNCHANGED });
  const keys = entries.map((e) => e.key);
  const values = entries.map((e) => e.value);
  return (client as RedisClient & WithDeleteIfUnchanged).apiTokenDeleteIfUnchanged(entries.length + 1, index, ...keys, ...values);
}

const SET_IF_GENERATION = `
if tonumber(redis.call('TIME')[1]) > tonumber(ARGV[4]) then return -1 end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1`;

type WithSetIfGeneration = {
  apiTokenSetIfGeneration(key: string, generationKey: string, generation: string, value: string, ttlSeconds: number, latest: number): Promise<number>;
};

/**
 * Sets a cache entry only while its generation key still holds `generation` ('' for none), in one
 * script: a write that reaches Redis after the generation changed (a revocation) is refused, however
 * late it arrives. Returns 1 when written, 0 when refused (generation changed), -1 when refused as too
 * late (see `latest`). Both keys must share a slot on a Cluster
 * (`generationKey` makes it so); if they do not, the Cluster answers an error and nothing is written.
 * A write that reaches Redis after `latest` (Unix seconds, Redis's clock) is refused too: a generation
 * key that expired and left "none" again (ABA) must not let a write queued by the client for that
 * long through.
 */
export function setIfGeneration(
  redis: RedisClient,
  key: string,
  generationKey: string,
  generation: string,
  value: string,
  ttlSeconds: number,
  latest: number,
): Promise<number> {
  const client = redis as RedisClient & Partial<WithSetIfGeneration>;
  if (!client.apiTokenSetIfGeneration) client.defineCommand('apiTokenSetIfGeneration', { numberOfKeys: 2, lua: SET_IF_GENERATION });
  return (client as RedisClient & WithSetIfGeneration).apiTokenSetIfGeneration(key, generationKey, generation, value, ttlSeconds, latest);
}

const ADD_TO_INDEX = `
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1`;

type WithAddToIndex = { apiTokenAddToIndex(index: string, member: string, ttlSeconds: number): Promise<number> };

/**
 * Adds a member to a set and makes its TTL at least `ttlSeconds`, never shorter: an index shared with
 * writers of a shorter TTL (Dify's 660 s, another instance's options) keeps the longest. One script, one
 * round trip (EXPIRE's GT flag needs Redis 7, and alone it never sets a TTL on a new set).
 */
export function addToIndex(redis: RedisClient, index: string, member: string, ttlSeconds: number): Promise<number> {
  const client = redis as RedisClient & Partial<WithAddToIndex>;
  if (!client.apiTokenAddToIndex) client.defineCommand('apiTokenAddToIndex', { numberOfKeys: 1, lua: ADD_TO_INDEX });
  return (client as RedisClient & WithAddToIndex).apiTokenAddToIndex(index, member, ttlSeconds);
}

const READ_OR_LOCK = `
local v = ARGV[3] ~= '1' and redis.call('GET', KEYS[1])
if v then return {1, v} end
if ARGV[1] == '' then return {0, redis.call('GET', KEYS[2]) or '', 0} end
local locked = redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2])
return {0, redis.call('GET', KEYS[2]) or '', locked and 1 or 0}`;

const RELEASE_LOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

type WithReadOrLock = {
  apiTokenReadOrLock(key: string, generationKey: string, lockKey: string, owner: string, ttlMs: number, skipEntry: string): Promise<[1, string] | [0, string, 0 | 1]>;
  apiTokenReleaseLock(lockKey: string, owner: string): Promise<number>;
};

/**
 * One script, one round trip: the cache entry; on a miss also its generation and, when `owner` is not
 * empty, an attempt at the lookup lock (SET NX PX). Answers `[1, value]` or `[0, generation, locked]`.
 * `skipEntry`: take the entry for missing (it was read and found unusable).
 * The three keys share the cache key's Cluster slot (`generationKey`, `lookupLockKey`).
 */
export function readOrLock(redis: RedisClient, key: string, generationKey: string, lockKey: string, owner: string, ttlMs: number, skipEntry = false) {
  const client = redis as RedisClient & Partial<WithReadOrLock>;
  if (!client.apiTokenReadOrLock) client.defineCommand('apiTokenReadOrLock', { numberOfKeys: 3, lua: READ_OR_LOCK });
  return (client as RedisClient & WithReadOrLock).apiTokenReadOrLock(key, generationKey, lockKey, owner, ttlMs, skipEntry ? '1' : '0');
}

/** Deletes the lookup lock if `owner` still holds it (a lock that expired and was taken by another stays). */
export function releaseLock(redis: RedisClient, lockKey: string, owner: string): Promise<number> {
  const client = redis as RedisClient & Partial<WithReadOrLock>;
  if (!client.apiTokenReleaseLock) client.defineCommand('apiTokenReleaseLock', { numberOfKeys: 1, lua: RELEASE_LOCK });
  return (client as RedisClient & WithReadOrLock).apiTokenReleaseLock(lockKey, owner);
}
