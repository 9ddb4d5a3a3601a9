import 'reflect-metadata';
import { ApiTokenUsageFlushService } from '../libs/api-token/src';
import { ACTIVE_KEY_TTL_SECONDS } from '../libs/api-token/src/api-token.keys';
import { NestFactory } from '@nestjs/core';
import Redis from 'ioredis';
import { Client } from 'pg';
import { TestAppModule } from '../test/app/app.module';
import { createTestDatabase } from '../test/support/database';
import { QueryCounter } from '../test/support/query-counter';

/** Settings of {@link runFlushBench}; each has an environment variable and a default. */
export interface FlushBenchOptions {
  /** Active keys (and rows) to flush. `BENCH_FLUSH_KEYS`, default 100,000. */
  keys?: number;
  /** The `flushPageSize` option. `BENCH_FLUSH_PAGE_SIZE`, default the library's (1,000). */
  pageSize?: number;
  /** Redis server. `BENCH_FLUSH_REDIS_HOST` / `BENCH_FLUSH_REDIS_PORT`, default 127.0.0.1:6379. */
  redisHost?: string;
  redisPort?: number;
  /** Redis database index of the benchmark's own; it must hold no active keys. `BENCH_FLUSH_REDIS_DB`, default 6. */
  redisDb?: number;
  /** PostgreSQL to create (and drop) the benchmark's own database in. `BENCH_PG_URL`, default postgres@127.0.0.1:5432. */
  pgAdminUrl?: string;
  /**
   * Sample the heap after a forced GC every 50 ms (needs `node --expose-gc`), so the peak is live
   * memory, not garbage V8 has not collected yet; slows the flush. `BENCH_FLUSH_LIVE_HEAP=1`, default off.
   */
  liveHeap?: boolean;
}

/** What one flush of `keys` active keys cost. */
export interface FlushBenchResult {
  keys: number;
  /** Wall time of `flushNow()`. */
  seconds: number;
  /**
   * The floor: wall time of one PostgreSQL UPDATE of the same rows (one statement, every row a newer
   * time from arrays), run after the flush on the same database; `ratio` is `seconds / floorSeconds`.
   */
  floorSeconds: number;
  ratio: number;
  /** Growth of this process's resident set during the flush (peak minus before). */
  rssGrowthMb: number;
  /** `flushNow()` runs it took (the SCAN budget of a run bounds how much of Dify's keys it walks). */
  runs: number;
  /** `UPDATE api_tokens` statements, counted at the pg driver. */
  statements: number;
  pageSize: number;
  /** Peak resident set and V8 heap of this process while the flush ran, and the heap before it. */
  peakRssMb: number;
  peakHeapMb: number;
  heapBeforeMb: number;
  /** Whether the heap figures are live memory ({@link FlushBenchOptions.liveHeap}). */
  liveHeap: boolean;
}

const env = (name: string): number | undefined => (process.env[name] ? Number(process.env[name]) : undefined);
const mb = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;

/**
 * Seeds `keys` rows and as many `api_token_active:app:{token}` keys (pipelined) in a database and a
 * Redis database index of its own, flushes them with one `flushNow()`, checks every row got its time
 * and no key is left, and drops what it made.
 */
export async function runFlushBench(options: FlushBenchOptions = {}): Promise<FlushBenchResult> {
  const keys = options.keys ?? env('BENCH_FLUSH_KEYS') ?? 100_000;
  const redisDb = options.redisDb ?? env('BENCH_FLUSH_REDIS_DB') ?? 6;
  const redisUrl = `redis://${options.redisHost ?? process.env.BENCH_FLUSH_REDIS_HOST ?? '127.0.0.1'}:${options.redisPort ?? env('BENCH_FLUSH_REDIS_PORT') ?? 6379}/${redisDb}`;
  const pgAdminUrl = options.pgAdminUrl ?? process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const pageSize = options.pageSize ?? env('BENCH_FLUSH_PAGE_SIZE');
  const gc = (globalThis as { gc?: () => void }).gc;
  const liveHeap = (options.liveHeap ?? process.env.BENCH_FLUSH_LIVE_HEAP === '1') && gc !== undefined;

  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  const [, existing] = await redis.scan('0', 'MATCH', 'api_token_active:*', 'COUNT', 10_000);
  if (existing.length) {
    redis.disconnect();
    throw new Error(`Redis database ${redisDb} already holds api_token_active keys; give the benchmark an empty one (BENCH_FLUSH_REDIS_DB)`);
  }
  const database = await createTestDatabase(pgAdminUrl, 'api_token_flush_bench');
  const url = database.url;
  const counter = new QueryCounter();
  const token = (i: number) => `app-flushbench${String(i).padStart(14, '0')}`;
  try {
    const app = await NestFactory.createApplicationContext(
      TestAppModule.forRoot({
        stores: { databaseUrl: url, redisUrl },
        apiToken: { flushCron: false, ...(pageSize ? { flushPageSize: pageSize } : {}) },
        typeorm: counter.typeorm,
      }),
      { logger: ['error', 'warn'] },
    );
    try {
      const db = new Client({ connectionString: url });
      await db.connect();
      try {
        await db.query(
          `INSERT INTO api_tokens (type, token) SELECT 'app', 'app-flushbench' || lpad(i::text, 14, '0') FROM generate_series(1, $1::int) AS i`,
          [keys],
        );
        await db.query('VACUUM ANALYZE api_tokens');
        const base = Date.now() - keys;
        for (let start = 1; start <= keys; start += 10_000) {
          const pipeline = redis.pipeline();
          for (let i = start; i < Math.min(start + 10_000, keys + 1); i++) {
            pipeline.set(`api_token_active:app:${token(i)}`, new Date(base + i).toISOString().replace('Z', '000'), 'EX', ACTIVE_KEY_TTL_SECONDS);
          }
          await pipeline.exec();
        }

        const flush = app.get(ApiTokenUsageFlushService);
        gc?.(); // with --expose-gc: the heap before holds no seeding garbage
        const heapBefore = process.memoryUsage().heapUsed;
        const rssBefore = process.memoryUsage().rss;
        let peakRss = 0;
        let peakHeap = 0;
        const sample = () => {
          if (liveHeap) gc!();
          const { rss, heapUsed } = process.memoryUsage();
          peakRss = Math.max(peakRss, rss);
          peakHeap = Math.max(peakHeap, heapUsed);
        };
        const sampler = setInterval(sample, liveHeap ? 50 : 5);
        counter.reset();
        const started = performance.now();
        // Dify's keys are not indexed: each run walks them for its SCAN budget and the cursor carries
        // over, so the flush of a million is the runs back to back until one finds nothing.
        let stats = await flush.flushNow();
        let runs = 1;
        for (let last = stats; last && last.taken > 0; runs++) {
          last = await flush.flushNow();
          if (stats && last) stats = { ...last, scanned: stats.scanned + last.scanned, taken: stats.taken + last.taken, updated: stats.updated + last.updated };
        }
        const seconds = (performance.now() - started) / 1000;
        clearInterval(sampler);
        sample();

        const [{ n }] = (await db.query('SELECT count(*)::int AS n FROM api_tokens WHERE last_used_at IS NOT NULL')).rows;
        const [, left] = await redis.scan('0', 'MATCH', 'api_token_active:*', 'COUNT', 10_000);
        if (!stats || stats.updated !== keys || n !== keys || left.length) {
          throw new Error(`flush incomplete: ${JSON.stringify(stats)}, ${n} rows updated, keys left: ${left.length > 0}`);
        }
        const later = Date.now();
        const floorStarted = performance.now();
        await db.query(
          `UPDATE api_tokens t SET last_used_at = v.ts FROM unnest($1::text[], $2::timestamp[]) AS v(token, ts) WHERE t.token = v.token`,
          [Array.from({ length: keys }, (_, i) => token(i + 1)), Array.from({ length: keys }, (_, i) => new Date(later + i).toISOString().replace('Z', ''))],
        );
        const floorSeconds = (performance.now() - floorStarted) / 1000;
        return {
          keys,
          seconds: Math.round(seconds * 1000) / 1000,
          floorSeconds: Math.round(floorSeconds * 1000) / 1000,
          ratio: Math.round((seconds / floorSeconds) * 100) / 100,
          rssGrowthMb: mb(peakRss - rssBefore),
          runs,
          statements: counter.count(/^\s*UPDATE api_tokens/),
          pageSize: pageSize ?? keys / Math.max(1, counter.count(/^\s*UPDATE api_tokens/)),
          peakRssMb: mb(peakRss),
          peakHeapMb: mb(peakHeap),
          heapBeforeMb: mb(heapBefore),
          liveHeap,
        };
      } finally {
        await db.end();
      }
    } finally {
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

if (require.main === module) {
  runFlushBench().then(
    (result) => {
      console.log(JSON.stringify(result, null, 2));
      process.exit(0);
    },
    (error: unknown) => {
      console.error('flush bench failed:', error);
      process.exit(1);
    },
  );
}
