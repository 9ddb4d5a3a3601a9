import calculateSlot from 'cluster-key-slot';
import type { Cluster, Redis } from 'ioredis';
import { ACTIVE_KEY_TTL_SECONDS } from '../api-token.keys';
import { MAX_FLUSH_GAP_SECONDS } from './flush.schedule';
import { type RedisClient, setIfNewer } from '../redis/redis.commands';
import type { RedisStep } from '../redis/redis-access.service';

/**
 * The set of the `api_token_active:*` keys this library wrote, which the flush reads (SSCAN) instead of
 * walking the keyspace. Keys Dify writes are not in it; the flush's paced SCAN finds those.
 * On a single node one set; on a Cluster one per slot, `api_token_active_index:{tag}` with a hash tag
 * of that slot, so a use's key and its index entry are written (and deleted) by one
 * script, and each master reads the sets of its own slots.
 */
export const ACTIVE_INDEX_KEY = 'api_token_active_index';
/** An index lives as long as the keys it names (refreshed by every write). */
export const ACTIVE_INDEX_TTL_SECONDS = ACTIVE_KEY_TTL_SECONDS;
const SLOTS = 16384;
/**
 * Cluster only: the names of the slot indexes a use was written to since the flush last read this set.
 * A run drains those, not all 16,384 (asking every slot's index cost 75–300 ms a run on a loaded
 * three-master Cluster, more than the rest of a 1,000-use flush).
 */
export const LISTED_INDEXES_KEY = 'api_token_active_indexes';
/**
 * Cluster only: set (for {@link CHECK_ALL_EVERY_SECONDS}) once a run has asked every slot's index and
 * drained it, never before: a run that stops midway leaves it unset, so the next run asks them all
 * again. That pass finds what the list missed: uses of writers that do not list (0.2 instances),
 * slots that moved, names taken by a run that stopped.
 */
export const INDEXES_CHECKED_KEY = 'api_token_active_indexes_checked';
/**
 * Half the life of a usage key: a use nobody listed, written just after the pass drained its slot,
 * is reached by the next pass (this, plus at most one schedule gap) before its key expires.
 */
export const CHECK_ALL_EVERY_SECONDS = ACTIVE_KEY_TTL_SECONDS - 2 * MAX_FLUSH_GAP_SECONDS;

let slotTags: string[] | undefined;

/**
 * A short hash tag for every Cluster slot, found once (about 100k CRC16s, a few ms): slot → tag whose
 * `{tag}` hashes to it. `cluster-key-slot` is the CRC16 ioredis itself routes by (its dependency,
 * pinned to the same version), so the library's slots never disagree with the client's.
 */
function tags(): string[] {
  if (slotTags) return slotTags;
  const found: string[] = new Array<string>(SLOTS);
  let missing = SLOTS;
  for (let i = 0; missing > 0; i++) {
    const tag = i.toString(36);
    const slot = calculateSlot(tag);
    if (found[slot] === undefined) {
      found[slot] = tag;
      missing--;
    }
  }
  return (slotTags = found);
}

/** The index key of a Cluster slot. */
export const slotIndexKey = (slot: number): string => `${ACTIVE_INDEX_KEY}:{${tags()[slot]}}`;

/** The index that names `key`: the one set on a single node, its slot's on a Cluster. */
export function activeIndexKey(redis: RedisClient, key: string): string {
  return redis.isCluster ? slotIndexKey(calculateSlot(key)) : ACTIVE_INDEX_KEY;
}

/**
 * Writes uses as the recorder does: each key (unless it holds a newer time) with its index entry, in
 * one script; then, on a Cluster, the names of their indexes in {@link LISTED_INDEXES_KEY}. The list
 * comes after the scripts, never before: a run that takes the list between the two finds the name
 * again next run, and one that takes it after drains an index that already holds the use. Rejects
 * when Redis refused any of it (the uses are then written again: both steps are idempotent).
 */
export async function writeUses(redis: RedisClient, uses: readonly [key: string, value: string][], ttlSeconds: number, list = new IndexList()): Promise<void> {
  await Promise.all(uses.map(([key, value]) => setIfNewer(redis, key, value, ttlSeconds, activeIndexKey(redis, key))));
  if (redis.isCluster && uses.length) await list.add(redis, uses.map(([key]) => activeIndexKey(redis, key)), ttlSeconds);
}

/**
 * Adds names to {@link LISTED_INDEXES_KEY}, those of every write that ends in one turn of the event
 * loop in one MULTI (SADD, EXPIRE): the list is one key on one master, and a burst of a thousand
 * first uses sent it a thousand transactions.
 */
export class IndexList {
  private batch: { names: Set<string>; sent: Promise<unknown> } | undefined;

  /** Resolves when Redis has listed the names (with the others of their batch); rejects when it did not. */
  add(redis: RedisClient, indexes: readonly string[], ttlSeconds: number): Promise<unknown> {
    if (!this.batch) {
      const names = new Set<string>();
      const sent = new Promise((resolve) => setImmediate(resolve)).then(() => {
        this.batch = undefined;
        return redis.multi().sadd(LISTED_INDEXES_KEY, ...names).expire(LISTED_INDEXES_KEY, ttlSeconds).exec();
      });
      this.batch = { names, sent };
    }
    for (const index of indexes) this.batch.names.add(index);
    return this.batch.sent;
  }
}

/**
 * The index keys a run drains on each node (`drain`): the one set on a single node. On a Cluster, those
 * the list names (taken from it: SMEMBERS, then SREM of what was read, so a name listed meanwhile
 * stays for the next run), or every slot's (`all`) while {@link INDEXES_CHECKED_KEY} is unset; each on
 * the master the client's slot map gives it (a slot that moved answers MOVED: see `recheckIndexes`).
 * Only reads and a removal of what was read: a command the background path sends again changes nothing.
 */
export async function indexesToDrain(redis: RedisClient, step: RedisStep): Promise<{ drain: (node: Redis) => string[]; all: boolean }> {
  if (!redis.isCluster) return { drain: () => [ACTIVE_INDEX_KEY], all: true };
  const [listed, checked] = await step(() => Promise.all([redis.smembers(LISTED_INDEXES_KEY), redis.exists(INDEXES_CHECKED_KEY)]));
  if (listed.length) await step(() => redis.srem(LISTED_INDEXES_KEY, ...listed));
  // Slots, not the names read: a key is only ever drained by the name this module builds.
  const slots = checked ? new Set(listed.filter((name) => name.startsWith(`${ACTIVE_INDEX_KEY}:{`)).map((name) => calculateSlot(name))) : undefined;
  const drain = (node: Redis) => {
    const owner = `${node.options.host}:${node.options.port}`;
    const keys: string[] = [];
    (redis as Cluster).slots.forEach((owners: string[] | undefined, slot: number) => {
      if (owners?.[0] === owner && (!slots || slots.has(slot))) keys.push(slotIndexKey(slot));
    });
    return keys;
  };
  return { drain, all: !slots };
}

/** Cluster only: a run asked every slot's index and drained it; the next such run is due in {@link CHECK_ALL_EVERY_SECONDS}. */
export async function indexesChecked(redis: RedisClient): Promise<void> {
  if (redis.isCluster) await redis.set(INDEXES_CHECKED_KEY, '1', 'EX', CHECK_ALL_EVERY_SECONDS);
}

/**
 * Cluster only: makes the next run ask every slot's index (this one took names from the list it did
 * not drain: it stopped, or a slot moved). Best effort: else the next pass over every index finds them.
 */
export async function recheckIndexes(redis: RedisClient): Promise<void> {
  if (redis.isCluster) await redis.del(INDEXES_CHECKED_KEY);
}
