import 'reflect-metadata';
import { existsSync, mkdirSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { sparePort } from '../test/support/ports';
import type { Adapter, Variant } from './bench.server';
import { BenchServer, type BenchContext, Cleanup, createBenchDatabase, runIsolated, startRedis } from './bench.infra';
import { load } from './bench.load';
import { type FloodRow, runFloodBench } from './flood.bench';
import { type ProfileSummary, summarizeProfile } from './hot-path.profile';
import { type Optional, writeResults, writeSection } from './results.report';
import { runAdapterBench, renderAdapterResults } from './adapters.bench';
import { runStampedeBench } from './stampede.bench';
import { renderStorePathResults, runStorePathBench } from './store-path.bench';
import { runThroughputBench } from './throughput.bench';
import { renderScaleResults, runScaleBench } from './scale.bench';

/**
 * `npm run bench`: starts a private redis-server, a private database and six server processes,
 * runs every scenario, writes bench/RESULTS.md, and stops and drops everything it started.
 * Tunable with BENCH_ROUNDS, BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_FLOOD_SIZE (see `settings`).
 * `npm run bench -- adapters` runs only the Express / Fastify hot-path comparison (bench/adapters.bench.ts)
 * and rewrites only its part of RESULTS.md; `npm run bench -- flush` runs the flush and lookups through
 * 0.3's and 0.2's paths to PostgreSQL side by side (bench/store-path.bench.ts), likewise.
 */
async function main(): Promise<void> {
  const only = process.argv[2];
  if (only !== undefined && !['adapters', 'scale', 'scale-cluster', 'flood', 'flush'].includes(only)) {
    throw new Error(`unknown scenario "${only}": run \`npm run bench\` or \`npm run bench -- <adapters|scale|scale-cluster|flood|flush>\``);
  }
  const started = Date.now();
  const cleanup = new Cleanup();
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    console.error(`\n${signal}: stopping the benchmark's processes and dropping its database`);
    void cleanup.run().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const settings: BenchContext['settings'] = {
      rounds: envInt('BENCH_ROUNDS', 5),
      seconds: envInt('BENCH_SECONDS', 5),
      warmupSeconds: 2,
      connections: envInt('BENCH_CONNECTIONS', 10),
      floodSize: envInt('BENCH_FLOOD_SIZE', 10_000),
      stampede: 500,
    };
    if (only === 'scale' || only === 'scale-cluster') {
      const kind = only === 'scale' ? 'single' : 'cluster';
      console.log(`Scale: a private ${kind === 'single' ? 'redis-server' : 'three-master Redis Cluster'} filled with unrelated keys, a private database…`);
      const result = await runScaleBench(cleanup, kind);
      console.log(JSON.stringify(result, null, 2));
      writeSection(join(__dirname, 'RESULTS.md'), only, renderScaleResults(result));
      console.log(`Wrote the ${only} part of bench/RESULTS.md`);
      return;
    }
    console.log('Starting a private redis-server and a private database…');
    const redis = await startRedis(cleanup);
    if (only === 'flush') {
      const redisPort = Number(new URL(redis.url).port);
      console.log('Flush and lookups through 0.3\'s QueryRunner connection and 0.2\'s driver.master pool, alternating rounds…');
      const result = await runStorePathBench({ redisPort, redisDb: 8 });
      console.log(JSON.stringify(result, null, 2));
      const vars = ['BENCH_FLUSH_KEYS', 'BENCH_ROUNDS', 'BENCH_LOOKUPS', 'BENCH_CONNECTIONS'].filter((v) => process.env[v]).map((v) => `${v}=${process.env[v]} `);
      writeSection(join(__dirname, 'RESULTS.md'), 'flush', renderStorePathResults(result, `${vars.join('')}npm run bench -- flush`));
      console.log('Wrote the flush part of bench/RESULTS.md');
      return;
    }
    const { url: databaseUrl, dataSource, repository, hotToken } = await createBenchDatabase(cleanup);

    const start = async (name: string, variant: Variant, adapter: Adapter = 'express') =>
      BenchServer.start(cleanup, { name, variant, adapter, port: await sparePort(), databaseUrl, redisUrl: redis.url });
    const profileDir = join('.tmp', 'bench');
    mkdirSync(profileDir, { recursive: true });
    const adapters = async (context: Pick<BenchContext, 'redis' | 'settings'>) => {
      console.log(`Express and Fastify: ${settings.rounds} alternating rounds of ${settings.seconds} s per route, ${settings.connections} connections`);
      const [express, fastify] = await Promise.all([start('express', 'default', 'express'), start('fastify', 'default', 'fastify')]);
      const results = await runAdapterBench(context, { express, fastify }, hotToken, profileDir);
      writeSection(join(__dirname, 'RESULTS.md'), 'adapters', renderAdapterResults(results, settings));
      console.log('Wrote the adapters part of bench/RESULTS.md');
    };
    if (only === 'adapters') {
      await adapters({ redis: redis.admin, settings });
      return;
    }

    if (only === 'flood') {
      const [def, limited] = await Promise.all([start('default', 'default'), start('limited', 'limited')]);
      const servers = { unguarded: def, noop: def, default: def, dify: def, naive: def, second: def };
      console.log(`Floods: ${settings.floodSize} distinct unknown tokens, then ${settings.floodSize} malformed ones, then unknown ones from one client over failedAttemptLimit`);
      const rows = await runFloodBench({ redis: redis.admin, servers, settings }, hotToken, repository, limited);
      console.log(JSON.stringify(rows, null, 1));
      console.log(floodSummary(rows));
      return;
    }
    console.log('Starting six server processes…');
    const [unguarded, noop, def, dify, naive, second] = await Promise.all([
      start('unguarded', 'default'),
      start('noop', 'default'),
      start('default', 'default'),
      start('dify', 'dify'),
      start('naive', 'default'),
      start('second', 'default'),
    ]);
    const context: BenchContext = { redis: redis.admin, servers: { unguarded, noop, default: def, dify, naive, second }, settings };

    console.log(`Throughput: ${settings.rounds} alternating rounds of ${settings.seconds} s, ${settings.connections} connections`);
    const throughput = await runThroughputBench(context, hotToken);

    console.log('CPU profiles: unguarded route, do-nothing guard, default configuration with the hot token…');
    const profiles: ProfileSummary[] = [];
    for (const [name, server, path, authorization] of [
      ['unguarded', unguarded, '/bench/open', undefined],
      ['noop', noop, '/bench/noop', undefined],
      ['default', def, '/app/whoami', `Bearer ${hotToken}`],
    ] as const) {
      const file = join(profileDir, `${name}.cpuprofile`);
      const round = await server.profile(file, () => load({ url: server.url + path, connections: settings.connections, duration: settings.seconds, authorization }));
      profiles.push(summarizeProfile(file, name, round.requests));
    }

    console.log(`Stampede: ${settings.stampede} concurrent first requests for one token across two instances`);
    const stampede = await runStampedeBench(context, repository);

    console.log(`Floods: ${settings.floodSize} distinct unknown tokens, then ${settings.floodSize} malformed ones`);
    const floods = await runFloodBench(context, hotToken, repository, await start('limited', 'limited'));
    console.log(floodSummary(floods));

    // Both run on the private redis-server too, each in an empty database index of its own.
    const redisPort = Number(new URL(redis.url).port);
    const flush = await optional(cleanup, 'flush', 'runFlushBench', { redisHost: '127.0.0.1', redisPort, redisDb: 8 });
    const revocation = await optional(cleanup, 'revocation', 'runRevocationBench', { redisHost: '127.0.0.1', redisPort, redisDb: 9 });
    await optional(cleanup, 'rate-limit', 'runRateLimitBench', { redisHost: '127.0.0.1', redisPort, redisDb: 10 }); // writes bench/RATE-LIMIT-RESULTS.md
    await optional(cleanup, 'expiry', 'runExpiryBench', { redisHost: '127.0.0.1', redisPort, redisDb: 10 }).then((o) => console.log(o.status === 'ran' ? (o.result as { markdown: string }).markdown : `expiry: ${o.reason}`));
    await optional(cleanup, 'revocation-log', 'runRevocationLogBench', { redisHost: '127.0.0.1', redisPort, redisDb: 10 }).then((o) => console.log(o.status === 'ran' ? (o.result as { markdown: string }).markdown : `revocation-log: ${o.reason}`));

    await adapters(context);

    const seconds = (Date.now() - started) / 1000;
    const pg = await dataSource.query<{ server_version: string }[]>('SHOW server_version');
    const redisVersion = /redis_version:(\S+)/.exec(await redis.admin.info('server'))?.[1] ?? '?';
    writeResults(join(__dirname, 'RESULTS.md'), {
      machine: {
        cpus: cpus().length,
        model: cpus()[0]?.model ?? '?',
        memoryGiB: totalmem() / 2 ** 30,
        node: process.version,
        postgres: pg[0].server_version.split(' ')[0],
        redis: redisVersion,
      },
      date: new Date().toISOString(),
      seconds,
      settings,
      throughput,
      profiles,
      stampede,
      floods,
      flush,
      revocation,
    });
    console.log(`Wrote bench/RESULTS.md (${seconds.toFixed(0)} s)`);
  } finally {
    await cleanup.run();
  }
}

/** Runs another scenario when its file is there: `bench/{name}.bench.ts` exporting `exported(options)`. */
async function optional(cleanup: Cleanup, name: string, exported: string, options: Record<string, unknown>): Promise<Optional> {
  const file = join(__dirname, `${name}.bench.ts`);
  if (!existsSync(file)) {
    console.log(`${name}: not available (no bench/${name}.bench.ts)`);
    return { status: 'not available', reason: `bench/${name}.bench.ts is not there` };
  }
  console.log(`${name}: running ${exported}() from bench/${name}.bench.ts in a process of its own…`);
  const outcome = await runIsolated(cleanup, file, exported, options);
  if ('error' in outcome) {
    console.error(`${name} failed: ${outcome.error}`);
    return { status: 'failed', reason: outcome.error };
  }
  return { status: 'ran', result: outcome.result };
}

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer, got "${raw}"`);
  return value;
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error('bench failed:', error);
    process.exit(1);
  },
);

/** The flood section's figures against the targets of issue 24, on one line per flood. */
function floodSummary(rows: FloodRow[]): string {
  const malformed = rows.find((row) => row.kind === 'malformed');
  return rows
    .map((row) => {
      const hot = malformed ? ` hot token during / during malformed ${(row.hotRpsDuring / malformed.hotRpsDuring).toFixed(2)}× (${row.hotRefusedDuring} refused);` : '';
      const created = row.createdDuring
        ? ` created mid-flood: first ${row.createdDuring.firstStatus}, accepted after ${row.createdDuring.msUntilAccepted.toFixed(1)} ms, ${row.createdDuring.refused} refused;`
        : '';
      return (
        `flood ${row.kind}: CPU per request ${row.cpuMicrosPerRequest.toFixed(0)} µs = ${row.cpuRatio?.toFixed(2)}× malformed;${hot} ` +
        `PostgreSQL ${row.lookupsPerSecond.toFixed(0)} lookups/s, at most ${row.lookupsMaxConcurrent} at once (budget 8); shed/limited ${row.shed};${created}`
      );
    })
    .join('\n');
}
