import { trace, context, propagation } from '@opentelemetry/api';
import { BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { ATTR, inSpan } from '../libs/api-token/src/metrics/api-token.tracing';

/**
 * What the tracing wrapper costs per span, in process, against the same work called directly:
 * `NODE_OPTIONS=--expose-gc npx ts-node -r tsconfig-paths/register --transpile-only bench/tracing.bench.ts`
 * (with --expose-gc, a collection between rounds keeps one variant's garbage out of the next). Three variants take
 * turns round by round (BENCH_ROUNDS, default 15; BENCH_CALLS per round, default 20,000): the work
 * called directly (an async function that awaits nothing, as cheap as a span's body can be), through
 * `inSpan` with no SDK registered, and through `inSpan` with an SDK registered (batched, spans
 * dropped). Prints the median ns per call of each; a lookup past the in-process cache, where a span
 * is made, is a Redis round trip (~100 µs and more) besides.
 */
const rounds = Number(process.env.BENCH_ROUNDS ?? 15);
const calls = Number(process.env.BENCH_CALLS ?? 20_000);

const work = async (): Promise<number> => 1;
const attributes = () => ({ [ATTR.scope]: 'app' });

async function direct(): Promise<void> {
  for (let i = 0; i < calls; i++) await work();
}

async function wrapped(): Promise<void> {
  for (let i = 0; i < calls; i++) await inSpan('api_token.bench', attributes(), work);
}

let provider: NodeTracerProvider | undefined;
async function sdk(on: boolean): Promise<void> {
  if (on) {
    const discard = { export: (_: unknown, done: (result: { code: number }) => void) => done({ code: 0 }), shutdown: async () => undefined };
    provider = new NodeTracerProvider({ spanProcessors: [new BatchSpanProcessor(discard)] });
    provider.register();
  } else if (provider) {
    await provider.shutdown();
    trace.disable();
    context.disable();
    propagation.disable();
    provider = undefined;
  }
}

async function time(run: () => Promise<void>): Promise<number> {
  const started = process.hrtime.bigint();
  await run();
  return Number(process.hrtime.bigint() - started) / calls;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

async function main(): Promise<void> {
  const figures: Record<'direct' | 'off' | 'on', number[]> = { direct: [], off: [], on: [] };
  // A round of each to warm up, not counted.
  for (let round = -1; round < rounds; round++) {
    const order = (['direct', 'off', 'on'] as const).map((_, i, all) => all[(i + Math.max(round, 0)) % all.length]);
    for (const variant of order) {
      // A round's garbage (the SDK's spans) is collected before the next round, not inside it.
      (globalThis as { gc?: () => void }).gc?.();
      await sdk(variant === 'on');
      const ns = await time(variant === 'direct' ? direct : wrapped);
      await sdk(false);
      if (round >= 0) figures[variant].push(ns);
    }
  }
  const [d, off, on] = [median(figures.direct), median(figures.off), median(figures.on)];
  console.log(`ns per call, median of ${rounds} rounds of ${calls}: direct ${d.toFixed(0)}, inSpan without an SDK ${off.toFixed(0)} (+${(off - d).toFixed(0)}), inSpan with an SDK ${on.toFixed(0)} (+${(on - d).toFixed(0)})`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
