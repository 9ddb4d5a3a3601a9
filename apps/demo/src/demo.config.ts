import type { ApiTokenModuleOptions } from 'nestjs-api-token';
import type { PostgresDataSourceOptions } from 'typeorm/driver/postgres/PostgresDataSourceOptions';

/** What the demo (and the token CLI) read from the environment. */
export interface DemoConfig {
  port: number;
  databaseUrl: string;
  redisUrl: string;
  /** Redis Cluster seed nodes (`REDIS_CLUSTER_NODES`); when set they win over the sentinels and `redisUrl`. */
  redisClusterNodes?: { host: string; port: number }[];
  /** Redis Sentinel nodes (`REDIS_SENTINELS`); when set (and no cluster nodes) they win over `redisUrl`. */
  redisSentinels?: { host: string; port: number }[];
  /** The master's name the sentinels monitor (`REDIS_SENTINEL_NAME`, default `mymaster`). */
  redisSentinelName?: string;
  /** Cron expression with a seconds field for the usage flush; the library's default when absent. */
  flushCron?: string;
  /** Extra options for the library (tests and benchmarks tune them). */
  apiToken?: ApiTokenModuleOptions;
  /** Extra TypeORM options (tests count queries through `extra.Client`). */
  typeorm?: Partial<PostgresDataSourceOptions>;
}

export const DEFAULT_DATABASE_URL = 'postgres://postgres:postgres@localhost:5432/postgres';
export const DEFAULT_REDIS_URL = 'redis://localhost:6379';
export const DEFAULT_REDIS_SENTINEL_NAME = 'mymaster';

/**
 * Reads `PORT`, `DATABASE_URL`, `REDIS_URL`, `REDIS_CLUSTER_NODES`, `REDIS_SENTINELS`,
 * `REDIS_SENTINEL_NAME` and `API_TOKEN_FLUSH_CRON`; refuses a bad `PORT` or node list.
 */
export function loadDemoConfig(env: NodeJS.ProcessEnv = process.env): DemoConfig {
  const port = Number(env.PORT ?? 3000);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`PORT must be a port number, got "${env.PORT}"`);
  }
  return {
    port,
    databaseUrl: env.DATABASE_URL || DEFAULT_DATABASE_URL,
    redisUrl: env.REDIS_URL || DEFAULT_REDIS_URL,
    redisClusterNodes: env.REDIS_CLUSTER_NODES ? parseNodes(env.REDIS_CLUSTER_NODES, 'REDIS_CLUSTER_NODES') : undefined,
    redisSentinels: env.REDIS_SENTINELS ? parseNodes(env.REDIS_SENTINELS, 'REDIS_SENTINELS') : undefined,
    redisSentinelName: env.REDIS_SENTINEL_NAME || DEFAULT_REDIS_SENTINEL_NAME,
    flushCron: env.API_TOKEN_FLUSH_CRON || undefined,
  };
}

/** Parses `host:port,host:port,…` (IPv6 hosts in brackets: `[::1]:7000`), the value of the variable `name`. */
export function parseNodes(value: string, name: string): { host: string; port: number }[] {
  return value.split(',').map((entry) => {
    const match = /^\s*(\[[^\]]+\]|[^:\s]+):(\d{1,5})\s*$/.exec(entry);
    const port = Number(match?.[2]);
    if (!match || port < 1 || port > 65535) {
      throw new Error(`${name} must be host:port[,host:port…], got "${entry.trim()}"`);
    }
    return { host: match[1].replace(/^\[|\]$/g, ''), port };
  });
}
