import 'reflect-metadata';
import { ApiTokenService, type ApiTokenModuleOptions, type AuthenticatedApiToken, CurrentApiToken } from '../libs/api-token/src';
import { ApiTokenRateLimiter } from '../libs/api-token/src/limits/rate-limiter.service';
import { getRedisConnectionToken } from '@nestjs-modules/ioredis';
import { type CanActivate, Controller, type ExecutionContext, Get, type INestApplication, Injectable, Module, UseGuards } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import Redis from 'ioredis';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TestAppModule } from '../test/app/app.module';
import { Cleanup, createDatabase, startRedis } from './bench.infra';
import { type LoadResult, load, median } from './bench.load';

/** Where the rate-limit benchmark runs; without a Redis it starts a private redis-server. */
export interface RateLimitBenchOptions {
  redisHost?: string;
  redisPort?: number;
  redisDb?: number;
  /** Seconds per load round (env BENCH_SECONDS, default 3). */
  seconds?: number;
  /** Alternating rounds per comparison (env BENCH_ROUNDS, default 3). */
  rounds?: number;
}

export interface RateLimitBenchResult {
  hotPath: { mode: string; rpsRatioToNoop: number; rateLimitPerRequest: number; redisPerRequest: number; rps: number; noopRps: number }[];
  overshoot: { mode: string; limit: number; accepted: number; offeredRps: number; syncIntervalMs: number; dMs: number; bound: number }[];
  markdown: string;
}

// Round trips this process sends to Redis, by every client (the applications' own and their duplicates):
// all of them, and the rate limiter's (its script goes as EVALSHA, or EVAL once when Redis lacks it).
let redisSent = 0;
let rateLimitSent = 0;
const sendCommand = Redis.prototype.sendCommand;
Redis.prototype.sendCommand = function (this: Redis, ...args: Parameters<Redis['sendCommand']>) {
  redisSent++;
  if (args[0].name === 'evalsha' || args[0].name === 'eval') rateLimitSent++;
  return sendCommand.apply(this, args);
};

const OPEN: AuthenticatedApiToken = { id: '00000000-0000-4000-8000-000000000000', appId: null, tenantId: null, scope: 'app' };

/** The baseline: a guard that admits every request with a fixed identity (what any Nest guard costs). */
@Injectable()
class DoNothingGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    context.switchToHttp().getRequest<{ apiToken?: AuthenticatedApiToken }>().apiToken = OPEN;
    return true;
  }
}

@Controller('bench')
class NoopController {
  @Get('noop')
  @UseGuards(DoNothingGuard)
  noop(@CurrentApiToken() token: AuthenticatedApiToken): AuthenticatedApiToken {
    return token;
  }
}

/**
 * The hot path of a rate-limited token in both modes (throughput against a do-nothing guard, Redis
 * round trips per request), and the overshoot of two instances sharing one limit, against the
 * README's bound. Servers and load generator share this process (and the machine's cores).
 */
export async function runRateLimitBench(options: RateLimitBenchOptions = {}): Promise<RateLimitBenchResult> {
  const seconds = options.seconds ?? Number(process.env.BENCH_SECONDS ?? 3);
  const rounds = options.rounds ?? Number(process.env.BENCH_ROUNDS ?? 3);
  const cleanup = new Cleanup();
  try {
    let redisUrl: string;
    if (options.redisPort) redisUrl = `redis://${options.redisHost ?? '127.0.0.1'}:${options.redisPort}/${options.redisDb ?? 10}`;
    else redisUrl = (await startRedis(cleanup)).url;
    const databaseUrl = await createDatabase(cleanup);
    const start = async (apiToken: ApiTokenModuleOptions): Promise<{ app: INestApplication; url: string }> => {
      @Module({ imports: [TestAppModule.forRoot({ stores: { databaseUrl, redisUrl }, apiToken: { flushCron: false, ...apiToken } })], controllers: [NoopController] })
      class BenchModule {}
      const app = await NestFactory.create(BenchModule, { logger: ['error', 'warn'] });
      await app.listen(0, '127.0.0.1');
      const connection = app.get<Redis>(getRedisConnectionToken());
      cleanup.add(async () => {
        await app.close();
        if (connection.status !== 'end') connection.disconnect();
      });
      return { app, url: `http://127.0.0.1:${(app.getHttpServer().address() as { port: number }).port}` };
    };

    const hotPath: RateLimitBenchResult['hotPath'] = [];
    for (const mode of ['approximate', 'exact'] as const) {
      const { app, url } = await start({ rateLimitMode: mode });
      // Never reached in a round: the cost of counting, not of refusing.
      const { token } = await app.get(ApiTokenService).create({ scope: 'app', rateLimit: { limit: 2_000_000_000, windowSeconds: 3600 } });
      const limited = (duration: number) => load({ url: `${url}/app/whoami`, connections: 10, duration, authorization: `Bearer ${token}` });
      const noop = (duration: number) => load({ url: `${url}/bench/noop`, connections: 10, duration });
      await limited(1);
      await noop(1);
      const ratios: number[] = [];
      const perRequest: number[] = [];
      const ratePerRequest: number[] = [];
      const rps: number[] = [];
      const noopRps: number[] = [];
      for (let round = 0; round < rounds; round++) {
        const base = await noop(seconds);
        const sentBefore = redisSent;
        const rateBefore = rateLimitSent;
        const run: LoadResult = await limited(seconds);
        await app.get(ApiTokenRateLimiter).flush();
        perRequest.push((redisSent - sentBefore) / run.requests);
        ratePerRequest.push((rateLimitSent - rateBefore) / run.requests);
        ratios.push(run.rps / base.rps);
        rps.push(run.rps);
        noopRps.push(base.rps);
        if (run.other || run.errors) throw new Error(`${mode}: ${run.other + run.errors} requests failed`);
      }
      hotPath.push({
        mode,
        rpsRatioToNoop: median(ratios),
        rateLimitPerRequest: median(ratePerRequest),
        redisPerRequest: median(perRequest),
        rps: median(rps),
        noopRps: median(noopRps),
      });
    }

    const overshoot: RateLimitBenchResult['overshoot'] = [];
    const windowSeconds = 10;
    // Reached within the first second of load, so most of the run measures what gets past it.
    const limit = 300;
    for (const mode of ['approximate', 'exact'] as const) {
      const pair = [await start({ rateLimitMode: mode }), await start({ rateLimitMode: mode })];
      const { token } = await pair[0].app.get(ApiTokenService).create({ scope: 'app', rateLimit: { limit, windowSeconds } });
      // Start just after a window begins, and stay inside it.
      await sleep(windowSeconds * 1000 - (Date.now() % (windowSeconds * 1000)) + 100);
      const runs = await Promise.all(
        pair.map(({ url }) => load({ url: `${url}/app/whoami`, connections: 5, duration: Math.min(seconds, windowSeconds - 3), authorization: `Bearer ${token}` })),
      );
      const accepted = runs.reduce((sum, r) => sum + r.ok, 0);
      const offeredRps = runs.reduce((sum, r) => sum + r.rps, 0);
      const syncIntervalMs = 100;
      const dMs = Math.max(...pair.map(({ app }) => app.get(ApiTokenRateLimiter).longestSyncMs));
      const bound = mode === 'exact' ? limit : limit + Math.min(limit, 2 * offeredRps * ((syncIntervalMs + dMs) / 1000));
      overshoot.push({ mode, limit, accepted, offeredRps, syncIntervalMs, dMs, bound });
    }

    const f = (n: number, digits = 2) => n.toFixed(digits);
    const markdown = [
      '## Rate limits (`bench/rate-limit.bench.ts`)',
      '',
      `Servers (Express) and the load generator (autocannon, 10 connections) in one process; ${rounds} alternating rounds of ${seconds} s, medians.`,
      'A limited token whose limit is never reached; the baseline is a guard that does nothing, on the same server.',
      '',
      '| mode | req/s | do-nothing guard req/s | × do-nothing guard | rate-limit commands / request | all Redis commands / request |',
      '|---|---:|---:|---:|---:|---:|',
      ...hotPath.map(
        (h) => `| ${h.mode} | ${f(h.rps, 0)} | ${f(h.noopRps, 0)} | ${f(h.rpsRatioToNoop)} | ${f(h.rateLimitPerRequest, 4)} | ${f(h.redisPerRequest, 4)} |`,
      ),
      '',
      `Two instances, one token limited to ${limit} per ${windowSeconds} s, both loaded at once inside one window (5 connections each).`,
      'Bound: L + min((N − 1)·L, 2·R·(I + d)), R the offered rate of both, I the reconciliation interval, d the slowest reconciliation seen.',
      '',
      '| mode | limit | accepted | overshoot | offered req/s | I ms | d ms | bound |',
      '|---|---:|---:|---:|---:|---:|---:|---:|',
      ...overshoot.map(
        (o) => `| ${o.mode} | ${o.limit} | ${o.accepted} | ${o.accepted - o.limit} | ${f(o.offeredRps, 0)} | ${o.mode === 'exact' ? '–' : o.syncIntervalMs} | ${o.mode === 'exact' ? '–' : f(o.dMs)} | ${f(o.bound, 0)} |`,
      ),
    ].join('\n');
    writeFileSync(join(__dirname, 'RATE-LIMIT-RESULTS.md'), `${markdown}\n`);
    console.log(markdown);
    return { hotPath, overshoot, markdown };
  } finally {
    await cleanup.run();
  }
}

if (require.main === module) {
  runRateLimitBench().then(
    () => process.exit(0),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
