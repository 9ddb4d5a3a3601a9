import { ApiTokenInputError } from '../api-token.errors';

/**
 * Where the stores are, as the token command line (the package's `bin`) reads it from the
 * environment. Applications that want the same conventions use {@link apiTokenStoresFromEnv}.
 */
export interface ApiTokenStoresEnv {
  databaseUrl: string;
  redisUrl: string;
  /** Redis Cluster seed nodes (`REDIS_CLUSTER_NODES`); when set they win over `redisUrl`. */
  redisClusterNodes?: { host: string; port: number }[];
  /** Attempts to connect to PostgreSQL at start (`DATABASE_RETRY_ATTEMPTS`), 1 s apart; the caller's default when absent. */
  databaseRetryAttempts?: number;
}

export const DEFAULT_DATABASE_URL = 'postgres://postgres:postgres@localhost:5432/postgres';
export const DEFAULT_REDIS_URL = 'redis://localhost:6379';

/**
 * Reads `DATABASE_URL`, `DATABASE_RETRY_ATTEMPTS`, `REDIS_URL` and `REDIS_CLUSTER_NODES`; refuses a
 * bad count or node list, naming the variable and never quoting its value (it may hold a password).
 */
export function readStoresEnv(env: NodeJS.ProcessEnv = process.env): ApiTokenStoresEnv {
  return {
    databaseUrl: env.DATABASE_URL || DEFAULT_DATABASE_URL,
    redisUrl: env.REDIS_URL || DEFAULT_REDIS_URL,
    redisClusterNodes: env.REDIS_CLUSTER_NODES ? parseClusterNodes(env.REDIS_CLUSTER_NODES) : undefined,
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

/** Parses `host:port,host:port,…` (IPv6 hosts in brackets: `[::1]:7000`). */
export function parseClusterNodes(value: string): { host: string; port: number }[] {
  return value.split(',').map((entry, index) => {
    const match = /^\s*(\[[^\]]+\]|[^:\s]+):(\d{1,5})\s*$/.exec(entry);
    const port = Number(match?.[2]);
    if (!match || port < 1 || port > 65535) {
      throw new ApiTokenInputError(`REDIS_CLUSTER_NODES must be host:port[,host:port…]; entry ${index + 1} is not`);
    }
    return { host: match[1].replace(/^\[|\]$/g, ''), port };
  });
}
