import { ApiTokenInputError } from '../api-token.errors';

/**
 * Where the stores are, as the token command line (the package's `bin`) reads it from the
 * environment. Applications that want the same conventions use {@link apiTokenStoresFromEnv}.
 */
export interface ApiTokenStoresEnv {
  databaseUrl: string;
  redisUrl: string;
  /** Redis Cluster seed nodes (`REDIS_CLUSTER_NODES`); when set they win over the sentinels and `redisUrl`. */
  redisClusterNodes?: { host: string; port: number }[];
  /** Redis Sentinel nodes (`REDIS_SENTINELS`); when set (and no cluster nodes) they win over `redisUrl`. */
  redisSentinels?: { host: string; port: number }[];
  /** The master's name the sentinels monitor (`REDIS_SENTINEL_NAME`, default `mymaster`). */
  redisSentinelName?: string;
  /** Attempts to connect to PostgreSQL at start (`DATABASE_RETRY_ATTEMPTS`), 1 s apart; the caller's default when absent. */
  databaseRetryAttempts?: number;
}

export const DEFAULT_DATABASE_URL = 'postgres://postgres:postgres@localhost:5432/postgres';
export const DEFAULT_REDIS_URL = 'redis://localhost:6379';
export const DEFAULT_REDIS_SENTINEL_NAME = 'mymaster';

/**
 * Reads `DATABASE_URL`, `DATABASE_RETRY_ATTEMPTS`, `REDIS_URL`, `REDIS_CLUSTER_NODES`, `REDIS_SENTINELS`
 * and `REDIS_SENTINEL_NAME`; refuses a
 * bad count or node list, naming the variable and never quoting its value (it may hold a password).
 */
export function readStoresEnv(env: NodeJS.ProcessEnv = process.env): ApiTokenStoresEnv {
  return {
    databaseUrl: env.DATABASE_URL || DEFAULT_DATABASE_URL,
    redisUrl: env.REDIS_URL || DEFAULT_REDIS_URL,
    redisClusterNodes: env.REDIS_CLUSTER_NODES ? parseNodes(env.REDIS_CLUSTER_NODES, 'REDIS_CLUSTER_NODES') : undefined,
    redisSentinels: env.REDIS_SENTINELS ? parseNodes(env.REDIS_SENTINELS, 'REDIS_SENTINELS') : undefined,
    redisSentinelName: env.REDIS_SENTINEL_NAME || DEFAULT_REDIS_SENTINEL_NAME,
    databaseRetryAttempts: env.DATABASE_RETRY_ATTEMPTS ? parseAttempts(env.DATABASE_RETRY_ATTEMPTS) : undefined,
  };
}

function parseAttempts(value: string): number {
  const attempts = Number(value);
  if (!/^\d+$/.test(value) || attempts < 1) {
    throw new ApiTokenInputError('DATABASE_RETRY_ATTEMPTS must be a whole number of attempts, at least 1');
  }
  return attempts;
}

/** Parses `host:port,host:port,…` (IPv6 hosts in brackets: `[::1]:7000`), the value of the variable `name`. */
export function parseNodes(value: string, name: string): { host: string; port: number }[] {
  return value.split(',').map((entry, index) => {
    const match = /^\s*(\[[^\]]+\]|[^:\s]+):(\d{1,5})\s*$/.exec(entry);
    const port = Number(match?.[2]);
    if (!match || port < 1 || port > 65535) {
      throw new ApiTokenInputError(`${name} must be host:port[,host:port…]; entry ${index + 1} is not`);
    }
    return { host: match[1].replace(/^\[|\]$/g, ''), port };
  });
}
