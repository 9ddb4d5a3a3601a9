import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import calculateSlot from 'cluster-key-slot';
import Redis from 'ioredis';
import { randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import { ApiTokenService, ApiTokenUsageFlushService, type UsageFlushStats } from '../libs/api-token/src';
import { ApiTokenRedisService } from '../libs/api-token/src/redis/redis-access.service';
import { ApiTokenUsageRecorder } from '../libs/api-token/src/usage/usage.recorder';
import { INDEXES_CHECKED_KEY } from '../libs/api-token/src/usage/usage.index';
import { DEFAULT_API_TOKEN_OPTIONS } from '../libs/api-token/src/api-token.options';
import type { ApiTokenStoresEnv } from '../libs/api-token/src/env/stores.env';
import { TestAppModule } from '../test/app/app.module';
import { clusterPorts, startRedisCluster } from '../test/support/redis-cluster';
import { type Cleanup, commandStats, createBenchDatabase, startRedis } from './bench.infra';
import { runFlushBench } from './flush.bench';

/** What `npm run bench -- scale` measured (bench/RESULTS.md, section "scale"). */
export interface ScaleBenchResult {
  /** `redis-server`, or a three-master Redis Cluster. */
  redis: 'single' | 'cluster';
  unrelatedKeys: number;
  revokes: number;
  revokeP50Ms: number;
  revokeP99Ms: number;
  /** One committed PostgreSQL DELETE of a row, after each of the 200 revocations (the floor). */
  floorP50Ms: number;
  floorP99Ms: number;
  /** 100 more revocations while the every-scope sweep of the first 200 walks. */
  revokeDuringSweepP50Ms: number;
  revokeDuringSweepP99Ms: number;
  /** Of all 300. */
  revokesConfirmed: number;
  revokeScans: number;
  tenantP99Ms: number;
  flush1kMs: number;
  flush1kScans: number;
  /** The same flush in the run (every 30 minutes) that asks every index (on a Cluster all 16,384 slots'). */
  flush1kCheckAllMs: number;
  redisDownAtEnd: boolean;
  /** Keys one SCAN (COUNT 1000, the flush's MATCH) visits per millisecond on this Redis, from 50 pages. */
  scanKeysPerMs: number;
  /** Runs the flush takes to reach every Dify key at the default `flushScanBudgetMs`: ⌈K / (rate × budget)⌉ + 1. */
  difyRunsBound: number;
  flush1m: Awaited<ReturnType<typeof runFlushBench>> | null;
}

/** A timed flush that was skipped, or did not take the 1,000 uses, would time nothing worth printing. */
function tookAll(stats: UsageFlushStats | null): void {
  if (!stats || stats.taken < 1000) throw new Error(`scale bench: the timed flush ${stats ? `took ${stats.taken} of 1,000 uses` : 'was skipped'}`);
}

const p = (values: number[], q: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(values.length * q))];
const ms = (n: number) => Math.round(n * 100) / 100;

/** Where the bench's Redis is: the stores option that reaches it, a connection to each master, and one port for the 1M flush. */
interface ScaleRedis {
  stores: Pick<ApiTokenStoresEnv, 'redisUrl' | 'redisClusterNodes'>;
  masters: Redis[];
  /** Port of a plain redis-server for the 1M Dify-key flush; undefined on a Cluster (not run there). */
  flushPort?: number;
}

/** A private redis-server holding `keys` unrelated keys (`DEBUG POPULATE`, or a script where DEBUG is refused). */
async function singleRedis(cleanup: Cleanup, keys: number): Promise<ScaleRedis> {
  const redis = await startRedis(cleanup);
  try {
    await redis.admin.call('DEBUG', 'POPULATE', String(keys), 'unrelated');
  } catch {
    const script = "for i = ARGV[2], ARGV[3] do redis.call('SET', ARGV[1] .. ':' .. i, 'value:' .. i) end";
    for (let from = 0; from < keys; from += 100_000) await redis.admin.eval(script, 0, 'unrelated', from, Math.min(from + 100_000, keys) - 1);
  }
  return { stores: { redisUrl: redis.url }, masters: [redis.admin], flushPort: Number(new URL(redis.url).port) };
}

/**
 * A private three-master Redis Cluster holding `keys` unrelated keys, a third on each master, spread
 * over 64 hash tags per master (slots it owns), written by pipelined MSETs of 1,000 keys.
 */
async function clusterRedis(cleanup: Cleanup, keys: number): Promise<ScaleRedis> {
  const cluster = await startRedisCluster(await clusterPorts(7301));
  cleanup.add(() => cluster.stop());
  const masters = cluster.nodes.map((node) => new Redis(`redis://${node}`, { maxRetriesPerRequest: 1 }));
  cleanup.add(() => masters.forEach((m) => m.disconnect()));
  const slots = await masters[0].cluster('SLOTS');
  const owner = (slot: number) => slots.find(([from, to]) => slot >= from && slot <= to)![2][1];
  for (const master of masters) {
    const tags: string[] = [];
    for (let i = 0; tags.length < 64; i++) if (owner(calculateSlot(`u${i}`)) === master.options.port) tags.push(`u${i}`);
    const share = Math.ceil(keys / masters.length);
    for (let from = 0; from < share; from += 100_000) {
      const pipeline = master.pipeline();
      for (let batch = from; batch < Math.min(from + 100_000, share); batch += 1000) {
        const tag = tags[(batch / 1000) % tags.length];
        const pairs: string[] = [];
        for (let i = batch; i < Math.min(batch + 1000, share); i++) pairs.push(`unrelated:{${tag}}:${i}`, `value:${i}`);
        pipeline.mset(pairs);
      }
      await pipeline.exec();
    }
  }
  return { stores: { redisUrl: '', redisClusterNodes: cluster.nodes.map((node) => ({ host: '127.0.0.1', port: Number(node.split(':')[1]) })) }, masters };
}

/**
 * A shared Redis of `BENCH_SCALE_KEYS` unrelated keys (default 1,000,000) in a private redis-server,
 * or with `redis: 'cluster'` (`npm run bench -- scale-cluster`) a private three-master Cluster:
 * revoke() and invalidateTenant() latency and confirmation, the SCANs they send, a flush of 1,000
 * library-written uses, whether the request path ever left Redis; then (single server only) the 1M
 * Dify-key flush against its floor (`BENCH_SCALE_FLUSH_KEYS`, 0 to skip).
 */
export async function runScaleBench(cleanup: Cleanup, redisKind: 'single' | 'cluster' = 'single'): Promise<ScaleBenchResult> {
  const unrelatedKeys = Number(process.env.BENCH_SCALE_KEYS ?? 1_000_000);
  const flushKeys = Number(process.env.BENCH_SCALE_FLUSH_KEYS ?? 1_000_000);
  const redis = redisKind === 'cluster' ? await clusterRedis(cleanup, unrelatedKeys) : await singleRedis(cleanup, unrelatedKeys);
  const { url } = await createBenchDatabase(cleanup);
  const app = await NestFactory.createApplicationContext(
    TestAppModule.forRoot({ stores: { databaseUrl: url, ...redis.stores }, apiToken: { flushCron: false } }),
    { logger: ['error', 'warn'] },
  );
  cleanup.add(() => app.close());
  const tokens = app.get(ApiTokenService);
  const tenantId = randomUUID();
  const created = [];
  for (let i = 0; i < 500; i++) created.push(await tokens.create({ scope: 'app', tenantId }));
  const scans = async () => {
    let total = 0;
    for (const master of redis.masters) total += (await commandStats(master)).get('scan') ?? 0;
    return total;
  };

  // The floor, side by side: after each revocation, one committed DELETE of another row (a revocation
  // is one such statement, its commit's fsync included, plus the Redis deletes and the publish).
  const db = app.get(DataSource);
  const floorTimes: number[] = [];
  let confirmed = 0;
  const revokeAll = async (batch: { token: string }[], floor: { id: string }[] = []): Promise<number[]> => {
    const times: number[] = [];
    for (const [i, { token }] of batch.entries()) {
      let started = performance.now();
      const outcome = await tokens.revoke(token);
      times.push(performance.now() - started);
      if (outcome.cacheCleared) confirmed++;
      if (!floor[i]) continue;
      started = performance.now();
      await db.query('DELETE FROM api_tokens WHERE id = $1', [floor[i].id]);
      floorTimes.push(performance.now() - started);
    }
    return times;
  };
  const scansBefore = await scans();
  const revokeTimes = await revokeAll(created.slice(0, 200), created.slice(300));
  // Read before the background sweep has had a turn on most of them: what the revocations sent.
  const revokeScans = (await scans()) - scansBefore;
  // The sweep of those 200 starts once they have paused (250 ms) and walks every master: 100 more
  // revocations while it walks, their DELs queued behind its SCANs on a shared Redis.
  const sweepStarted = await scans();
  for (const giveUp = Date.now() + 10_000; (await scans()) === sweepStarted && Date.now() < giveUp; ) await new Promise((resolve) => setTimeout(resolve, 20));
  const duringSweepTimes = await revokeAll(created.slice(200, 300));

  const tenantTimes: number[] = [];
  for (let i = 0; i < 50; i++) {
    const started = performance.now();
    await tokens.invalidateTenant(tenantId);
    tenantTimes.push(performance.now() - started);
  }

  const recorder = app.get(ApiTokenUsageRecorder);
  /** First uses of 1,000 tokens of their own (`batch` keeps them apart from the other thousands), written to Redis. */
  const recordThousand = async (batch: string) => {
    for (let i = 0; i < 1000; i++) recorder.record('app', `app-scale${batch}${String(i).padStart(19, '0')}`);
    await recorder.flushPending();
  };
  await recordThousand('a');
  const flush = app.get(ApiTokenUsageFlushService);
  await flush.flushNow(); // the first run also walks the unrelated keys for Dify's (up to its budget)
  await recordThousand('b');
  const flushScansBefore = await scans();
  const flushStarted = performance.now();
  tookAll(await flush.flushNow());
  const flush1kMs = performance.now() - flushStarted;
  const flush1kScans = (await scans()) - flushScansBefore;
  // The run (every 30 minutes) that asks every slot's index (a Cluster; on one server there is one index): the marker cleared.
  await recordThousand('c');
  await app.get(ApiTokenRedisService).client.del(INDEXES_CHECKED_KEY);
  const checkAllStarted = performance.now();
  tookAll(await flush.flushNow());
  const flush1kCheckAllMs = performance.now() - checkAllStarted;
  const redisDownAtEnd = app.get(ApiTokenRedisService).isDown;

  // The walk's speed on this keyspace: 50 pages as the flush sends them, on the first master.
  let cursor = '0';
  const scanStarted = performance.now();
  for (let i = 0; i < 50; i++) [cursor] = await redis.masters[0].scan(cursor, 'MATCH', 'api_token_active:*', 'COUNT', 1000);
  const scanKeysPerMs = Math.round(50_000 / (performance.now() - scanStarted));

  const flush1m = flushKeys > 0 && redis.flushPort !== undefined ? await runFlushBench({ keys: flushKeys, redisPort: redis.flushPort, redisDb: 8 }) : null;
  return {
    redis: redisKind,
    unrelatedKeys,
    revokes: revokeTimes.length,
    revokeP50Ms: ms(p(revokeTimes, 0.5)),
    revokeP99Ms: ms(p(revokeTimes, 0.99)),
    floorP50Ms: ms(p(floorTimes, 0.5)),
    floorP99Ms: ms(p(floorTimes, 0.99)),
    revokeDuringSweepP50Ms: ms(p(duringSweepTimes, 0.5)),
    revokeDuringSweepP99Ms: ms(p(duringSweepTimes, 0.99)),
    revokesConfirmed: confirmed,
    revokeScans,
    tenantP99Ms: ms(p(tenantTimes, 0.99)),
    flush1kMs: ms(flush1kMs),
    flush1kScans,
    flush1kCheckAllMs: ms(flush1kCheckAllMs),
    redisDownAtEnd,
    scanKeysPerMs,
    difyRunsBound: Math.ceil(unrelatedKeys / (scanKeysPerMs * DEFAULT_API_TOKEN_OPTIONS.flushScanBudgetMs)) + 1,
    flush1m,
  };
}

/** The "scale" section of RESULTS.md. */
export function renderScaleResults(r: ScaleBenchResult): string {
  const f = r.flush1m;
  return [
    `### Production scale (issue 23): ${r.unrelatedKeys.toLocaleString('en')} unrelated keys${r.redis === 'cluster' ? ' on a three-master Redis Cluster' : ''}`,
    '',
    '| measure | result | target |',
    '|---|---:|---|',
    `| revoke() p50 / p99 (${r.revokes} revokes) | ${r.revokeP50Ms} / ${r.revokeP99Ms} ms | p99 ≤ 20 ms |`,
    `| the floor beside them: one committed PostgreSQL DELETE of a row, after each revoke() | ${r.floorP50Ms} / ${r.floorP99Ms} ms | |`,
    `| revoke() p50 / p99, 100 more while the background sweep of the first 200 walks | ${r.revokeDuringSweepP50Ms} / ${r.revokeDuringSweepP99Ms} ms | |`,
    `| revocations confirmed (cacheCleared) | ${r.revokesConfirmed} / ${r.revokes + 100} | all |`,
    `| SCANs sent while revoking (background sweep included if it ran) | ${r.revokeScans} | 0 from the revocations |`,
    `| invalidateTenant p99 | ${r.tenantP99Ms} ms | ≤ 20 ms |`,
    `| flush of 1,000 library uses | ${r.flush1kMs} ms, ${r.flush1kScans} SCANs | ≤ 200 ms |`,
    ...(r.redis === 'cluster' ? [`| the same in the run (every 30 minutes) that asks all 16,384 slots' indexes | ${r.flush1kCheckAllMs} ms | |`] : []),
    `| request path taken off Redis at the end | ${r.redisDownAtEnd ? 'yes' : 'no'} | no |`,
    `| the walk for Dify's keys: keys SCAN visits per ms; runs to reach every one (flushScanBudgetMs ${DEFAULT_API_TOKEN_OPTIONS.flushScanBudgetMs}) | ${r.scanKeysPerMs}; ${r.difyRunsBound} runs | |`,
    f
      ? `| flush of ${f.keys.toLocaleString('en')} Dify keys / one UPDATE of the same rows | ${f.seconds} s / ${f.floorSeconds} s = **${f.ratio}×**, ${f.runs} runs, ${f.statements} statements, RSS +${f.rssGrowthMb} MB | ≤ 1.5×, ≤ 1,000 statements, ≤ 150 MB |`
      : `| 1M flush | not run${r.redis === 'cluster' ? ' on the Cluster (the single-server section has it)' : ''} | |`,
    '',
  ].join('\n');
}
