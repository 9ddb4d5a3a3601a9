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
 * over rounds: a batch holds one young-generation GC or two, which moves its figure by ~±50k (so
 * compare routes within a round, and look at the dumps: `callgrind_annotate`). BENCH_IR_PERF=1 also has V8 write
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

/** Each dump of a run: its label (`route round`) and total instructions (Ir). */
function dumps(base: string): { label: string; ir: number; file: string }[] {
  const found: { label: string; ir: number; file: string }[] = [];
  for (let part = 1; existsSync(`${base}.${part}`); part++) {
    const file = `${base}.${part}`;
    const text = readFileSync(file, 'utf8');
    const label = /^desc: Trigger: dump (.*)$/m.exec(text)?.[1];
    const ir = /^totals: (\d+)/m.exec(text)?.[1];
    if (label === undefined || ir === undefined) throw new Error(`unreadable dump ${file}`);
    found.push({ label, ir: Number(ir), file });
  }
  return found;
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
  const cleanup = new Cleanup();
  try {
    const redis = await startRedis(cleanup);
    const { url: databaseUrl, hotToken } = await createBenchDatabase(cleanup);
    for (const adapter of adapters) {
      const base = join(dir, `${adapter}.out`);
      for (const old of readdirSync(dir)) if (old.startsWith(`${adapter}.out`)) rmSync(join(dir, old));
      const env = { ...process.env, BENCH_ADAPTER: adapter, BENCH_IR_ROUNDS: String(rounds), BENCH_IR_BATCH: String(batch), BENCH_IR_TOKEN: hotToken, DATABASE_URL: databaseUrl, REDIS_URL: redis.url };
      await runUnderValgrind(env, base);
      const all = dumps(base);
      const perRound = (route: string) =>
        Array.from({ length: rounds }, (_, round) => {
          const of = (label: string) => all.find((d) => d.label === `${label} ${round}`)!.ir;
          return (of(route) - of('empty')) / batch;
        });
      const noop = perRound('noop');
      const lines = (Object.keys(ROUTES) as Route[]).map((route) => {
        const ir = perRound(route);
        const over = ir.map((v, i) => v - noop[i]);
        return `${adapter} ${route.padEnd(5)} ${median(ir).toFixed(0).padStart(7)} Ir/request (${Math.min(...ir).toFixed(0)} to ${Math.max(...ir).toFixed(0)}), − noop ${median(over).toFixed(0)} (${Math.min(...over).toFixed(0)} to ${Math.max(...over).toFixed(0)})`;
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
