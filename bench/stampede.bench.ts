import type { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { type BenchContext, measure } from './bench.infra';
import { burst } from './bench.load';

export interface StampedeTrial {
  requests: number;
  ok: number;
  lookups: number;
  redisCommands: number;
  redisExecuted: number;
  redisByCommand: Record<string, number>;
  milliseconds: number;
  /** Longest event-loop delay of the two instances during the trial. */
  eventLoopDelayMaxMs: number;
}

/**
 * `stampede` first requests at once for one new token, half to each of two instances (default
 * configuration), over sockets opened beforehand; counts the database lookups. Repeated `trials` times.
 */
export async function runStampedeBench(context: BenchContext, repository: ApiTokenRepository, trials = 3): Promise<StampedeTrial[]> {
  const servers = [context.servers.default, context.servers.second];
  const perServer = Math.floor(context.settings.stampede / servers.length);
  const out: StampedeTrial[] = [];
  for (let trial = 0; trial < trials; trial++) {
    const { token } = await repository.insert({ token: generateApiToken('app'), type: 'app' });
    let milliseconds = 0;
    const m = await measure(context, servers, async () => {
      const started = performance.now();
      const statuses = await burst(servers.map((s) => `${s.url}/app/whoami`), perServer, `Bearer ${token}`, '/bench/open');
      milliseconds = performance.now() - started;
      return statuses;
    });
    out.push({
      requests: m.result.length,
      ok: m.result.filter((s) => s === 200).length,
      lookups: m.lookups,
      redisCommands: m.redisCommands,
      redisExecuted: m.redisExecuted,
      redisByCommand: Object.fromEntries(m.redisByCommand),
      milliseconds,
      eventLoopDelayMaxMs: m.eventLoopDelayMaxMs,
    });
    console.log(`  trial ${trial + 1}: ${m.result.length} requests, ${out[trial].ok} answered 200, ${m.lookups} database lookup(s), ${m.redisCommands} Redis commands, event loop delayed up to ${m.eventLoopDelayMaxMs.toFixed(0)} ms`);
  }
  return out;
}
