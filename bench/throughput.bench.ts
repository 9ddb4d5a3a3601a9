import { type BenchContext, type BenchServer, type Measured, measure } from './bench.infra';
import { type LoadResult, load, median } from './bench.load';

/** The routes compared; `unguarded` is the baseline of every ratio. */
export const THROUGHPUT_VARIANTS = [
  { name: 'unguarded', label: 'unguarded route', server: 'unguarded', path: '/bench/open', guarded: false },
  { name: 'noop', label: 'a guard that does nothing (what any Nest guard costs)', server: 'noop', path: '/bench/noop', guarded: false },
  { name: 'default', label: 'ApiTokenGuard, default config, hot token', server: 'default', path: '/app/whoami', guarded: true },
  { name: 'dify', label: 'ApiTokenGuard, `localCacheMax: 0`, `usageWriteIntervalMs: 0` (Dify design)', server: 'dify', path: '/app/whoami', guarded: true },
  { name: 'naive', label: 'naive guard, one PostgreSQL query per request', server: 'naive', path: '/bench/naive', guarded: true },
] as const;

export interface ThroughputRow {
  name: string;
  label: string;
  /** Medians over the rounds. */
  rps: number;
  p50: number;
  p99: number;
  /** Medians of the per-round ratios to the unguarded route of the same round. */
  rpsRatio: number;
  p50Ratio: number;
  p99Ratio: number;
  rpsRatioRange: [number, number];
  /** Server CPU time per request, microseconds (total over the rounds / requests), and its ratio to the unguarded route's. */
  cpuMicrosPerRequest: number;
  cpuRatio: number;
  requests: number;
  failed: number;
  redisPerRequest: number;
  redisExecutedPerRequest: number;
  redisByCommand: Record<string, number>;
  lookupsPerRequest: number;
  statementsPerRequest: number;
}

/** Alternating rounds over the four routes, each on its own server process; the starting route rotates every round. */
export async function runThroughputBench(context: BenchContext, token: string): Promise<ThroughputRow[]> {
  const { rounds, seconds, warmupSeconds, connections } = context.settings;
  const run = (variant: (typeof THROUGHPUT_VARIANTS)[number], duration: number) => {
    const server: BenchServer = context.servers[variant.server];
    return measure(context, [server], () =>
      load({ url: server.url + variant.path, connections, duration, authorization: variant.guarded ? `Bearer ${token}` : undefined }),
    );
  };
  for (const variant of THROUGHPUT_VARIANTS) await run(variant, warmupSeconds);
  const seen = new Map<string, Measured<LoadResult>[]>(THROUGHPUT_VARIANTS.map((v) => [v.name, []]));
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < THROUGHPUT_VARIANTS.length; i++) {
      const variant = THROUGHPUT_VARIANTS[(round + i) % THROUGHPUT_VARIANTS.length];
      const measured = await run(variant, seconds);
      seen.get(variant.name)!.push(measured);
      const r = measured.result;
      console.log(
        `  round ${round + 1}/${rounds} ${variant.name.padEnd(9)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  cpu ${(measured.cpuMicros / r.requests).toFixed(0)} µs/req  ` +
          `redis ${(measured.redisCommands / r.requests).toFixed(4)}/req  db ${(measured.lookups / r.requests).toFixed(4)}/req`,
      );
    }
  }
  const base = seen.get('unguarded')!;
  const cpuPerRequest = (runs: Measured<LoadResult>[]) =>
    runs.reduce((n, m) => n + m.cpuMicros, 0) / runs.reduce((n, m) => n + m.result.requests, 0);
  return THROUGHPUT_VARIANTS.map((variant) => {
    const runs = seen.get(variant.name)!;
    const ratios = (pick: (r: LoadResult) => number) => runs.map((m, i) => pick(m.result) / pick(base[i].result));
    const rpsRatios = ratios((r) => r.rps);
    const requests = runs.reduce((n, m) => n + m.result.requests, 0);
    const redisByCommand: Record<string, number> = {};
    for (const m of runs) for (const [command, calls] of m.redisByCommand) redisByCommand[command] = (redisByCommand[command] ?? 0) + calls / requests;
    return {
      name: variant.name,
      label: variant.label,
      rps: median(runs.map((m) => m.result.rps)),
      p50: median(runs.map((m) => m.result.p50)),
      p99: median(runs.map((m) => m.result.p99)),
      rpsRatio: median(rpsRatios),
      p50Ratio: median(ratios((r) => r.p50)),
      p99Ratio: median(ratios((r) => r.p99)),
      rpsRatioRange: [Math.min(...rpsRatios), Math.max(...rpsRatios)],
      cpuMicrosPerRequest: cpuPerRequest(runs),
      cpuRatio: cpuPerRequest(runs) / cpuPerRequest(base),
      requests,
      failed: runs.reduce((n, m) => n + m.result.requests - m.result.ok + m.result.errors, 0),
      redisPerRequest: runs.reduce((n, m) => n + m.redisCommands, 0) / requests,
      redisExecutedPerRequest: runs.reduce((n, m) => n + m.redisExecuted, 0) / requests,
      redisByCommand,
      lookupsPerRequest: runs.reduce((n, m) => n + m.lookups, 0) / requests,
      statementsPerRequest: runs.reduce((n, m) => n + m.statements, 0) / requests,
    };
  });
}
