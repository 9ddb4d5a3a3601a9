import { API_TOKEN_MIGRATIONS } from 'nestjs-api-token';
import { RedisModule, type RedisModuleOptions } from '@nestjs-modules/ioredis';
import type { DynamicModule } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { DEFAULT_REDIS_SENTINEL_NAME, type DemoConfig } from './demo.config';

/**
 * The `@nestjs-modules/ioredis` options for this config: a Cluster when nodes are given, else the
 * master the sentinels name when sentinels are given, else one node.
 */
export function redisModuleOptions(
  config: Pick<DemoConfig, 'redisUrl' | 'redisClusterNodes' | 'redisSentinels' | 'redisSentinelName'>,
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
 * The stores the library needs, as the demo and the token CLI wire them: the Redis connection and the
 * TypeORM data source, with the library's migration applied on start. `retryAttempts` is TypeORM's
 * connection retry count (the CLI wants none).
 */
export function storeModules(config: DemoConfig, { retryAttempts = 9 } = {}): DynamicModule[] {
  return [
    RedisModule.forRoot(redisModuleOptions(config)),
    TypeOrmModule.forRoot({
      type: 'postgres',
      url: config.databaseUrl,
      migrations: API_TOKEN_MIGRATIONS,
      migrationsRun: true,
      // pg waits forever by default: bound connecting (and waiting for a pooled client) and each query.
      connectTimeoutMS: 2000,
      retryAttempts,
      ...config.typeorm,
      extra: { query_timeout: 5000, ...config.typeorm?.extra },
    }),
  ];
}
