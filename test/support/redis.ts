import Redis, { Cluster } from 'ioredis';
import { REDIS_CLUSTER_NODES, REDIS_TEST_URL } from './servers';

/**
 * A client on the suite's own Redis: its database index on one node, or its private Cluster in
 * cluster mode (typed as `Redis`: tests use only commands both clients have).
 */
export function testRedis(): Redis {
  if (REDIS_CLUSTER_NODES) {
    return new Cluster(REDIS_CLUSTER_NODES, { redisOptions: { maxRetriesPerRequest: 1 } }) as unknown as Redis;
  }
  return new Redis(REDIS_TEST_URL, { maxRetriesPerRequest: 1 });
}

/** Deletes the library's keys where the suite writes (only tests write there), on every master of a Cluster. */
export async function clearLibraryKeys(redis: Redis): Promise<void> {
  const cluster = redis as unknown as Cluster;
  const nodes = redis.isCluster ? await masters(cluster) : [redis];
  for (const node of nodes) {
    for (const pattern of ['api_token*', 'tenant_tokens:*']) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
        cursor = next;
        for (const key of keys) await node.del(key);
      } while (cursor !== '0');
    }
  }
}

async function masters(cluster: Cluster): Promise<Redis[]> {
  if (cluster.status !== 'ready') await new Promise((resolve) => cluster.once('ready', resolve));
  return cluster.nodes('master');
}

/** Calls of `command` the suite's Redis has run since it started, summed over every master of a Cluster (`INFO commandstats`). */
export async function commandCalls(redis: Redis, command: string): Promise<number> {
  const nodes = redis.isCluster ? await masters(redis as unknown as Cluster) : [redis];
  let calls = 0;
  for (const node of nodes) calls += Number(new RegExp(`^cmdstat_${command}:calls=(\\d+)`, 'm').exec(await node.info('commandstats'))?.[1] ?? 0);
  return calls;
}

/** How many of the keys exist, one EXISTS per key (keys of several slots on a Cluster). */
export async function countExisting(redis: Redis, ...keys: string[]): Promise<number> {
  const found = await Promise.all(keys.map((key) => redis.exists(key)));
  return found.reduce((sum, n) => sum + n, 0);
}

/** Kills the pub/sub connections on the suite's database index (every master of a Cluster); returns how many. */
export async function killSubscribers(redis: Redis): Promise<number> {
  const db = redis.isCluster ? 0 : (redis.options.db ?? 0);
  const nodes = redis.isCluster ? await masters(redis as unknown as Cluster) : [redis];
  let killed = 0;
  for (const node of nodes) {
    const list = (await node.call('CLIENT', 'LIST', 'TYPE', 'pubsub')) as string;
    const ids = list
      .split('\n')
      .filter((line) => line.includes(` db=${db} `))
      .map((line) => /^id=(\d+)/.exec(line)?.[1])
      .filter((id): id is string => id !== undefined);
    for (const id of ids) await node.client('KILL', 'ID', id);
    killed += ids.length;
  }
  return killed;
}
