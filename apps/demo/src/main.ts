import { ApiTokenHealthIndicator, ApiTokenService } from 'nestjs-api-token';
import { ApiTokenStartupLogger, describeDatabaseFailure, describeRedisDown } from 'nestjs-api-token/env';
import { NestFactory } from '@nestjs/core';
import { serveApiDocs } from './api.docs';
import { AppModule } from './app.module';
import { type DemoConfig, loadDemoConfig } from './demo.settings';
import { demoTokenNotice } from './demo.token';

/** Milliseconds the demo waits for Redis's PING at start before it says Redis is down. */
const REDIS_CHECK_MS = 2000;

async function bootstrap(config: DemoConfig): Promise<void> {
  const logger = new ApiTokenStartupLogger({ holdRedisWarnings: true });
  // abortOnError: false hands the start-up error to the catch below instead of exiting with Nest's dump of it.
  const app = await NestFactory.create(AppModule.forRoot(config), { logger, abortOnError: false });
  app.enableShutdownHooks();
  serveApiDocs(app);
  await app.listen(config.port);
  const redis = await app.get(ApiTokenHealthIndicator).checkRedis('redis', { timeoutMs: REDIS_CHECK_MS });
  const redisDown = redis.redis.status === 'down';
  if (redisDown) process.stderr.write(`${describeRedisDown(process.env, 'the demo')}\n`);
  process.stdout.write(await demoTokenNotice(app.get(ApiTokenService), config.port));
  logger.startupDone(redisDown);
}

function start(): void {
  let config: DemoConfig;
  try {
    config = loadDemoConfig();
  } catch (error) {
    fail(error);
  }
  bootstrap(config).catch((error: unknown) => fail(describeDatabaseFailure(error) ?? error));
}

function fail(error: unknown): never {
  process.stderr.write(`Demo cannot start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}

start();
