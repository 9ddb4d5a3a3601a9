import 'reflect-metadata';
import { type INestApplication, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import Redis from 'ioredis';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Client } from 'pg';
import { ApiTokenMetrics, type ApiTokenModuleOptions } from '../../libs/api-token/src';
import { ApiTokenRepository } from '../../libs/api-token/src/store/api-token.repository';
import { ApiTokenUsageRecorder } from '../../libs/api-token/src/usage/usage.recorder';
import { TestAppModule } from '../../test/app/app.module';
import { requiredEnv, stopServer } from '../server.process';

/**
 * One soak instance (a child process of bench/soak/soak.run.ts): the test application (the demo's
 * routes) with the usage flush every 10 s. It pushes its figures to the parent over IPC every
 * `SOAK_SAMPLE_MS` (round trips to Redis and PostgreSQL, RSS, heap after a full GC, event-loop
 * delay), so reading them costs no HTTP request, Redis command or query. Run with --expose-gc.
 */

/** What the instance reports each sample. */
export interface InstanceSample {
  type: 'sample';
  t: number;
  rssBytes: number;
  heapBytes: number;
  redisCommands: number;
  pgStatements: number;
  /** Event-loop delay p99 over the last sample interval and over the process's life, ms. */
  loopP99Ms: number;
  loopLifeP99Ms: number;
  /** The library's own count of Redis outages (times it took Redis as down) and whether Redis is up now. */
  redisOutages: number;
  redisUp: boolean;
  /** Uses the usage flush took from Redis and could not write (0 from 0.3.0, issue 29: docs/usage-flush.md). */
  flushUsesLost: number;
}

/** Messages from the parent. `arm-kill-in-flush`: the next page the usage flush writes kills this process (SIGKILL) while its UPDATE is on the wire. */
export type InstanceCommand = { command: 'arm-kill-in-flush' } | { command: 'flush-pending' } | { command: 'stop' };

const counts = { redis: 0, pg: 0 };
// Every ioredis client of the process (the application's, the subscriber, locks) sends through here.
const sendCommand = Redis.prototype.sendCommand;
Redis.prototype.sendCommand = function (this: Redis, ...args: Parameters<Redis['sendCommand']>) {
  counts.redis++;
  return sendCommand.apply(this, args);
};

/** A pg Client that counts what it sends (installed through TypeORM's `extra.Client`). */
class CountingClient extends Client {
  override query(...args: unknown[]): never {
    counts.pg++;
    return (Client.prototype.query as (...a: unknown[]) => never).apply(this, args);
  }
}

let killArmed = false;
// The flush writes each page with one updateLastUsed(); an armed instance dies with that UPDATE sent
// and not answered, which is the case the README's "killed mid-run (during an UPDATE)" describes.
const updateLastUsed = ApiTokenRepository.prototype.updateLastUsed;
ApiTokenRepository.prototype.updateLastUsed = function (this: ApiTokenRepository, ...args: Parameters<ApiTokenRepository['updateLastUsed']>) {
  const result = updateLastUsed.apply(this, args);
  if (killArmed) {
    process.send?.({ type: 'dying-in-flush' });
    setImmediate(() => process.kill(process.pid, 'SIGKILL'));
  }
  return result;
};

async function main(): Promise<void> {
  const sentinels = process.env.SOAK_REDIS_SENTINELS;
  const apiToken: ApiTokenModuleOptions = {
    flushCron: process.env.SOAK_FLUSH_CRON ?? '*/10 * * * * *',
    rateLimitMode: (process.env.SOAK_RATE_LIMIT_MODE ?? 'approximate') as 'approximate' | 'exact',
  };
  @Module({
    imports: [
      TestAppModule.forRoot({
        stores: {
          databaseUrl: requiredEnv('DATABASE_URL', 'soak instance'),
          redisUrl: process.env.REDIS_URL ?? '',
          redisSentinels: sentinels ? sentinels.split(',').map((n) => ({ host: n.split(':')[0], port: Number(n.split(':')[1]) })) : undefined,
          redisSentinelName: process.env.REDIS_SENTINEL_NAME,
        },
        apiToken,
        typeorm: { extra: { Client: CountingClient, max: 10 } },
      }),
    ],
  })
  class SoakModule {}
  const app = await NestFactory.create(SoakModule, { logger: ['error', 'warn'] });
  await app.listen(Number(process.env.PORT), '127.0.0.1');
  startSampling(Number(process.env.SOAK_SAMPLE_MS ?? 5000), app.get(ApiTokenMetrics));
  process.on('message', (message: InstanceCommand) => void handle(app, message));
  process.on('disconnect', () => void stopServer(app));
  process.send?.({ type: 'ready' });
}

function startSampling(intervalMs: number, metrics: ApiTokenMetrics): void {
  const interval = monitorEventLoopDelay({ resolution: 10 });
  const life = monitorEventLoopDelay({ resolution: 10 });
  interval.enable();
  life.enable();
  const gc = (globalThis as { gc?: () => void }).gc;
  setInterval(() => {
    gc?.();
    const memory = process.memoryUsage();
    const sample: Omit<InstanceSample, 'redisOutages' | 'redisUp' | 'flushUsesLost'> = {
      type: 'sample',
      t: Date.now(),
      rssBytes: memory.rss,
      heapBytes: memory.heapUsed,
      redisCommands: counts.redis,
      pgStatements: counts.pg,
      loopP99Ms: interval.percentile(99) / 1e6,
      loopLifeP99Ms: life.percentile(99) / 1e6,
    };
    interval.reset();
    const snapshot = metrics.snapshot();
    process.send?.({ ...sample, redisOutages: snapshot.redis.outages, redisUp: snapshot.redis.up, flushUsesLost: snapshot.flush.usesLost });
  }, intervalMs).unref();
}

async function handle(app: INestApplication, message: InstanceCommand): Promise<void> {
  switch (message.command) {
    case 'arm-kill-in-flush':
      killArmed = true;
      return;
    case 'flush-pending':
      await app.get(ApiTokenUsageRecorder).flushPending();
      process.send?.({ type: 'flushed' });
      return;
    case 'stop':
      await stopServer(app);
  }
}



main().catch((error: unknown) => {
  console.error('soak instance failed to start:', (error as Error).message);
  process.exit(1);
});
