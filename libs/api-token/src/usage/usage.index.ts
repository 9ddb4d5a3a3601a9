import calculateSlot from 'cluster-key-slot';
import type { Cluster, Redis } from 'ioredis';
import { ACTIVE_KEY_TTL_SECONDS } from '../api-token.keys';
import type { RedisClient } from '../redis/redis.commands';

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
 * The index keys a node holds: the one set on a single node; on a Cluster those of the slots the
 * client's slot map gives this master (a slot that moved answers MOVED, and is drained by its new
 * master in the same run or the next).
 */
export function nodeIndexKeys(redis: RedisClient, node: Redis): string[] {
  if (!redis.isCluster) return [ACTIVE_INDEX_KEY];
  const name = `${node.options.host}:${node.options.port}`;
  const keys: string[] = [];
  (redis as Cluster).slots.forEach((owners: string[] | undefined, slot: number) => {
    if (owners?.[0] === name) keys.push(slotIndexKey(slot));
  });
  return keys;
}
