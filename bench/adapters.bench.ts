import { join } from 'node:path';
import { type BenchContext, type BenchServer, type Measured, measure } from './bench.infra';
import { type LoadResult, load, median } from './bench.load';
import type { Adapter, InjectStats } from './bench.server';
import { type ProfileSummary, summarizeProfile } from './hot-path.profile';

/**
 * The hot path under both of Nest's HTTP adapters: three routes answering the same 4-field body, all
 * sent the same `Authorization` header (so the requests parsed are byte for byte alike), on one
 * server process per adapter.
 */
export const ADAPTER_ROUTES = [
  { name: 'unguarded', label: 'no guard', path: '/bench/open' },
  { name: 'noop', label: 'do-nothing guard + `@CurrentApiToken()`', path: '/bench/noop' },
  { name: 'guard', label: "`ApiTokenGuard('app')` + `@CurrentApiToken()`, hot token", path: '/bench/guard' },
] as const;
export const ADAPTERS: readonly Adapter[] = ['express', 'fastify'];

export interface AdapterRouteRow {
  adapter: Adapter;
  route: string;
  label: string;
  /** Medians over the rounds. */
  rps: number;
  p50: number;
  p99: number;
  /** Server CPU per request (total over the rounds / requests), microseconds, and the per-round range. */
  cpu: number;
  cpuRange: [number, number];
  /** Medians (and ranges) of the per-round throughput ratios to the unguarded and the do-nothing route of the same adapter and round. */
  rpsToUnguarded: number;
  rpsToNoop: number;
  rpsToNoopRange: [number, number];
  /** CPU per request minus the do-nothing route's in the same round: median and range, microseconds. */
  cpuOverNoop: number;
  cpuOverNoopRange: [number, number];
  /** JS heap bytes allocated per request (server process). */
  heapBytes: number;
  redisPerRequest: number;
  requests: number;
  failed: number;
}

/** The same three routes driven in the server's own process with no socket (`BenchServer.inject`). */
export interface InProcessRow {
  adapter: Adapter;
  route: string;
  label: string;
  /** Median over the rounds of CPU µs per request, and its range. */
  cpu: number;
  cpuRange: [number, number];
  /** Median (and range) over the rounds of CPU per request minus the do-nothing route's in the same round. */
  cpuOverNoop: number;
  cpuOverNoopRange: [number, number];
  /** Median over the rounds of the throughput ratio (the inverse of the CPU ratio, one request at a time) to the do-nothing route. */
  speedToNoop: number;
  /** The same two medians over the rounds at the machine's full speed only (see {@link FULL_SPEED_FACTOR}), and how many rounds that was. */
  fullSpeed: { rounds: number; cpuOverNoop: number; speedToNoop: number };
  heapBytes: number;
  requests: number;
  failed: number;
}

export interface AdapterProfile {
  adapter: Adapter;
  noop: ProfileSummary;
  guard: ProfileSummary;
}

export interface AdapterResults {
  inProcess: InProcessRow[];
  inProcessSettings: { rounds: number; batch: number };
  rows: AdapterRouteRow[];
  profiles: AdapterProfile[];
}

/** Starts the two servers this scenario needs (one per adapter, default configuration). */
export type StartServer = (name: string, adapter: Adapter) => Promise<BenchServer>;

/**
 * Alternating rounds: each round runs every route of both adapters, adapters and routes in an order
 * that rotates from round to round, so that a slow spell of the shared machine spreads over all of
 * them. Ratios are taken within a round, then the median over rounds.
 */
export async function runAdapterBench(context: Pick<BenchContext, 'redis' | 'settings'>, servers: Record<Adapter, BenchServer>, token: string, profileDir: string): Promise<AdapterResults> {
  const { rounds, seconds, warmupSeconds, connections } = context.settings;
  const authorization = `Bearer ${token}`;
  const run = (adapter: Adapter, path: string, duration: number) => {
    const server = servers[adapter];
    return measure(context, [server], () => load({ url: server.url + path, connections, duration, authorization }));
  };
  for (const adapter of ADAPTERS) for (const route of ADAPTER_ROUTES) await run(adapter, route.path, warmupSeconds);
  const seen = new Map<string, Measured<LoadResult>[]>();
  const cell = (adapter: Adapter, route: string) => `${adapter}/${route}`;
  for (let round = 0; round < rounds; round++) {
    for (let a = 0; a < ADAPTERS.length; a++) {
      const adapter = ADAPTERS[(round + a) % ADAPTERS.length];
      for (let i = 0; i < ADAPTER_ROUTES.length; i++) {
        const route = ADAPTER_ROUTES[(round + i) % ADAPTER_ROUTES.length];
        const measured = await run(adapter, route.path, seconds);
        const runs = seen.get(cell(adapter, route.name)) ?? [];
        runs.push(measured);
        seen.set(cell(adapter, route.name), runs);
        const r = measured.result;
        console.log(
          `  round ${round + 1}/${rounds} ${adapter.padEnd(7)} ${route.name.padEnd(9)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  ` +
            `cpu ${(measured.cpuMicros / r.requests).toFixed(1)} µs/req  heap ${(measured.allocatedBytes / r.requests).toFixed(0)} B/req  redis ${(measured.redisCommands / r.requests).toFixed(4)}/req`,
        );
      }
    }
  }

  const rows: AdapterRouteRow[] = [];
  for (const adapter of ADAPTERS) {
    const base = seen.get(cell(adapter, 'unguarded'))!;
    const noop = seen.get(cell(adapter, 'noop'))!;
    const cpuOf = (m: Measured<LoadResult>) => m.cpuMicros / m.result.requests;
    for (const route of ADAPTER_ROUTES) {
      const runs = seen.get(cell(adapter, route.name))!;
      const requests = runs.reduce((n, m) => n + m.result.requests, 0);
      const toNoop = runs.map((m, i) => m.result.rps / noop[i].result.rps);
      const overNoop = runs.map((m, i) => cpuOf(m) - cpuOf(noop[i]));
      const cpus = runs.map(cpuOf);
      rows.push({
        adapter,
        route: route.name,
        label: route.label,
        rps: median(runs.map((m) => m.result.rps)),
        p50: median(runs.map((m) => m.result.p50)),
        p99: median(runs.map((m) => m.result.p99)),
        cpu: runs.reduce((n, m) => n + m.cpuMicros, 0) / requests,
        cpuRange: [Math.min(...cpus), Math.max(...cpus)],
        rpsToUnguarded: median(runs.map((m, i) => m.result.rps / base[i].result.rps)),
        rpsToNoop: median(toNoop),
        rpsToNoopRange: [Math.min(...toNoop), Math.max(...toNoop)],
        cpuOverNoop: median(overNoop),
        cpuOverNoopRange: [Math.min(...overNoop), Math.max(...overNoop)],
        heapBytes: runs.reduce((n, m) => n + m.allocatedBytes, 0) / requests,
        redisPerRequest: runs.reduce((n, m) => n + m.redisCommands, 0) / requests,
        requests,
        failed: runs.reduce((n, m) => n + m.result.requests - m.result.ok + m.result.errors, 0),
      });
    }
  }

  // In-process last: light-my-request's requests, once Express has re-parented them, leave Express's
  // request prototype unfit for a socket's close, so no HTTP round may follow them in that process.
  const inProcessSettings = { rounds: Number(process.env.BENCH_INJECT_ROUNDS ?? 20), batch: Number(process.env.BENCH_INJECT_BATCH ?? 2000) };
  const inProcess = await runInProcess(servers, authorization, inProcessSettings);

  const profiles: AdapterProfile[] = [];
  if (process.env.BENCH_PROFILE !== '0') {
    for (const adapter of ADAPTERS) {
      const server = servers[adapter];
      const summaries: Partial<Record<'noop' | 'guard', ProfileSummary>> = {};
      for (const route of ADAPTER_ROUTES.filter((r) => r.name !== 'unguarded')) {
        const file = join(profileDir, `${adapter}-${route.name}.cpuprofile`);
        console.log(`  profiling ${adapter} ${route.name}`);
        const requests = inProcessSettings.batch * 10;
        await server.profile(file, () => server.inject([route.path], authorization, requests, false));
        summaries[route.name as 'noop' | 'guard'] = summarizeProfile(file, `${adapter} ${route.name}`, requests);
      }
      profiles.push({ adapter, noop: summaries.noop!, guard: summaries.guard! });
    }
  }
  return { inProcess, inProcessSettings, rows, profiles };
}

/**
 * This machine's speed moves by up to 2.5× from round to round (other tenants of the host), and the
 * guard's microseconds stretch with it: a round twice as slow doubles the difference to the do-nothing
 * guard. The targets are read in the rounds at full speed: those whose do-nothing route cost at most this
 * factor × the cheapest round's (all rounds are reported beside them).
 */
const FULL_SPEED_FACTOR = 1.15;

/** Plain batches per route that count the heap bytes (the median is reported). */
const HEAP_BATCHES = 5;

/**
 * In-process rounds: in each, both servers run `batch` requests of every route, the routes taking
 * turns request by request (CPU read around each request); then {@link HEAP_BATCHES} plain batches per
 * route count the heap bytes.
 */
async function runInProcess(servers: Record<Adapter, BenchServer>, authorization: string, settings: { rounds: number; batch: number }): Promise<InProcessRow[]> {
  const { rounds, batch } = settings;
  const paths = ADAPTER_ROUTES.map((r) => r.path);
  for (const adapter of ADAPTERS) await servers[adapter].inject(paths, authorization, batch, true);
  const seen = new Map<Adapter, InjectStats[][]>(ADAPTERS.map((a) => [a, []]));
  for (let round = 0; round < rounds; round++) {
    for (let a = 0; a < ADAPTERS.length; a++) {
      const adapter = ADAPTERS[(round + a) % ADAPTERS.length];
      seen.get(adapter)!.push(await servers[adapter].inject(paths, authorization, batch, true));
    }
    const line = ADAPTERS.map((adapter) => `${adapter} ` + seen.get(adapter)!.at(-1)!.map((s, i) => `${ADAPTER_ROUTES[i].name} ${interquartileMean(s.perRequest).toFixed(1)}`).join(' ')).join(' | ');
    console.log(`  in-process round ${round + 1}/${rounds} (CPU µs/req): ${line}`);
  }
  const rows: InProcessRow[] = [];
  for (const adapter of ADAPTERS) {
    // Heap bytes: a few plain batches per route, the median of each route's (one GC more or less in a
    // batch, or a timer's allocations, moves a single batch by hundreds of bytes per request).
    const heaps: InjectStats[][] = [];
    for (let i = 0; i < HEAP_BATCHES; i++) heaps.push(await servers[adapter].inject(paths, authorization, batch, false));
    const runs = seen.get(adapter)!;
    const noop = ADAPTER_ROUTES.findIndex((r) => r.name === 'noop');
    const noopCpus = runs.map((r) => interquartileMean(r[noop].perRequest));
    const fullSpeedRuns = runs.filter((_, round) => noopCpus[round] <= FULL_SPEED_FACTOR * Math.min(...noopCpus));
    ADAPTER_ROUTES.forEach((route, i) => {
      const cpus = runs.map((r) => interquartileMean(r[i].perRequest));
      const overOf = (r: InjectStats[]) => interquartileMean(r[i].perRequest) - interquartileMean(r[noop].perRequest);
      const speedOf = (r: InjectStats[]) => interquartileMean(r[noop].perRequest) / interquartileMean(r[i].perRequest);
      const over = runs.map(overOf);
      rows.push({
        adapter,
        route: route.name,
        label: route.label,
        cpu: median(cpus),
        cpuRange: [Math.min(...cpus), Math.max(...cpus)],
        cpuOverNoop: median(over),
        cpuOverNoopRange: [Math.min(...over), Math.max(...over)],
        speedToNoop: median(runs.map(speedOf)),
        fullSpeed: { rounds: fullSpeedRuns.length, cpuOverNoop: median(fullSpeedRuns.map(overOf)), speedToNoop: median(fullSpeedRuns.map(speedOf)) },
        heapBytes: median(heaps.map((h) => h[i].allocatedBytes / batch)),
        requests: runs.length * batch,
        failed: runs.reduce((n, r) => n + batch - r[i].ok, 0) + heaps.reduce((n, h) => n + batch - h[i].ok, 0),
      });
    });
  }
  return rows;
}

/**
 * The mean of the middle half of the per-request CPU times: a GC pause, a timer or a preemption that
 * lands on one request in a hundred moves it no more than on any other route.
 */
function interquartileMean(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.slice(Math.floor(sorted.length / 4), Math.ceil((sorted.length * 3) / 4));
  return middle.reduce((a, b) => a + b, 0) / middle.length;
}

const f = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : '–');
const range = ([a, b]: [number, number], digits = 2) => `${f(a, digits)} to ${f(b, digits)}`;

/** The targets of the hot path (issue 13), per adapter: µs of CPU over the do-nothing guard, throughput ratio to it. */
export const ADAPTER_TARGETS: Record<Adapter, { cpuOverNoop: number; rpsToNoop: number }> = {
  express: { cpuOverNoop: 3, rpsToNoop: 0.97 },
  fastify: { cpuOverNoop: 1, rpsToNoop: 0.95 },
};

const status = (met: boolean) => (met ? 'met' : 'missed');

/** Markdown of the scenario: targets, both tables, and the profile attribution. */
export function renderAdapterResults(results: AdapterResults, settings: BenchContext['settings']): string {
  const out: string[] = [];
  const { rounds, batch } = results.inProcessSettings;
  const pick = <R extends { adapter: Adapter; route: string }>(rows: R[], adapter: Adapter, route: string) => rows.find((r) => r.adapter === adapter && r.route === route)!;
  out.push('## Hot path under Express and Fastify');
  out.push('');
  out.push(
    'Three routes answer the same 4-field body and are all sent the same `Authorization` header: no guard (`/bench/open`), ' +
      'a do-nothing guard that sets `request.apiToken` + `@CurrentApiToken()` (`/bench/noop`), and `ApiTokenGuard(\'app\')` + ' +
      '`@CurrentApiToken()` with a hot token (`/bench/guard`, declared right after `/bench/noop` so that Express\'s route-by-route matching ' +
      'treats them alike; in process, the demo\'s `/app/whoami`, four routes later, measured the same within 0.5 µs). One server process per adapter serves all three.',
  );
  out.push('');
  out.push(
    `- **In process** (${rounds} rounds × ${batch} requests per route and adapter): requests go through the adapter's handler in the server's own process ` +
      'with no socket (light-my-request), the three routes taking turns request by request, CPU (`process.cpuUsage()`) read around each request; ' +
      'a round\'s figure for a route is the mean of the middle half of its requests (interquartile mean), so a GC pause or a preemption that lands on a few requests does not decide it. ' +
      'No syscalls and no load generator on the same cores: this resolves single microseconds on a shared machine. Throughput one request at a time is the inverse of CPU per request.',
  );
  out.push(
    `- **Over HTTP** (${settings.rounds} alternating rounds × ${settings.seconds} s per route, ${settings.connections} connections, autocannon in the bench process): ` +
      'server CPU is `process.cpuUsage()` of the server over a round divided by the requests it answered. The load generator shares the cores of the machine with the servers (and with any other job on it): on two shared cores, expect ±20 µs per round under Express.',
  );
  out.push(
    `- Heap bytes: what the server allocated on the JS heap per request (\`v8.GCProfiler\`: what each GC freed plus the growth of the used heap), in-process batches of one route at a time, the median of ${HEAP_BATCHES} batches of each.`,
  );
  out.push('');
  out.push(
    `- Rounds at full speed: this machine's speed moved by up to 2.5× from round to round (other tenants of the host), and the guard's microseconds stretch with it. ` +
      `The in-process targets are read in the rounds whose do-nothing route cost at most ${FULL_SPEED_FACTOR} × the cheapest round's; the median over all rounds is beside it.`,
  );
  out.push('');
  out.push('| target | in process, rounds at full speed: median (all rounds: median, range) | over HTTP: median (range over rounds) | status (in process / HTTP) |');
  out.push('|---|---|---|---|');
  for (const adapter of ADAPTERS) {
    const t = ADAPTER_TARGETS[adapter];
    const ip = pick(results.inProcess, adapter, 'guard');
    const http = pick(results.rows, adapter, 'guard');
    const full = ip.fullSpeed;
    out.push(
      `| ${adapter}: ApiTokenGuard within ${t.cpuOverNoop} µs CPU of the do-nothing guard | ${f(full.cpuOverNoop, 1)} µs in ${full.rounds} of ${rounds} rounds (all: ${f(ip.cpuOverNoop, 1)} µs, ${range(ip.cpuOverNoopRange, 1)}) | ${f(http.cpuOverNoop, 1)} µs (${range(http.cpuOverNoopRange, 1)}) | ${status(full.cpuOverNoop <= t.cpuOverNoop)} / ${status(http.cpuOverNoop <= t.cpuOverNoop)} |`,
    );
    out.push(
      `| ${adapter}: ApiTokenGuard throughput ≥ ${t.rpsToNoop} of the do-nothing guard | ${f(full.speedToNoop, 3)} in ${full.rounds} of ${rounds} rounds (all: ${f(ip.speedToNoop, 3)}) | ${f(http.rpsToNoop)} (${range(http.rpsToNoopRange)}) | ${status(full.speedToNoop >= t.rpsToNoop)} / ${status(http.rpsToNoop >= t.rpsToNoop)} |`,
    );
  }
  for (const adapter of ADAPTERS) {
    const ip = pick(results.inProcess, adapter, 'guard');
    const noop = pick(results.inProcess, adapter, 'noop');
    const http = pick(results.rows, adapter, 'guard');
    out.push(`| ${adapter}: heap bytes per hot request, over the do-nothing guard | ${f(ip.heapBytes - noop.heapBytes, 0)} B (${f(ip.heapBytes, 0)} vs ${f(noop.heapBytes, 0)}) | | see notes |`);
    out.push(`| ${adapter}: ≤ 0.01 Redis commands per hot request | | ${f(http.redisPerRequest, 5)} | – / ${status(http.redisPerRequest <= 0.01)} |`);
  }
  out.push('');
  out.push('### In process');
  out.push('');
  out.push('| adapter | route | CPU µs / req (rounds) | CPU − do-nothing, µs (rounds) | speed × do-nothing | heap B / req | non-200 |');
  out.push('|---|---|---:|---:|---:|---:|---:|');
  for (const r of results.inProcess) {
    out.push(`| ${r.adapter} | ${r.label} | ${f(r.cpu, 1)} (${range(r.cpuRange, 1)}) | ${f(r.cpuOverNoop, 2)} (${range(r.cpuOverNoopRange, 2)}) | ${f(r.speedToNoop, 3)} | ${f(r.heapBytes, 0)} | ${r.failed} |`);
  }
  out.push('');
  out.push('### Over HTTP');
  out.push('');
  out.push('| adapter | route | req/s | × no guard | × do-nothing (rounds) | p50 ms | p99 ms | CPU µs / req (rounds) | CPU − do-nothing, µs (rounds) | heap B / req | Redis / req | non-2xx |');
  out.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results.rows) {
    out.push(
      `| ${r.adapter} | ${r.label} | ${f(r.rps, 0)} | ${f(r.rpsToUnguarded)} | ${f(r.rpsToNoop)} (${range(r.rpsToNoopRange)}) | ${f(r.p50)} | ${f(r.p99)} | ${f(r.cpu, 1)} (${range(r.cpuRange, 1)}) | ${f(r.cpuOverNoop, 1)} (${range(r.cpuOverNoopRange, 1)}) | ${f(r.heapBytes, 0)} | ${f(r.redisPerRequest, 5)} | ${r.failed} |`,
    );
  }
  for (const p of results.profiles) {
    out.push('');
    out.push(
      `### CPU profile, ${p.adapter}, in process: do-nothing guard ${f(p.noop.microsPerRequest, 1)} µs busy / request, ApiTokenGuard ${f(p.guard.microsPerRequest, 1)} µs ` +
        `(${p.guard.requests} requests each, V8 sampling profiler through \`node:inspector\`; .tmp/bench/${p.adapter}-*.cpuprofile)`,
    );
    out.push('');
    out.push('| library functions, inclusive | µs / request |');
    out.push('|---|---:|');
    for (const [name, micros] of [...p.guard.library].sort((a, b) => b[1] - a[1]).slice(0, 10)) out.push(`| \`${name}\` | ${f(micros)} |`);
    out.push('');
    out.push('| self time, ApiTokenGuard − do-nothing guard (largest changes either way) | µs / request |');
    out.push('|---|---:|');
    const names = new Set([...p.noop.self.keys(), ...p.guard.self.keys()]);
    const deltas = [...names].map((name) => [name, (p.guard.self.get(name) ?? 0) - (p.noop.self.get(name) ?? 0)] as const);
    for (const [name, delta] of deltas.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 12)) out.push(`| \`${name}\` | ${delta >= 0 ? '+' : ''}${f(delta)} |`);
  }
  return out.join('\n');
}
