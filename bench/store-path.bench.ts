import 'reflect-metadata';
import { ApiTokenUsageFlushService } from '../libs/api-token/src';
import { ApiTokenStoreError } from '../libs/api-token/src/api-token.errors';
import { ACTIVE_KEY_TTL_SECONDS } from '../libs/api-token/src/api-token.keys';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { NestFactory } from '@nestjs/core';
import { getDataSourceToken } from '@nestjs/typeorm';
import Redis from 'ioredis';
import { Client, type Pool } from 'pg';
import type { DataSource } from 'typeorm';
import { TestAppModule } from '../test/app/app.module';
import { createTestDatabase } from '../test/support/database';
import { QueryCounter } from '../test/support/query-counter';

/** Settings of {@link runStorePathBench}; each has an environment variable and a default. */
export interface StorePathBenchOptions {
  /** Rows, and active keys per flush. `BENCH_FLUSH_KEYS`, default 100,000. */
  keys?: number;
  /** Alternating flush rounds (one flush on each path), then twice as many lookup rounds. `BENCH_ROUNDS`, default 3. */
  rounds?: number;
  /** Lookups per path per round. `BENCH_LOOKUPS`, default 20,000. */
  lookups?: number;
  /** Lookups in flight at once. `BENCH_CONNECTIONS`, default 10 (the pool's default size). */
  concurrency?: number;
  redisHost?: string;
  redisPort?: number;
  /** A Redis database index that holds no active keys. `BENCH_FLUSH_REDIS_DB`, default 6. */
  redisDb?: number;
  /** `BENCH_PG_URL`, default postgres@127.0.0.1:5432. */
  pgAdminUrl?: string;
}

/** One path's figures, medians over the rounds. */
export interface StorePathFigures {
  flushSeconds: number;
  /** `UPDATE api_tokens` statements per flush (counted at the pg driver). */
  flushStatements: number;
  lookupsPerSecond: number;
  /** This process's user + system CPU per lookup (the client side: pg, TypeORM, the library). */
  cpuMicrosPerLookup: number;
  /** Statements per lookup (counted at the pg driver). */
  statementsPerLookup: number;
}

export interface StorePathBenchResult {
  keys: number;
  rounds: number;
  lookups: number;
  concurrency: number;
  /** 0.3: a connection borrowed through `createQueryRunner()` / `connect()` / `release()`. */
  queryRunner: StorePathFigures;
  /** 0.2: `pool.query` on the pool read from TypeORM's private `driver.master`. */
  pool: StorePathFigures;
  /** Ratios queryRunner / pool, medians of the per-round ratios: flush seconds, lookups/s, CPU per lookup. */
  ratios: { flushSeconds: number; lookupsPerSecond: number; cpuMicrosPerLookup: number };
}

const env = (name: string): number | undefined => (process.env[name] ? Number(process.env[name]) : undefined);
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
type Run = (operation: string, sql: string, params: unknown[]) => Promise<unknown>;

/**
 * The library's statements through the two ways of reaching the DataSource's pool, side by side in
 * one process on one database: 0.3's (a QueryRunner's connection, TypeORM's public API) and 0.2's
 * (`pool.query` on `driver.master`, kept here only to compare). Alternating rounds of one flush of
 * `keys` active keys and `lookups` lookups by token (`findByToken`, random rows), each on both paths.
 */
export async function runStorePathBench(options: StorePathBenchOptions = {}): Promise<StorePathBenchResult> {
  const keys = options.keys ?? env('BENCH_FLUSH_KEYS') ?? 100_000;
  const rounds = options.rounds ?? env('BENCH_ROUNDS') ?? 3;
  const lookups = options.lookups ?? env('BENCH_LOOKUPS') ?? 20_000;
  const concurrency = options.concurrency ?? env('BENCH_CONNECTIONS') ?? 10;
  const redisDb = options.redisDb ?? env('BENCH_FLUSH_REDIS_DB') ?? 6;
  const redisUrl = `redis://${options.redisHost ?? '127.0.0.1'}:${options.redisPort ?? env('BENCH_FLUSH_REDIS_PORT') ?? 6379}/${redisDb}`;
  const pgAdminUrl = options.pgAdminUrl ?? process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  const [, existing] = await redis.scan('0', 'MATCH', 'api_token_active:*', 'COUNT', 10_000);
  if (existing.length) {
    redis.disconnect();
    throw new Error(`Redis database ${redisDb} already holds api_token_active keys; give the benchmark an empty one (BENCH_FLUSH_REDIS_DB)`);
  }
  const database = await createTestDatabase(pgAdminUrl, 'api_token_store_bench');
  const counter = new QueryCounter();
  const token = (i: number) => `app-storebench${String(i).padStart(14, '0')}`;
  try {
    const app = await NestFactory.createApplicationContext(
      TestAppModule.forRoot({ stores: { databaseUrl: database.url, redisUrl }, apiToken: { flushCron: false }, typeorm: counter.typeorm }),
      { logger: ['error', 'warn'] },
    );
    const db = new Client({ connectionString: database.url });
    try {
      await db.connect();
      await db.query(
        `INSERT INTO api_tokens (type, token) SELECT 'app', 'app-storebench' || lpad(i::text, 14, '0') FROM generate_series(1, $1::int) AS i`,
        [keys],
      );
      await db.query('VACUUM ANALYZE api_tokens');

      const repository = app.get(ApiTokenRepository);
      const flush = app.get(ApiTokenUsageFlushService);
      const paths = repository as unknown as { run: Run };
      const queryRunner: Run = paths.run;
      const master = (app.get<DataSource>(getDataSourceToken()).driver as unknown as { master: Pool }).master;
      const pool: Run = async (operation, sql, params) => {
        try {
          return await master.query(sql, params);
        } catch (error) {
          throw new ApiTokenStoreError(operation, error);
        }
      };

      let base = Date.now() - 10 * keys;
      const flushOnce = async () => {
        base += keys + 1_000; // every flush moves every row forward
        for (let start = 1; start <= keys; start += 10_000) {
          const pipeline = redis.pipeline();
          for (let i = start; i < Math.min(start + 10_000, keys + 1); i++) {
            pipeline.set(`api_token_active:app:${token(i)}`, new Date(base + i).toISOString().replace('Z', '000'), 'EX', ACTIVE_KEY_TTL_SECONDS);
          }
          await pipeline.exec();
        }
        counter.reset();
        const started = performance.now();
        let updated = 0;
        for (let stats = await flush.flushNow(); stats && stats.taken > 0; stats = await flush.flushNow()) updated += stats.updated;
        const seconds = (performance.now() - started) / 1000;
        if (updated !== keys) throw new Error(`flush updated ${updated} rows of ${keys}`);
        return { seconds, statements: counter.count(/^\s*UPDATE api_tokens/) };
      };
      const lookupMany = async () => {
        counter.reset();
        let next = 0;
        const cpu = process.cpuUsage();
        const started = performance.now();
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (next < lookups) {
              next++;
              const found = await repository.findByToken(token(1 + Math.floor(Math.random() * keys)), 'app');
              if (!found) throw new Error('a seeded token was not found');
            }
          }),
        );
        const seconds = (performance.now() - started) / 1000;
        const used = process.cpuUsage(cpu);
        return { perSecond: lookups / seconds, cpuMicros: (used.user + used.system) / lookups, statements: counter.count() / lookups };
      };

      const flushes = { queryRunner: [] as { seconds: number; statements: number }[], pool: [] as { seconds: number; statements: number }[] };
      const looks = { queryRunner: [] as { perSecond: number; cpuMicros: number; statements: number }[], pool: [] as { perSecond: number; cpuMicros: number; statements: number }[] };
      // Alternate which path goes first, so neither always meets a warmer cache or the other's garbage.
      const orderOf = (round: number) => (round % 2 === 0 ? (['queryRunner', 'pool'] as const) : (['pool', 'queryRunner'] as const));
      for (let round = 0; round < rounds; round++) {
        for (const path of orderOf(round)) {
          paths.run = path === 'pool' ? pool : queryRunner;
          const flushed = await flushOnce();
          flushes[path].push(flushed);
          console.log(`flush round ${round + 1} ${path}: ${flushed.seconds.toFixed(2)} s (${flushed.statements} statements)`);
        }
      }
      // Lookups after the flushes, in rounds of their own (a flush's garbage is collected during what follows it).
      paths.run = queryRunner;
      await lookupMany(); // warm-up: the pool's connections and the JIT
      for (let round = 0; round < 2 * rounds; round++) {
        for (const path of orderOf(round)) {
          paths.run = path === 'pool' ? pool : queryRunner;
          const looked = await lookupMany();
          looks[path].push(looked);
          console.log(`lookup round ${round + 1} ${path}: ${looked.perSecond.toFixed(0)} lookups/s, ${looked.cpuMicros.toFixed(0)} µs CPU / lookup`);
        }
      }
      const samples = { queryRunner: [] as StorePathFigures[], pool: [] as StorePathFigures[] };
      for (const path of ['queryRunner', 'pool'] as const) {
        for (let i = 0; i < 2 * rounds; i++) {
          const flushed = flushes[path][Math.floor(i / 2)];
          samples[path].push({
            flushSeconds: flushed.seconds,
            flushStatements: flushed.statements,
            lookupsPerSecond: looks[path][i].perSecond,
            cpuMicrosPerLookup: looks[path][i].cpuMicros,
            statementsPerLookup: looks[path][i].statements,
          });
        }
      }
      paths.run = queryRunner;
      const figures = (list: StorePathFigures[]): StorePathFigures => ({
        flushSeconds: median(list.map((s) => s.flushSeconds)),
        flushStatements: median(list.map((s) => s.flushStatements)),
        lookupsPerSecond: median(list.map((s) => s.lookupsPerSecond)),
        cpuMicrosPerLookup: median(list.map((s) => s.cpuMicrosPerLookup)),
        statementsPerLookup: median(list.map((s) => s.statementsPerLookup)),
      });
      const ratio = (pick: (s: StorePathFigures) => number) => median(samples.queryRunner.map((s, i) => pick(s) / pick(samples.pool[i])));
      return {
        keys,
        rounds,
        lookups,
        concurrency,
        queryRunner: figures(samples.queryRunner),
        pool: figures(samples.pool),
        ratios: {
          flushSeconds: ratio((s) => s.flushSeconds),
          lookupsPerSecond: ratio((s) => s.lookupsPerSecond),
          cpuMicrosPerLookup: ratio((s) => s.cpuMicrosPerLookup),
        },
      };
    } finally {
      await db.end().catch(() => undefined);
      await app.close();
    }
  } finally {
    for (let start = 1; start <= keys; start += 10_000) {
      const batch = Array.from({ length: Math.min(10_000, keys + 1 - start) }, (_, j) => `api_token_active:app:${token(start + j)}`);
      await redis.del(...batch).catch(() => undefined);
    }
    redis.disconnect();
    await database.drop();
  }
}

/** The result as the `flush` part of bench/RESULTS.md. */
export function renderStorePathResults(r: StorePathBenchResult, command: string): string {
  const f = (n: number, digits = 2) => n.toFixed(digits);
  const row = (name: string, s: StorePathFigures) =>
    `| ${name} | ${f(s.flushSeconds)} | ${s.flushStatements} | ${f(s.lookupsPerSecond, 0)} | ${f(s.cpuMicrosPerLookup, 0)} | ${f(s.statementsPerLookup, 3)} |`;
  return [
    `### The store's path to PostgreSQL: 0.3's QueryRunner connection beside 0.2's \`driver.master\` pool (one run)`,
    '',
    `- Date: ${new Date().toISOString()}; command: \`${command}\`; the path that goes first alternates; medians.`,
    `- ${r.rounds} rounds of one flush of ${r.keys.toLocaleString('en')} active keys (every row moves) on each path, then ${2 * r.rounds} rounds of ${r.lookups.toLocaleString('en')} \`findByToken\` lookups of random rows, ${r.concurrency} in flight, on each; one process, one database, a private redis-server.`,
    '- CPU is this process\'s (the client side: pg, TypeORM, the library); PostgreSQL\'s own is not in it.',
    '',
    '| path | flush s | UPDATE statements / flush | lookups / s | CPU µs / lookup | statements / lookup |',
    '|---|---:|---:|---:|---:|---:|',
    row('0.3: `createQueryRunner()`, `connect()`, `release()`', r.queryRunner),
    row('0.2: `driver.master` `pool.query` (compared only)', r.pool),
    `| ratio 0.3 / 0.2 (median of per-round ratios) | ${f(r.ratios.flushSeconds)} | | ${f(r.ratios.lookupsPerSecond)} | ${f(r.ratios.cpuMicrosPerLookup)} | |`,
  ].join('\n');
}

if (require.main === module) {
  runStorePathBench().then(
    (result) => {
      console.log(JSON.stringify(result, null, 2));
      process.exit(0);
    },
    (error: unknown) => {
      console.error('store path bench failed:', error);
      process.exit(1);
    },
  );
}
