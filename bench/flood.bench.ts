import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { randomBytes } from 'node:crypto';
import { type BenchContext, type BenchServer, measure } from './bench.infra';
import { BENCH_CLIENT_HEADER } from './server.process';
import { load } from './bench.load';
import type { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';

export interface FloodRow {
  /** `limited`: unknown tokens from one client, on a server with the recommended `failedAttemptLimit` (100 / 60 s). */
  kind: 'unknown' | 'malformed' | 'limited';
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
  /** Requests answered neither 200 nor 401: the lookup budget's 503s (the limited row: its 429s). */
  shed: number;
  /** PostgreSQL lookups per second while the flood ran alone. */
  lookupsPerSecond: number;
  /** Most lookups in flight at once while the flood ran alone (the budget: `maxConcurrentLookups`, 8). */
  lookupsMaxConcurrent: number;
  /** Hot-token requests refused while the flood ran beside it. */
  hotRefusedDuring: number;
  /** This flood's server CPU per request over the malformed flood's, in the same run. */
  cpuRatio?: number;
  /** A valid token created while the flood ran beside the hot token: the first request's status, and ms until one was accepted. */
  createdDuring?: { firstStatus: number; msUntilAccepted: number; refused: number };
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
export async function runFloodBench(
  context: BenchContext,
  hotToken: string,
  repository?: ApiTokenRepository,
  limited?: BenchServer,
): Promise<FloodRow[]> {
  const { floodSize, connections, seconds } = context.settings;
  const kinds: [FloodRow['kind'], BenchServer, (n: number) => string[]][] = [
    ['unknown', context.servers.default, unknownTokens],
    ['malformed', context.servers.default, malformedTokens],
  ];
  if (limited) kinds.push(['limited', limited, unknownTokens]);
  const rows: FloodRow[] = [];
  for (const [kind, server, make] of kinds) {
    const url = `${server.url}/app/whoami`;
    // The limited row's flood names its client (one client for every connection); the hot token is another client.
    const headers = kind === 'limited' ? { [BENCH_CLIENT_HEADER]: `flood-${Date.now()}` } : undefined;
    const flood = (tokens: string[]) => {
      let i = 0;
      return load({ url, connections, amount: tokens.length, headers, nextAuthorization: () => `Bearer ${tokens[i++ % tokens.length]}` });
    };
    const alone = await measure(context, [server], () => flood(make(floodSize)));
    const hotAlone = await load({ url, connections, duration: seconds, authorization: `Bearer ${hotToken}` });
    const during = flood(make(floodSize));
    const hotDuringLoad = load({ url, connections, until: during, authorization: `Bearer ${hotToken}` });
    const created = kind !== 'malformed' && repository ? createdDuringFlood(url, repository) : undefined;
    const hotDuring = await hotDuringLoad;
    await during;
    const createdDuring = await created;
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
      hotRefusedDuring: hotDuring.requests - hotDuring.ok,
      shed: r.other,
      lookupsPerSecond: alone.lookups / r.seconds,
      lookupsMaxConcurrent: alone.lookupsMaxConcurrent,
      createdDuring,
    });
    console.log(
      `  ${kind}: ${r.requests} requests (${r.unauthorized} × 401, ${r.other} other) at ${r.rps.toFixed(0)} req/s, ${(alone.lookups / r.requests).toFixed(3)} lookups/req ` +
        `(at most ${alone.lookupsMaxConcurrent} at once), ${(alone.redisCommands / r.requests).toFixed(3)} Redis commands/req; ` +
        `hot token ${hotDuring.rps.toFixed(0)} req/s during vs ${hotAlone.rps.toFixed(0)} alone`,
    );
  }
  const malformed = rows.find((row) => row.kind === 'malformed');
  for (const row of rows) if (malformed) row.cpuRatio = row.cpuMicrosPerRequest / malformed.cpuMicrosPerRequest;
  return rows;
}

/**
 * Inserts a valid token while the flood runs beside the hot token, and asks for it until it is accepted.
 */
async function createdDuringFlood(url: string, repository: ApiTokenRepository): Promise<FloodRow['createdDuring']> {
  const { token } = await repository.insert({ token: generateApiToken('app'), type: 'app' });
  const started = performance.now();
  let firstStatus = 0;
  let refused = 0;
  for (;;) {
    const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
    if (!firstStatus) firstStatus = res.status;
    if (res.status === 200) return { firstStatus, msUntilAccepted: performance.now() - started, refused };
    refused++;
    if (performance.now() - started > 30_000) return { firstStatus, msUntilAccepted: Infinity, refused };
  }
}
