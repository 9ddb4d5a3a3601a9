import { ApiTokenAuthenticator, ApiTokenService } from '../libs/api-token/src';
import type { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldToIo } from 'node:timers/promises';
import { TestAppModule } from '../test/app/app.module';
import { createTestDatabase } from '../test/support/database';
import { type BenchRedisOptions, PG_ADMIN_URL, benchRedis, closeBenchApps, deleteTokenKeys } from './bench.infra';
import { quantile } from './bench.load';

/** Where the revocation benchmark runs; every field has a default (env `BENCH_PG_URL`, `BENCH_REDIS_*`). */
export interface RevocationBenchOptions extends BenchRedisOptions {
  samples?: number;
  pgAdminUrl?: string;
}

export interface RevocationBenchResult {
  samples: number;
  /** From the start of `revoke()` on instance A until instance B refuses the token (B had it in its in-process cache). */
  p50Ms: number;
  p95Ms: number;
  maxMs: number;
  /** How long `revoke()` itself takes on A (delete, generation, Redis, publish). */
  revokeP50Ms: number;
  markdown: string;
}

/**
 * Two instances of the test application (one process, one database, one Redis): A revokes a token
 * that B holds in its in-process cache, and B is polled until it refuses the token.
 */
export async function runRevocationBench(options: RevocationBenchOptions = {}): Promise<RevocationBenchResult> {
  const samples = options.samples ?? Number(process.env.BENCH_REVOCATION_SAMPLES ?? 200);
  const redis = benchRedis(options, 9);
  const redisUrl = redis.url();
  const database = await createTestDatabase(options.pgAdminUrl ?? PG_ADMIN_URL, 'api_token_bench_revocation');
  const databaseUrl = database.url;
  const apps: INestApplicationContext[] = [];
  const created: string[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const app = await NestFactory.create(TestAppModule.forRoot({ stores: { databaseUrl, redisUrl } }), { logger: ['error', 'warn'] });
      apps.push(await app.init());
    }
    const [a, b] = apps;
    const tokens = a.get(ApiTokenService);
    const authA = a.get(ApiTokenAuthenticator);
    const authB = b.get(ApiTokenAuthenticator);
    const propagation: number[] = [];
    const revoking: number[] = [];
    for (let i = 0; i < samples; i++) {
      const { token } = await tokens.create({ scope: 'app' });
      created.push(token);
      if (!(await authA.authenticate(token, 'app')) || !(await authB.authenticate(token, 'app'))) throw new Error('a new token was refused');
      if (!authB.authenticateLocal(token, 'app')) throw new Error('instance B does not hold the token in its in-process cache');
      const start = performance.now();
      const revoked = tokens.revoke(token).then(() => performance.now());
      while (await authB.authenticate(token, 'app')) await yieldToIo();
      propagation.push(performance.now() - start);
      revoking.push((await revoked) - start);
    }
    propagation.sort((x, y) => x - y);
    revoking.sort((x, y) => x - y);
    const result = {
      samples,
      p50Ms: quantile(propagation, 0.5),
      p95Ms: quantile(propagation, 0.95),
      maxMs: propagation[propagation.length - 1],
      revokeP50Ms: quantile(revoking, 0.5),
    };
    const ms = (n: number) => `${n.toFixed(2)} ms`;
    const markdown = [
      `Two instances of the demo in one process, sharing PostgreSQL and Redis db ${redis.db}; instance B holds the token in its in-process cache;`,
      `A calls \`revoke()\` and B is polled until it refuses the token. ${samples} samples.`,
      '',
      '| figure | value |',
      '|---|---|',
      `| revoke() start → refused on B, p50 | ${ms(result.p50Ms)} |`,
      `| revoke() start → refused on B, p95 | ${ms(result.p95Ms)} |`,
      `| revoke() start → refused on B, max | ${ms(result.maxMs)} |`,
      `| revoke() duration on A, p50 | ${ms(result.revokeP50Ms)} |`,
    ].join('\n');
    return { ...result, markdown };
  } finally {
    await closeBenchApps(apps);
    await deleteTokenKeys(redisUrl, created);
    await database.drop();
  }
}

if (require.main === module) {
  runRevocationBench()
    .then((result) => {
      console.log(result.markdown);
      console.log(JSON.stringify({ samples: result.samples, p50Ms: result.p50Ms, p95Ms: result.p95Ms, maxMs: result.maxMs, revokeP50Ms: result.revokeP50Ms }));
    })
    .catch((error: unknown) => {
      console.error(error);
      process.exitCode = 1;
    });
}
