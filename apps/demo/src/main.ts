import { ApiTokenHealthIndicator, ApiTokenRepository, ApiTokenService } from 'nestjs-api-token';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module';
import { type DemoConfig, loadDemoConfig } from './demo.config';
import { DemoLogger, describeDatabaseFailure, describeRedisDown } from './demo.startup';

/** The app id the demo's own token belongs to. */
export const DEMO_APP_ID = '00000000-0000-4000-8000-00000000de70';

/** Milliseconds the demo waits for Redis's PING at start before it says Redis is down. */
const REDIS_CHECK_MS = 2000;

async function bootstrap(config: DemoConfig): Promise<void> {
  const logger = new DemoLogger({ holdRedisWarnings: true });
  // abortOnError: false hands the start-up error to the catch below instead of exiting with Nest's dump of it.
  const app = await NestFactory.create(AppModule.forRoot(config), { logger, abortOnError: false });
  app.enableShutdownHooks();
  await app.listen(config.port);
  const redis = await app.get(ApiTokenHealthIndicator).checkRedis('redis', { timeoutMs: REDIS_CHECK_MS });
  const redisDown = redis.redis.status === 'down';
  if (redisDown) process.stderr.write(`${describeRedisDown(config.redisUrl, Boolean(config.redisClusterNodes?.length))}\n`);
  const repository = app.get(ApiTokenRepository);
  const [existing] = await repository.list({ appId: DEMO_APP_ID, type: 'app' });
  const token = existing?.token ?? (await app.get(ApiTokenService).create({ scope: 'app', appId: DEMO_APP_ID })).token;
  process.stdout.write(
    `\nDemo listening on port ${config.port}, with ${existing ? 'its' : 'a newly created'} demo token; try:\n\n` +
      `  curl -H 'Authorization: Bearer ${token}' http://localhost:${config.port}/app/whoami\n\n`,
  );
  logger.startupDone(redisDown);
}

function start(): void {
  let config: DemoConfig;
  try {
    config = loadDemoConfig();
  } catch (error) {
    fail(error);
  }
  bootstrap(config).catch((error: unknown) => fail(describeDatabaseFailure(error, config.databaseUrl) ?? error));
}

function fail(error: unknown): never {
  process.stderr.write(`Demo cannot start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}

start();
