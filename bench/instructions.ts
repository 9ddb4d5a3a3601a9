import 'reflect-metadata';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Cleanup, createBenchDatabase, startRedis } from './bench.infra';
import { median } from './bench.load';
import { type Adapter, createBenchApp, injector } from './bench.server';

/**
 * Instructions per request, counted by valgrind's callgrind: deterministic where CPU time on this
 * shared two-core machine is not (the same code path gives the same count under load).
 *
 * `npx ts-node -r tsconfig-paths/register --transpile-only bench/instructions.ts [express|fastify ...]`
 * starts a private redis-server and database (as bench/run.ts does), then per adapter runs one bench
 * application in process under `valgrind --tool=callgrind --instr-atstart=no`. It warms up with the
 * three routes in turn, turns instrumentation on (`callgrind_control -i on`), then in each round sends
 * BENCH_IR_BATCH requests of each route (order rotating from round to round, as the in-process bench
 * does) through light-my-request, dumping the counters after each batch (`callgrind_control -d`) and
 * once more with no request between, to subtract what a dump costs. A route's figure is the median
 * over its batches that hold no garbage collection (see {@link GC_BATCH_FACTOR}); BENCH_IR_CACHE=1 adds
 * instruction-cache misses (I1mr), data-cache misses (D1mr) and mispredicted branches (Bcm). Look at
 * the dumps with `callgrind_annotate`. BENCH_IR_PERF=1 also has V8 write
 * /tmp/perf-<pid>.map, which names the JIT code that callgrind shows as addresses.
 */

const ROUTES = { open: '/bench/open', noop: '/bench/noop', guard: '/bench/guard' } as const;
type Route = keyof typeof ROUTES;

async function child(): Promise<void> {
  const adapter = process.env.BENCH_ADAPTER as Adapter;
  const rounds = Number(process.env.BENCH_IR_ROUNDS);
  const batch = Number(process.env.BENCH_IR_BATCH);
  const control = (...args: string[]) => execFileSync('callgrind_control', [...args, String(process.pid)], { stdio: 'ignore' });
  // Under valgrind time runs ~50× slower: without these, the L1 entry's 10 s life and the usage
  // recorder's 1 s coalescing would run out inside a batch, adding Redis round trips that a hot token
  // at full speed pays once in thousands of requests.
  const app = await createBenchApp('default', adapter, { localCacheTtlMs: 600_000, usageWriteIntervalMs: 60_000 });
  await app.listen(0, '127.0.0.1');
  const send = injector(app, `Bearer ${process.env.BENCH_IR_TOKEN}`);
  const names = Object.keys(ROUTES) as Route[];
  for (let i = 0; i < Number(process.env.BENCH_IR_WARMUP ?? 3000); i++) {
    for (const name of names) {
      const answer = await send(ROUTES[name]);
      if (answer.statusCode !== 200) throw new Error(`${name} answered ${answer.statusCode}: ${answer.body}`);
    }
  }
  control('-i', 'on');
  for (let round = 0; round < rounds; round++) {
    for (let r = 0; r < names.length; r++) {
      const name = names[(round + r) % names.length];
      control('-z');
      let ok = 0;
      for (let i = 0; i < batch; i++) if ((await send(ROUTES[name])).statusCode === 200) ok++;
      if (ok !== batch) throw new Error(`${name}: ${batch - ok} of ${batch} requests failed`);
      control('-d', `${name} ${round}`);
    }
    control('-z');
    control('-d', `empty ${round}`);
  }
  control('-i', 'off');
  process.exit(0);
}

/** Each dump of a run: its label (`route round`) and its totals by event (Ir, and with the cache simulation I1mr…). */
function dumps(base: string): { label: string; totals: Record<string, number> }[] {
  const found: { label: string; totals: Record<string, number> }[] = [];
  for (let part = 1; existsSync(`${base}.${part}`); part++) {
    const file = `${base}.${part}`;
    const text = readFileSync(file, 'utf8');
    const label = /^desc: Trigger: dump (.*)$/m.exec(text)?.[1];
    const events = /^events: (.*)$/m.exec(text)?.[1].split(' ');
    const totals = /^totals: (.*)$/m.exec(text)?.[1].split(' ').map(Number);
    if (label === undefined || events === undefined || totals === undefined) throw new Error(`unreadable dump ${file}`);
    found.push({ label, totals: Object.fromEntries(events.map((event, i) => [event, totals[i]])) });
  }
  return found;
}

/**
 * A batch that holds a garbage collection counts two to four times one that does not (the collection,
 * and the background threads' marking and sweeping, which callgrind counts too): batches over
 * {@link GC_BATCH_FACTOR} × the route's cheapest are left out, and each route's figure is the median
 * of the rest. GC is reported by the heap-bytes figure of `npm run bench`, not here.
 */
const GC_BATCH_FACTOR = 1.25;

/** Per request, per route: the median over the route's batches without a GC, and how many there were. */
function perRequest(all: ReturnType<typeof dumps>, route: string, event: string, rounds: number, batch: number): { value: number; clean: number } {
  const irOf = (label: string) => all.find((d) => d.label === label)!.totals;
  const batches = Array.from({ length: rounds }, (_, round) => {
    const totals = irOf(`${route} ${round}`);
    return { ir: totals.Ir, value: totals[event] - irOf(`empty ${round}`)[event] };
  });
  const cheapest = Math.min(...batches.map((b) => b.ir));
  const clean = batches.filter((b) => b.ir <= cheapest * GC_BATCH_FACTOR);
  return { value: median(clean.map((b) => b.value)) / batch, clean: clean.length };
}

function runUnderValgrind(env: NodeJS.ProcessEnv, out: string): Promise<void> {
  const args = [
    '--tool=callgrind',
    '--instr-atstart=no',
    '--smc-check=all-non-file',
    // BENCH_IR_CACHE=1: also simulate caches and branch prediction (misses per request; ~2× slower).
    ...(process.env.BENCH_IR_CACHE === '1' ? ['--cache-sim=yes', '--branch-sim=yes'] : []),
    `--callgrind-out-file=${out}`,
    process.execPath,
    ...(process.env.BENCH_IR_PERF === '1' ? ['--perf-basic-prof'] : []),
    '-r', 'ts-node/register/transpile-only',
    '-r', 'tsconfig-paths/register',
    __filename,
    '--child',
  ];
  return new Promise((done, fail) => {
    const proc = spawn('valgrind', args, { env: { ...env, TS_NODE_TRANSPILE_ONLY: 'true' }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    proc.on('exit', (code) => (code === 0 ? done() : fail(new Error(`valgrind exited ${code}:\n${stderr.slice(-3000)}`))));
  });
}

async function main(): Promise<void> {
  const adapters = (process.argv.slice(2).length ? process.argv.slice(2) : ['express', 'fastify']) as Adapter[];
  const rounds = Number(process.env.BENCH_IR_ROUNDS ?? 7);
  const batch = Number(process.env.BENCH_IR_BATCH ?? 500);
  const dir = resolve('.tmp', 'bench', process.env.BENCH_IR_DIR ?? 'callgrind');
  mkdirSync(dir, { recursive: true });
  // BENCH_IR_REPORT=1: read the dumps of an earlier run in BENCH_IR_DIR again (same rounds and batch), run nothing.
  const reportOnly = process.env.BENCH_IR_REPORT === '1';
  const cleanup = new Cleanup();
  try {
    const stores = reportOnly ? undefined : { redis: await startRedis(cleanup), ...(await createBenchDatabase(cleanup)) };
    for (const adapter of adapters) {
      const base = join(dir, `${adapter}.out`);
      if (stores) {
        for (const old of readdirSync(dir)) if (old.startsWith(`${adapter}.out`)) rmSync(join(dir, old));
        const { redis, url, hotToken } = stores;
        const env = { ...process.env, BENCH_ADAPTER: adapter, BENCH_IR_ROUNDS: String(rounds), BENCH_IR_BATCH: String(batch), BENCH_IR_TOKEN: hotToken, DATABASE_URL: url, REDIS_URL: redis.url };
        await runUnderValgrind(env, base);
      }
      const all = dumps(base);
      const events = ['Ir', ...(process.env.BENCH_IR_CACHE === '1' ? ['I1mr', 'D1mr', 'Bcm'] : [])];
      const noop = Object.fromEntries(events.map((event) => [event, perRequest(all, 'noop', event, rounds, batch).value]));
      const lines = (Object.keys(ROUTES) as Route[]).map((route) => {
        const figures = events.map((event) => {
          const { value, clean } = perRequest(all, route, event, rounds, batch);
          return { event, value, over: value - noop[event], clean };
        });
        return `${adapter} ${route.padEnd(5)} ` + figures.map((f) => `${f.event} ${f.value.toFixed(0)} (− noop ${f.over.toFixed(0)})`).join(', ') + `; ${figures[0].clean} of ${rounds} batches without a GC`;
      });
      console.log(lines.join('\n'));
    }
  } finally {
    await cleanup.run();
  }
}

if (process.argv.includes('--child')) {
  child().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
} else {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
