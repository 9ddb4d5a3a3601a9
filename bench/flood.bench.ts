import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { randomBytes } from 'node:crypto';
import { type BenchContext, measure } from './bench.infra';
import { load } from './bench.load';

export interface FloodRow {
  kind: 'unknown' | 'malformed';
  requests: number;
  unauthorized: number;
  rps: number;
  p50: number;
  p99: number;
  lookupsPerRequest: number;
  redisPerRequest: number;
  redisExecutedPerRequest: number;
  /** Server CPU time per flood request, microseconds. */
  cpuMicrosPerRequest: number;
  redisByCommand: Record<string, number>;
  /** Hot-token req/s while a second flood of the same kind runs beside it. */
  hotRpsDuring: number;
  /** Hot-token req/s alone, measured just before. */
  hotRpsAlone: number;
}

/** Well-formed tokens no row holds (Dify's format). */
export const unknownTokens = (n: number): string[] => Array.from({ length: n }, () => generateApiToken('app'));

/** Tokens the shape check refuses: glob and punctuation characters, over-long, or with a space inside. */
export function malformedTokens(n: number): string[] {
  const kinds = [
    (r: string) => `app-${r}*`,
    (r: string) => `[a-z]*${r}`,
    (r: string) => `app-${r}${'x'.repeat(256)}`,
    (r: string) => `app-${r} extra`,
    (r: string) => `app-${r}$%{}`,
  ];
  return Array.from({ length: n }, (_, i) => kinds[i % kinds.length](`${i}-${randomBytes(6).toString('hex')}`));
}

/**
 * Floods the default-configuration instance with `floodSize` distinct unknown tokens, then with
 * as many malformed ones: first alone (I/O per request), then beside hot-token traffic (what the
 * hot token keeps of its throughput).
 */
export async function runFloodBench(context: BenchContext, hotToken: string): Promise<FloodRow[]> {
  const server = context.servers.default;
  const { floodSize, connections, seconds } = context.settings;
  const url = `${server.url}/app/whoami`;
  const flood = (tokens: string[]) => {
    let i = 0;
    return load({ url, connections, amount: tokens.length, nextAuthorization: () => `Bearer ${tokens[i++ % tokens.length]}` });
  };
  const rows: FloodRow[] = [];
  for (const kind of ['unknown', 'malformed'] as const) {
    const make = kind === 'unknown' ? unknownTokens : malformedTokens;
    const alone = await measure(context, [server], () => flood(make(floodSize)));
    const hotAlone = await load({ url, connections, duration: seconds, authorization: `Bearer ${hotToken}` });
    const during = flood(make(floodSize));
    const hotDuring = await load({ url, connections, until: during, authorization: `Bearer ${hotToken}` });
    await during;
    const r = alone.result;
    rows.push({
      kind,
      requests: r.requests,
      unauthorized: r.unauthorized,
      rps: r.rps,
      p50: r.p50,
      p99: r.p99,
      lookupsPerRequest: alone.lookups / r.requests,
      redisPerRequest: alone.redisCommands / r.requests,
      redisExecutedPerRequest: alone.redisExecuted / r.requests,
      cpuMicrosPerRequest: alone.cpuMicros / r.requests,
      redisByCommand: Object.fromEntries([...alone.redisByCommand].map(([c, n]) => [c, n / r.requests])),
      hotRpsDuring: hotDuring.rps,
      hotRpsAlone: hotAlone.rps,
    });
    console.log(
      `  ${kind}: ${r.requests} requests (${r.unauthorized} × 401) at ${r.rps.toFixed(0)} req/s, ${(alone.lookups / r.requests).toFixed(3)} lookups/req, ` +
        `${(alone.redisCommands / r.requests).toFixed(3)} Redis commands/req; hot token ${hotDuring.rps.toFixed(0)} req/s during vs ${hotAlone.rps.toFixed(0)} alone`,
    );
  }
  return rows;
}
