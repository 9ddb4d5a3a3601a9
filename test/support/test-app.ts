import type { ApiTokenModuleOptions } from '../../libs/api-token/src';
import { getRedisConnectionToken } from '@nestjs-modules/ioredis';
import type { INestApplication, LoggerService, LogLevel } from '@nestjs/common';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import type Redis from 'ioredis';
import { type TestAppConfig, TestAppModule } from '../app/app.module';
import { QueryCounter } from './query-counter';
import { REDIS_CLUSTER_NODES, REDIS_TEST_URL } from './servers';

export interface TestAppOptions {
  databaseUrl: string;
  redisUrl?: string;
  /** Sentinels naming the master (`mymaster`) to use instead of `redisUrl`. */
  redisSentinels?: { host: string; port: number }[];
  adapter?: 'express' | 'fastify';
  apiToken?: ApiTokenModuleOptions;
  flushCron?: string;
  counter?: QueryCounter;
  typeorm?: TestAppConfig['typeorm'];
  /** Nest's logger for the app; default: off. */
  logger?: LoggerService | LogLevel[] | false;
  /** The admin API's options (default: the demo's). */
  admin?: TestAppConfig['admin'];
  /** Runs before `init()`: routes added later would come after the adapter's not-found handler (the demo's `/docs`). */
  beforeInit?: (app: INestApplication) => void;
}

/** The test application on the test's own database and Redis database, ready to take requests. */
export async function createTestApp(options: TestAppOptions): Promise<INestApplication> {
  const config: TestAppConfig = {
    stores: {
      databaseUrl: options.databaseUrl,
      redisUrl: options.redisUrl ?? REDIS_TEST_URL,
      redisClusterNodes: options.redisUrl || options.redisSentinels ? undefined : REDIS_CLUSTER_NODES,
      redisSentinels: options.redisSentinels,
    },
    apiToken: { flushCron: options.flushCron, ...options.apiToken },
    typeorm: { ...options.counter?.typeorm, ...options.typeorm },
    admin: options.admin,
  };
  const logger = options.logger ?? false;
  const moduleRef = await Test.createTestingModule({ imports: [TestAppModule.forRoot(config)] }).compile();
  if (options.adapter === 'fastify') {
    const app = moduleRef.createNestApplication<NestFastifyApplication>(new FastifyAdapter(), { logger });
    options.beforeInit?.(app);
    await app.init();
    await app.getHttpAdapter().getInstance().ready();
    return quitRedisOnClose(app);
  }
  const app = moduleRef.createNestApplication({ logger });
  options.beforeInit?.(app);
  await app.init();
  return quitRedisOnClose(app);
}

/**
 * `@nestjs-modules/ioredis` keeps its connection tokens in a static Set that the first application
 * to close empties, so a second application in the same process would leave its connection open.
 */
function quitRedisOnClose<T extends INestApplication>(app: T): T {
  const redis = app.get<Redis>(getRedisConnectionToken());
  const close = app.close.bind(app);
  app.close = async () => {
    await close();
    if (redis.status !== 'end') await redis.quit().catch(() => redis.disconnect());
    // quit() leaves a Sentinel client's failover-detector connections open; disconnect() closes them.
    redis.disconnect();
  };
  return app;
}
