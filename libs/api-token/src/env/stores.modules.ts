import { RedisModule, type RedisModuleOptions } from '@nestjs-modules/ioredis';
import type { DynamicModule } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import type { PostgresDataSourceOptions } from 'typeorm/driver/postgres/PostgresDataSourceOptions';
import { API_TOKEN_MIGRATIONS } from '../store/api-token.migration';
import { type ApiTokenStoresEnv, DEFAULT_REDIS_SENTINEL_NAME, readStoresEnv } from './stores.env';
import { isTransientDatabaseError } from './stores.startup';

/**
 * Attempts to connect to PostgreSQL at start unless `DATABASE_RETRY_ATTEMPTS` says otherwise: with the
 * 2 s connect timeout and 1 s between attempts, a PostgreSQL that does not answer is reported within
 * about 5 s, and one that `docker compose up -d` is still starting gets a second chance.
 */
export const DEFAULT_DATABASE_ATTEMPTS = 2;

/** How {@link apiTokenStoresFromEnv} connects, beyond what the environment says. */
export interface ApiTokenStoresOptions {
  /**
   * Attempts to connect to PostgreSQL at start, 1 s apart, when `DATABASE_RETRY_ATTEMPTS` does not say.
   * Default 2 (about 5 s). Only a PostgreSQL that does not answer is tried again, not a refused login.
   */
  retryAttempts?: number;
  /** More TypeORM options (pool size, a driver client class in `extra`…), merged over the defaults. */
  typeorm?: Partial<PostgresDataSourceOptions>;
}

/**
 * The `@nestjs-modules/ioredis` options for these stores: a Cluster when nodes are given, else the
 * master the sentinels name when sentinels are given, else one node.
 */
export function redisModuleOptions(
  config: Pick<ApiTokenStoresEnv, 'redisUrl' | 'redisClusterNodes' | 'redisSentinels' | 'redisSentinelName'>,
): RedisModuleOptions {
  // The library bounds its own calls (redisCommandTimeoutMs); these bound the rest of the app's.
  const options = {
    maxRetriesPerRequest: 1,
    commandTimeout: 1000,
    connectTimeout: 2000,
    retryStrategy: (attempt: number) => Math.min(attempt * 100, 2000),
  };
  if (config.redisClusterNodes?.length) {
    return { type: 'cluster', nodes: config.redisClusterNodes, options: { redisOptions: options, clusterRetryStrategy: options.retryStrategy } };
  }
  if (config.redisSentinels?.length) {
    return {
      type: 'single',
      options: {
        ...options,
        sentinels: config.redisSentinels,
        name: config.redisSentinelName ?? DEFAULT_REDIS_SENTINEL_NAME,
        // Leave a frozen master as soon as the sentinels announce its successor (+switch-master), not
        // when it answers again; and leave a demoted one at its first READONLY reply.
        failoverDetector: true,
        reconnectOnError: (error: Error) => error.message.startsWith('READONLY'),
        sentinelRetryStrategy: options.retryStrategy,
      },
    };
  }
  return { type: 'single', url: config.redisUrl, options };
}

/**
 * The stores the library needs, as the token command line wires them: the Redis connection and the
 * TypeORM data source, with the library's migration applied on start.
 */
export function storeModules(
  config: ApiTokenStoresEnv,
  { retryAttempts = DEFAULT_DATABASE_ATTEMPTS, typeorm }: ApiTokenStoresOptions = {},
): DynamicModule[] {
  return [
    RedisModule.forRoot(redisModuleOptions(config)),
    TypeOrmModule.forRoot({
      type: 'postgres',
      url: config.databaseUrl,
      migrations: API_TOKEN_MIGRATIONS,
      migrationsRun: true,
      // pg waits forever by default: bound connecting (and waiting for a pooled client) and each query.
      connectTimeoutMS: 2000,
      retryAttempts: config.databaseRetryAttempts ?? retryAttempts,
      retryDelay: 1000,
      toRetry: isTransientDatabaseError,
      ...typeorm,
      extra: { query_timeout: 5000, ...typeorm?.extra },
    }),
  ];
}

/**
 * `RedisModule` and `TypeOrmModule` (with the library's migration) configured from the same
 * environment as the package's `bin`: `DATABASE_URL`, `DATABASE_RETRY_ATTEMPTS`, `REDIS_URL`,
 * `REDIS_CLUSTER_NODES` (which wins over `REDIS_URL`). For applications that want their stores where
 * the command line finds them.
 */
export function apiTokenStoresFromEnv(env: NodeJS.ProcessEnv = process.env, options?: ApiTokenStoresOptions): DynamicModule[] {
  return storeModules(readStoresEnv(env), options);
}
