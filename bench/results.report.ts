import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { BenchContext } from './bench.infra';
import type { FloodRow } from './flood.bench';
import type { ProfileSummary } from './hot-path.profile';
import type { StampedeTrial } from './stampede.bench';
import type { ThroughputRow } from './throughput.bench';

/** The outcome of a scenario another file provides (flush, revocation). */
export type Optional = { status: 'ran'; result: unknown } | { status: 'not available' | 'failed'; reason: string };

export interface BenchResults {
  machine: { cpus: number; model: string; memoryGiB: number; node: string; postgres: string; redis: string };
  date: string;
  seconds: number;
  settings: BenchContext['settings'];
  throughput: ThroughputRow[];
  profiles: ProfileSummary[];
  stampede: StampedeTrial[];
  floods: FloodRow[];
  flush: Optional;
  revocation: Optional;
}

const BEGIN = '<!-- bench:begin: written by `npm run bench`; edit outside these markers -->';
const END = '<!-- bench:end -->';

/** Writes the generated part of RESULTS.md, keeping whatever is written outside the markers. */
export function writeResults(path: string, results: BenchResults): void {
  const generated = `${BEGIN}\n${render(results)}\n${END}`;
  const old = existsSync(path) ? readFileSync(path, 'utf8') : '';
  const from = old.indexOf(BEGIN);
  const to = old.indexOf(END);
  const text =
    from >= 0 && to > from
      ? old.slice(0, from) + generated + old.slice(to + END.length)
      : `${generated}\n\n## Notes\n\n(Where each target stands and why: written by hand after a run.)\n`;
  writeFileSync(path, text);
}

/**
 * Writes one scenario's part of RESULTS.md between markers of its own (after the main part when it is
 * not there yet), so that a run of that scenario alone leaves the rest of the file as it was.
 */
export function writeSection(path: string, name: string, markdown: string): void {
  const begin = `<!-- bench:${name}:begin: written by \`npm run bench\` or \`npm run bench -- ${name}\`; edit outside these markers -->`;
  const end = `<!-- bench:${name}:end -->`;
  const old = existsSync(path) ? readFileSync(path, 'utf8') : '';
  const generated = `${begin}\n${markdown}\n${end}`;
  const from = old.indexOf(begin.slice(0, begin.indexOf(':begin') + 6));
  const to = old.indexOf(end);
  if (from >= 0 && to > from) return writeFileSync(path, old.slice(0, from) + generated + old.slice(to + end.length));
  const after = old.indexOf(END);
  const at = after >= 0 ? after + END.length : old.length;
  writeFileSync(path, `${old.slice(0, at)}\n\n${generated}${old.slice(at)}`);
}

const f = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : '–');
const pct = (n: number) => `${(n * 100).toFixed(1)} %`;
const perCommand = (byCommand: Record<string, number>) =>
  Object.entries(byCommand)
    .sort((a, b) => b[1] - a[1])
    .map(([c, n]) => `${c} ${f(n, 4)}`)
    .join(', ') || 'none';

function render(r: BenchResults): string {
  const { settings: s, machine: m } = r;
  const by = (name: string) => r.throughput.find((row) => row.name === name)!;
  const hot = by('default');
  const malformed = r.floods.find((row) => row.kind === 'malformed');
  const flushSeconds = findNumber(r.flush, /second|duration|elapsed/i);
  const out: string[] = [];
  out.push(
    '# Benchmark results',
    '',
    `- Date: ${r.date} (the run took ${f(r.seconds, 0)} s)`,
    `- Command: \`BENCH_ROUNDS=${s.rounds} BENCH_SECONDS=${s.seconds} BENCH_CONNECTIONS=${s.connections} npm run bench\` (these are the defaults: \`npm run bench\` alone is the same)`,
    `- Machine: ${m.cpus} CPUs (\`nproc\`), ${m.model}, ${f(m.memoryGiB, 1)} GiB memory; Node ${m.node}, PostgreSQL ${m.postgres}, Redis ${m.redis}`,
    `- Set-up: load generator (autocannon, in the bench process), six server processes (Express; one per route, plus a second instance for the stampede), a private redis-server and a private database, all on this one machine.`,
    `  Redis commands are those the server processes sent (counted at ioredis' \`sendCommand\`: round trips); "executed" adds what Redis ran inside scripts (\`INFO commandstats\` deltas of the private redis-server, INFO left out). Neither counts the invalidation channel's liveness ping (one PUBLISH a second per server, whatever the requests). Database queries are the token lookups (\`FROM api_tokens … WHERE token = $1\`), counted by a pg Client in each server.`,
    '',
    '## Targets',
    '',
    '| target | measured | status |',
    '|---|---|---|',
    `| guarded throughput ≥ 0.95 of the unguarded route, hot token | ${f(hot.rpsRatio)} (rounds: ${f(hot.rpsRatioRange[0])}–${f(hot.rpsRatioRange[1])}); server CPU per request ${f(hot.cpuRatio)} × the unguarded route's, a do-nothing guard ${f(by('noop').cpuRatio)} × | ${hot.rpsRatio >= 0.95 ? 'met' : 'missed'} |`,
    `| ≤ 0.01 Redis commands per hot request | ${f(hot.redisPerRequest, 5)} sent (${f(hot.redisExecutedPerRequest, 5)} executed) | ${Math.max(hot.redisPerRequest, hot.redisExecutedPerRequest) <= 0.01 ? 'met' : 'missed'} |`,
    `| one database query per stampede | ${r.stampede.map((t) => t.lookups).join(', ')} (${r.stampede.length} trials of ${s.stampede} requests) | ${r.stampede.every((t) => t.lookups === 1) ? 'met' : 'missed'} |`,
    `| no I/O for malformed tokens | ${malformed ? `${f(malformed.lookupsPerRequest, 4)} queries, ${f(malformed.redisPerRequest, 4)} Redis commands (${f(malformed.redisExecutedPerRequest, 4)} executed) per request` : '–'} | ${malformed && malformed.lookupsPerRequest === 0 && malformed.redisPerRequest === 0 && malformed.redisExecutedPerRequest === 0 ? 'met' : 'missed'} |`,
    `| flush of 100,000 keys < 5 s | ${flushSeconds === undefined ? r.flush.status : `${f(flushSeconds)} s`} | ${flushSeconds === undefined ? 'not measured' : flushSeconds < 5 ? 'met' : 'missed'} |`,
    '',
    `## 1. Throughput (${s.rounds} alternating rounds × ${s.seconds} s per route, ${s.connections} connections, after a ${s.warmupSeconds} s warm-up each)`,
    '',
    'Medians over the rounds; each ratio is the median of the per-round ratios to the unguarded route of the same round. Server CPU is the process\'s user + system time over all rounds divided by the requests it answered (the load generator shares the two cores, so this is the cleaner measure of what a route costs).',
    '',
    '| route | req/s | × unguarded | p50 ms | × unguarded | p99 ms | × unguarded | server CPU µs / req | × unguarded | Redis commands / req | executed / req | DB queries / req | non-2xx |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.throughput.map(
      (t) =>
        `| ${t.label} | ${f(t.rps, 0)} | ${f(t.rpsRatio)} | ${f(t.p50)} | ${f(t.p50Ratio)} | ${f(t.p99)} | ${f(t.p99Ratio)} | ${f(t.cpuMicrosPerRequest, 0)} | ${f(t.cpuRatio)} | ${f(t.redisPerRequest, 4)} | ${f(t.redisExecutedPerRequest, 4)} | ${f(t.lookupsPerRequest, 4)} | ${t.failed} |`,
    ),
    '',
    'Redis commands sent per request, by command:',
    '',
    ...r.throughput.map((t) => `- ${t.name}: ${perCommand(t.redisByCommand)}`),
    '',
    `## 2. Stampede (${s.stampede} concurrent first requests for one new token, half to each of two instances)`,
    '',
    '| trial | requests | 200 | DB lookups | Redis commands | executed | ms | longest event-loop delay, ms |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.stampede.map((t, i) => `| ${i + 1} | ${t.requests} | ${t.ok} | ${t.lookups} | ${t.redisCommands} | ${t.redisExecuted} | ${f(t.milliseconds, 0)} | ${f(t.eventLoopDelayMaxMs, 0)} |`),
    '',
    ...r.stampede.map((t, i) => `- trial ${i + 1} Redis commands sent: ${Object.entries(t.redisByCommand).map(([c, n]) => `${c} ${n}`).join(', ') || 'none'}`),
    '',
    `## 3. Floods (${s.floodSize} distinct tokens each, ${s.connections} connections, default configuration)`,
    '',
    '| tokens | requests | 401 | req/s | p50 ms | p99 ms | server CPU µs / req | DB queries / req | Redis commands / req | executed / req | hot token req/s during a flood / alone |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.floods.map(
      (x) =>
        `| ${x.kind} | ${x.requests} | ${x.unauthorized} | ${f(x.rps, 0)} | ${f(x.p50)} | ${f(x.p99)} | ${f(x.cpuMicrosPerRequest, 0)} | ${f(x.lookupsPerRequest, 4)} | ${f(x.redisPerRequest, 4)} | ${f(x.redisExecutedPerRequest, 4)} | ${f(x.hotRpsDuring, 0)} / ${f(x.hotRpsAlone, 0)} = ${f(x.hotRpsDuring / x.hotRpsAlone)} |`,
    ),
    '',
    ...r.floods.map((x) => `- ${x.kind}: Redis commands sent per request: ${perCommand(x.redisByCommand)}`),
    ...r.floods.map(
      (x) =>
        `- ${x.kind}: CPU per request ${f(x.cpuRatio ?? NaN)}× the malformed flood's; PostgreSQL ${f(x.lookupsPerSecond, 0)} lookups/s, at most ${x.lookupsMaxConcurrent} at once (budget 8); ` +
        `shed (the limited row: 429) ${x.shed}; hot-token requests refused during the flood ${x.hotRefusedDuring}` +
        (x.createdDuring ? `; a token created mid-flood: first request ${x.createdDuring.firstStatus}, accepted after ${f(x.createdDuring.msUntilAccepted, 0)} ms` : ''),
    ),
    '- limited: unknown tokens from one client on a server with `failedAttemptLimit: { limit: 100, windowSeconds: 60 }`; the hot token is another client.',
    '',
    '## 4. Flush (100,000 active keys; `runFlushBench()` from bench/flush.bench.ts)',
    '',
    renderOptional(r.flush),
    '',
    '## 5. Revocation (`runRevocationBench()` from bench/revocation.bench.ts)',
    '',
    renderOptional(r.revocation),
    '',
    ...renderProfiles(r.profiles, s.connections),
  );
  return out.join('\n');
}

function renderProfiles(profiles: ProfileSummary[], connections: number): string[] {
  const [open, noop, hot] = profiles;
  const top = (map: Map<string, number>, n: number) => [...map].sort((a, b) => b[1] - a[1]).slice(0, n);
  const added = new Map<string, number>();
  for (const [name, micros] of hot.self) added.set(name, micros - (noop.self.get(name) ?? 0));
  const kinds = [...new Set(profiles.flatMap((p) => [...p.kinds.keys()]))].sort((a, b) => (hot.kinds.get(b) ?? 0) - (hot.kinds.get(a) ?? 0));
  const us = (n: number | undefined) => f(n ?? 0, 1);
  return [
    `## 6. CPU profile of the hot path (one ${f(hot.seconds, 0)} s load round per route, ${connections} connections)`,
    '',
    'V8\'s sampling profiler on the server process, started and stopped through `node:inspector` around exactly one load round ' +
      '(`node --cpu-prof` would also record start-up and the other scenarios); the profiles are in `.tmp/bench/*.cpuprofile` (open them in Chrome DevTools). ' +
      'Figures are busy CPU microseconds per request: samples × sampling interval / requests answered.',
    '',
    `| | ${profiles.map((p) => p.route).join(' | ')} |`,
    `|---|${profiles.map(() => '---:').join('|')}|`,
    `| requests in the round | ${profiles.map((p) => p.requests).join(' | ')} |`,
    `| idle share | ${profiles.map((p) => pct(p.idle)).join(' | ')} |`,
    `| **busy µs / request** | ${profiles.map((p) => `**${us(p.microsPerRequest)}**`).join(' | ')} |`,
    ...kinds.map((kind) => `| ${kind} | ${profiles.map((p) => us(p.kinds.get(kind))).join(' | ')} |`),
    '',
    `The unguarded route costs ${us(open.microsPerRequest)} µs, a do-nothing guard ${us(noop.microsPerRequest)} µs, ApiTokenGuard with a hot token ${us(hot.microsPerRequest)} µs.`,
    '',
    '| library functions (default configuration), inclusive | µs / request |',
    '|---|---:|',
    ...top(hot.library, 12).map(([name, micros]) => `| \`${name}\` | ${f(micros, 2)} |`),
    '',
    '| functions whose self time grows most from the do-nothing guard to ApiTokenGuard | µs / request added |',
    '|---|---:|',
    ...top(added, 12).map(([name, micros]) => `| \`${name}\` | ${f(micros, 2)} |`),
    '',
    '| top functions by self time, ApiTokenGuard, hot token | µs / request |',
    '|---|---:|',
    ...top(hot.self, 12).map(([name, micros]) => `| \`${name}\` | ${f(micros, 2)} |`),
  ];
}

function renderOptional(o: Optional): string {
  if (o.status !== 'ran') return `${o.status === 'failed' ? 'Failed' : 'Not available'}: ${o.reason}.`;
  const result = o.result;
  if (typeof result === 'string') return result;
  if (result && typeof result === 'object') {
    const markdown = (result as { markdown?: unknown }).markdown;
    if (typeof markdown === 'string') return markdown;
    const rows = Object.entries(result as Record<string, unknown>).map(
      ([k, v]) => `| ${k} | ${typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : typeof v === 'string' ? v : JSON.stringify(v)} |`,
    );
    return ['| figure | value |', '|---|---|', ...rows].join('\n');
  }
  return `Result: ${JSON.stringify(result)}`;
}

function findNumber(o: Optional, key: RegExp): number | undefined {
  if (o.status !== 'ran' || !o.result || typeof o.result !== 'object') return undefined;
  const hit = Object.entries(o.result as Record<string, unknown>).find(([k, v]) => key.test(k) && typeof v === 'number');
  return hit?.[1] as number | undefined;
}
