import { ApiTokenAuthenticator } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { formatNaiveUtc } from '../libs/api-token/src/store/api-token.record';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { performance } from 'node:perf_hooks';
import { TestAppModule } from '../test/app/app.module';
import { type BenchRedisOptions, Cleanup, benchRedis, closeBenchApps, createDatabase, deleteTokenKeys } from './bench.infra';
import { median } from './bench.load';

/** Where the expiry benchmark runs; every field has a default (env `BENCH_REDIS_*`, `BENCH_EXPIRY_*`). */
export interface ExpiryBenchOptions extends BenchRedisOptions {
  rounds?: number;
  callsPerRound?: number;
}

export interface ExpiryBenchResult {
  rounds: number;
  callsPerRound: number;
  /** Median over the rounds of the nanoseconds per `authenticateLocal` call that hits the in-process cache. */
  withoutExpiryNs: number;
  withExpiryNs: number;
  markdown: string;
}

/**
 * The in-process cost of authenticating a hot token (an L1 hit, `authenticateLocal`) for a token
 * without an expiry and one with an expiry, side by side in one process, in alternating rounds (so
 * drift in the machine's load falls on both). The rows are inserted through the repository, so the
 * same file measures a version of the library from before expiry existed.
 */
export async function runExpiryBench(options: ExpiryBenchOptions = {}): Promise<ExpiryBenchResult> {
  const rounds = options.rounds ?? Number(process.env.BENCH_EXPIRY_ROUNDS ?? 20);
  const callsPerRound = options.callsPerRound ?? Number(process.env.BENCH_EXPIRY_CALLS ?? 200_000);
  const redisUrl = benchRedis(options, 10).url();
  const cleanup = new Cleanup();
  const databaseUrl = await createDatabase(cleanup);
  let app: INestApplicationContext | undefined;
  const tokens: string[] = [];
  try {
    // An in-process cache entry that outlives the run: every measured call is an L1 hit (the in-process
    // TTL may not exceed the Redis one, so both are an hour).
    const apiToken = { localCacheTtlMs: 3_600_000, cacheTtlSeconds: 3600 };
    app = await (await NestFactory.create(TestAppModule.forRoot({ stores: { databaseUrl, redisUrl }, apiToken }), { logger: ['error', 'warn'] })).init();
    const repository = app.get(ApiTokenRepository);
    const auth = app.get(ApiTokenAuthenticator);
    const inADay = formatNaiveUtc(new Date(Date.now() + 86_400_000));
    const plain = (await repository.insert({ token: generateApiToken('app'), type: 'app' })).token;
    const expiring = (await repository.insert({ token: generateApiToken('app'), type: 'app', expiresAt: inADay })).token;
    tokens.push(plain, expiring);
    for (const token of tokens) {
      if (!(await auth.authenticate(token, 'app')) || !auth.authenticateLocal(token, 'app')) throw new Error('the token is not an in-process hit');
    }
    const measure = (token: string): number => {
      let accepted = 0;
      const started = performance.now();
      for (let i = 0; i < callsPerRound; i++) if (auth.authenticateLocal(token, 'app')) accepted++;
      const ns = ((performance.now() - started) * 1e6) / callsPerRound;
      if (accepted !== callsPerRound) throw new Error('a measured call was not an in-process hit');
      return ns;
    };
    measure(plain);
    measure(expiring);
    const samples: [number[], number[]] = [[], []];
    for (let round = 0; round < rounds; round++) {
      // Alternate which goes first, so neither always follows the other.
      if (round % 2 === 0) {
        samples[0].push(measure(plain));
        samples[1].push(measure(expiring));
      } else {
        samples[1].push(measure(expiring));
        samples[0].push(measure(plain));
      }
    }
    const result = { rounds, callsPerRound, withoutExpiryNs: median(samples[0]), withExpiryNs: median(samples[1]) };
    const ns = (n: number) => `${n.toFixed(0)} ns`;
    const spread = (values: number[]) => `${ns(Math.min(...values))} – ${ns(Math.max(...values))}`;
    const markdown = [
      `\`authenticateLocal()\` of a hot token (in-process cache hit), ${rounds} alternating rounds of ${callsPerRound} calls, one process.`,
      '',
      '| token | median per call | range over rounds |',
      '|---|---|---|',
      `| without expiry | ${ns(result.withoutExpiryNs)} | ${spread(samples[0])} |`,
      `| with an expiry (a day ahead) | ${ns(result.withExpiryNs)} | ${spread(samples[1])} |`,
    ].join('\n');
    return { ...result, markdown };
  } finally {
    if (app) await closeBenchApps([app]);
    await deleteTokenKeys(redisUrl, tokens);
    await cleanup.run();
  }
}

if (require.main === module) {
  runExpiryBench()
    .then((result) => {
      console.log(result.markdown);
      console.log(JSON.stringify({ rounds: result.rounds, callsPerRound: result.callsPerRound, withoutExpiryNs: result.withoutExpiryNs, withExpiryNs: result.withExpiryNs }));
    })
    .catch((error: unknown) => {
      console.error(error);
      process.exitCode = 1;
    });
}
