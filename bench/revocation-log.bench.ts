import { ApiTokenAuthenticator, ApiTokenService } from '../libs/api-token/src';
import { ApiTokenRevocationLogService } from '../libs/api-token/src/tokens/revocation-log.service';
import type { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldToIo, setTimeout as sleep } from 'node:timers/promises';
import { TestAppModule } from '../test/app/app.module';
import { createTestDatabase } from '../test/support/database';
import { type BenchRedisOptions, PG_ADMIN_URL, benchRedis, closeBenchApps, deleteTokenKeys } from './bench.infra';
import { quantile } from './bench.load';

/** Where the revocation-log benchmark runs; every field has a default (env `BENCH_PG_URL`, `BENCH_REDIS_*`). */
export interface RevocationLogBenchOptions extends BenchRedisOptions {
  /** Revocations timed from A's `revoke()` until B, which hears nothing from A, refuses the token. */
  samples?: number;
  /** Seconds the poll's cost is measured, idle and then under load. */
  seconds?: number;
  pgAdminUrl?: string;
  /** `redisDb` is A's database index; B uses the next one (so it shares neither keys nor the pub/sub channel). */
}

export interface RevocationLogBenchResult {
  pollIntervalMs: number;
  /** Statements the idle instance ran per second (the poll, and its prune once a minute). */
  idleQueriesPerSecond: number;
  /** The same while it answered `authenticationsPerSecond` authentications of a cached token. */
  loadedQueriesPerSecond: number;
  authenticationsPerSecond: number;
  /** One read of the log with nothing new, p50. */
  pollP50Ms: number;
  /** From the start of `revoke()` on A until B refuses the token it held in its in-process cache, with no pub/sub and a Redis that kept the entry. */
  refusedP50Ms: number;
  refusedMaxMs: number;
  samples: number;
  markdown: string;
}

/**
 * The revocation log's cost and its bound. The cost: statements one instance runs against PostgreSQL
 * per second (`pg_stat_database.xact_commit` of a database only it uses), idle and while it serves a
 * cached token as fast as it can; the difference is what the request path costs PostgreSQL (nothing).
 * The bound: instance B uses another Redis database than A, so it neither hears A's messages nor sees
 * A's deletes, like an instance whose Redis lost the revocation; only the log tells it.
 */
export async function runRevocationLogBench(options: RevocationLogBenchOptions = {}): Promise<RevocationLogBenchResult> {
  const samples = options.samples ?? Number(process.env.BENCH_REVOCATION_LOG_SAMPLES ?? 20);
  const seconds = options.seconds ?? Number(process.env.BENCH_SECONDS ?? 10);
  const redis = benchRedis(options, 10);
  const database = await createTestDatabase(options.pgAdminUrl ?? PG_ADMIN_URL, 'api_token_bench_revocation_log');
  const databaseUrl = database.url;
  const commits = async () =>
    Number((await database.query('SELECT xact_commit AS n FROM pg_stat_database WHERE datname = $1', [database.name]))[0].n);

  const apps: INestApplicationContext[] = [];
  const created: string[] = [];
  try {
    for (const redisDb of [redis.db, redis.db + 1]) {
      // No usage flush: its statements would be counted as the poll's.
      const config = { stores: { databaseUrl, redisUrl: redis.url(redisDb) }, apiToken: { flushCron: false as const } };
      const app = await NestFactory.create(TestAppModule.forRoot(config), { logger: ['error', 'warn'] });
      apps.push(await app.init());
    }
    const [a, b] = apps;
    const pollIntervalMs = 1000;
    const hot = await a.get(ApiTokenService).create({ scope: 'app' });
    created.push(hot.token);
    const authB = b.get(ApiTokenAuthenticator);
    if (!(await authB.authenticate(hot.token, 'app'))) throw new Error('the hot token was refused');

    // pg_stat_database is updated by each backend at most once a second: long windows, and a pause before reading.
    const settle = () => sleep(1500);
    const closeA = a.close();
    apps.shift();
    await closeA;
    await settle();
    let before = await commits();
    await sleep(seconds * 1000);
    await settle();
    const idleQueriesPerSecond = ((await commits()) - before) / seconds;

    before = await commits();
    let authentications = 0;
    const until = performance.now() + seconds * 1000;
    while (performance.now() < until) {
      for (let i = 0; i < 1000; i++) if (authB.authenticateLocal(hot.token, 'app')) authentications++;
      // The in-process entry expires every localCacheTtlMs: the request path reads Redis again.
      if ((await authB.authenticate(hot.token, 'app')) === null) throw new Error('the hot token was refused');
      await yieldToIo();
    }
    await settle();
    const loadedQueriesPerSecond = ((await commits()) - before) / seconds;

    const log = b.get(ApiTokenRevocationLogService);
    const polls: number[] = [];
    for (let i = 0; i < 200; i++) {
      const start = performance.now();
      await log.poll();
      polls.push(performance.now() - start);
    }
    polls.sort((x, y) => x - y);

    const a2 = await NestFactory.create(TestAppModule.forRoot({ stores: { databaseUrl, redisUrl: redis.url() }, apiToken: { flushCron: false } }), {
      logger: ['error', 'warn'],
    });
    apps.unshift(await a2.init());
    const tokens = a2.get(ApiTokenService);
    const refused: number[] = [];
    for (let i = 0; i < samples; i++) {
      const { token } = await tokens.create({ scope: 'app' });
      created.push(token);
      if (!(await authB.authenticate(token, 'app')) || !authB.authenticateLocal(token, 'app')) throw new Error('B does not hold the token in its in-process cache');
      // Not in step with B's poll: each sample lands anywhere in the interval.
      await sleep(Math.random() * pollIntervalMs);
      const start = performance.now();
      await tokens.revoke(token);
      while (await authB.authenticate(token, 'app')) await sleep(1);
      refused.push(performance.now() - start);
    }
    refused.sort((x, y) => x - y);

    const result = {
      pollIntervalMs,
      idleQueriesPerSecond,
      loadedQueriesPerSecond,
      authenticationsPerSecond: authentications / seconds,
      pollP50Ms: quantile(polls, 0.5),
      refusedP50Ms: quantile(refused, 0.5),
      refusedMaxMs: refused[refused.length - 1],
      samples,
    };
    const f = (n: number, digits = 2) => n.toFixed(digits);
    const markdown = [
      `One instance, default \`revocationPollIntervalMs\` (${pollIntervalMs} ms), its own database (statements counted by \`pg_stat_database.xact_commit\`), ${seconds} s per figure.`,
      `Then instance B on another Redis database than A (no pub/sub from A, its Redis keeps the entry), holding the token in its in-process cache; A revokes; ${samples} samples.`,
      '',
      '| figure | value |',
      '|---|---|',
      `| statements per second, idle | ${f(result.idleQueriesPerSecond)} |`,
      `| statements per second, serving ${f(result.authenticationsPerSecond / 1e6)} M cached authentications per second | ${f(result.loadedQueriesPerSecond)} |`,
      `| one read of the log with nothing new, p50 | ${f(result.pollP50Ms)} ms |`,
      `| revoke() start → refused on B through the log only, p50 | ${f(result.refusedP50Ms, 0)} ms |`,
      `| revoke() start → refused on B through the log only, max | ${f(result.refusedMaxMs, 0)} ms |`,
    ].join('\n');
    return { ...result, markdown };
  } finally {
    await closeBenchApps(apps);
    for (const redisDb of [redis.db, redis.db + 1]) await deleteTokenKeys(redis.url(redisDb), created);
    await database.drop();
  }
}

if (require.main === module) {
  runRevocationLogBench()
    .then((result) => {
      console.log(result.markdown);
      const { markdown: _markdown, ...figures } = result;
      console.log(JSON.stringify(figures));
    })
    .catch((error: unknown) => {
      console.error(error);
      process.exitCode = 1;
    });
}
