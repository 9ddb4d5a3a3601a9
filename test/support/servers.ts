/** Where the end-to-end suite finds PostgreSQL and Redis, and the Redis database it keeps to itself. */
export const PG_ADMIN_URL = process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const REDIS_HOST = process.env.TEST_REDIS_HOST ?? '127.0.0.1';
export const REDIS_PORT = Number(process.env.TEST_REDIS_PORT ?? 6379);
/** The suite's own Redis database index: tests only write keys there. */
export const REDIS_TEST_DB = Number(process.env.TEST_REDIS_DB ?? 13);
export const REDIS_TEST_URL = `redis://${REDIS_HOST}:${REDIS_PORT}/${REDIS_TEST_DB}`;

/**
 * Seed nodes of the suite's own Redis Cluster when the suite runs in cluster mode (the `e2e-cluster`
 * jest project sets `TEST_REDIS_MODE=cluster`; its global setup starts the cluster unless
 * `TEST_REDIS_CLUSTER_NODES` names one), else undefined.
 */
export const REDIS_CLUSTER_NODES: { host: string; port: number }[] | undefined =
  process.env.TEST_REDIS_MODE === 'cluster'
    ? (process.env.TEST_REDIS_CLUSTER_NODES ?? '').split(',').filter(Boolean).map((node) => {
        const [host, port] = node.split(':');
        return { host, port: Number(port) };
      })
    : undefined;

/** The environment that points the demo and the token CLI at the suite's Redis (one node or the cluster). */
export const REDIS_ENV: Record<string, string> = REDIS_CLUSTER_NODES
  ? { REDIS_CLUSTER_NODES: process.env.TEST_REDIS_CLUSTER_NODES ?? '' }
  : { REDIS_URL: REDIS_TEST_URL };
