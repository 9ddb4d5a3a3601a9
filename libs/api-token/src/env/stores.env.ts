/**
 * Where the stores are, as the token command line (the package's `bin`) reads it from the
 * environment. Applications that want the same conventions use {@link apiTokenStoresFromEnv}.
 */
export interface ApiTokenStoresEnv {
  databaseUrl: string;
  redisUrl: string;
  /** Redis Cluster seed nodes (`REDIS_CLUSTER_NODES`); when set they win over `redisUrl`. */
  redisClusterNodes?: { host: string; port: number }[];
}

export const DEFAULT_DATABASE_URL = 'postgres://postgres:postgres@localhost:5432/postgres';
export const DEFAULT_REDIS_URL = 'redis://localhost:6379';

/** Reads `DATABASE_URL`, `REDIS_URL` and `REDIS_CLUSTER_NODES`; refuses a bad node list. */
export function readStoresEnv(env: NodeJS.ProcessEnv = process.env): ApiTokenStoresEnv {
  return {
    databaseUrl: env.DATABASE_URL || DEFAULT_DATABASE_URL,
    redisUrl: env.REDIS_URL || DEFAULT_REDIS_URL,
    redisClusterNodes: env.REDIS_CLUSTER_NODES ? parseClusterNodes(env.REDIS_CLUSTER_NODES) : undefined,
  };
}

/** Parses `host:port,host:port,…` (IPv6 hosts in brackets: `[::1]:7000`). */
export function parseClusterNodes(value: string): { host: string; port: number }[] {
  return value.split(',').map((entry) => {
    const match = /^\s*(\[[^\]]+\]|[^:\s]+):(\d{1,5})\s*$/.exec(entry);
    const port = Number(match?.[2]);
    if (!match || port < 1 || port > 65535) {
      throw new Error(`REDIS_CLUSTER_NODES must be host:port[,host:port…], got "${entry.trim()}"`);
    }
    return { host: match[1].replace(/^\[|\]$/g, ''), port };
  });
}
