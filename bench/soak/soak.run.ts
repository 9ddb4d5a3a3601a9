import 'reflect-metadata';
import { type ChildProcess, fork } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { cpus, loadavg } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import Redis from 'ioredis';
import { Client } from 'pg';
import { ApiTokenUsageFlushService } from '../../libs/api-token/src';
import { type CreatedApiToken, ApiTokenService } from '../../libs/api-token/src/tokens/api-token.service';
import { TestAppModule } from '../../test/app/app.module';
import { createTestDatabase } from '../../test/support/database';
import { sparePort } from '../../test/support/ports';
import { TcpProxy } from '../../test/support/tcp-proxy';
import { Cleanup, PG_ADMIN_URL } from '../bench.infra';
import { SOAK_BOUNDS } from './soak.bounds';
import { CONNECTION_ERROR, type FaultEvent, type FaultKind, type MemorySample, NO_ANSWER, type RequestKind, type RequestRecord, type SoakHistory, type TokenLife, checkInvariants } from './soak.checker';
import { between, planFaults, seededRandom } from './soak.faults';
import { PrivateRedisServer } from '../../test/support/redis-server';
import { type ReportInput, renderReport } from './soak.report';
import type { InstanceCommand, InstanceSample } from './soak.server';

/**
 * `npm run soak -- --seconds N --seed S [--rate R]`: two instances (separate processes) on one
 * PostgreSQL database and one Redis of the soak's own, mixed traffic, faults on a seeded schedule,
 * then the invariants of bench/soak/soak.checker.ts over everything recorded, and an HTML report.
 * See bench/soak/README.md.
 */

interface Options {
  seconds: number;
  seed: number;
  rate: number;
  rateLimitMode: 'approximate' | 'exact';
  out: string;
  redisPort: number;
}

function parseArgs(argv: string[]): Options {
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const number = (name: string, fallback: number) => {
    const v = value(name);
    if (v === undefined) return fallback;
    if (!/^\d+$/.test(v)) {
      console.error(`soak: --${name} must be a whole number`);
      process.exit(2);
    }
    return Number(v);
  };
  const seconds = number('seconds', 120);
  const seed = number('seed', Math.floor(Math.random() * 1e6));
  const mode = value('rate-limit-mode') ?? 'approximate';
  if (mode !== 'approximate' && mode !== 'exact') {
    console.error('soak: --rate-limit-mode must be approximate or exact');
    process.exit(2);
  }
  return {
    seconds,
    seed,
    // 120 requests/s in all: on two shared cores this leaves the instances, Redis and PostgreSQL room to
    // recover from a fault, which is what is judged (the benches measure speed).
    rate: number('rate', 120),
    rateLimitMode: mode,
    out: value('out') ?? join(__dirname, 'reports', `soak-${seed}-${seconds}s.html`),
    redisPort: number('redis-port', 0),
  };
}

const INSTANCES = 2;
const SAMPLE_MS = 5000;

/** One instance process: forked, killed and restarted by the soak. */
class Instance {
  child: ChildProcess | undefined;
  up = false;
  life = -1;
  // Idle sockets are closed after 4 s, before the server's 5 s keep-alive timeout closes them under a
  // request that reuses one (Node's documented race; the 30-minute run met it once after a Redis kill).
  readonly agent = new Agent({ keepAlive: true, maxSockets: 64, timeout: 4000 });
  private waiters = new Map<string, () => void>();
  dyingInFlush = false;
  /** When the instance said it was killing itself (a moment before the parent sees it exit). */
  diedAt = 0;

  constructor(
    readonly index: number,
    readonly port: number,
    private readonly env: Record<string, string>,
    private readonly onSample: (s: InstanceSample & { instance: number; life: number }) => void,
  ) {}

  async start(): Promise<void> {
    this.life++;
    const life = this.life;
    this.dyingInFlush = false;
    const child = fork(join(__dirname, 'soak.server.ts'), [], {
      execArgv: ['--expose-gc', '-r', 'ts-node/register/transpile-only', '-r', 'tsconfig-paths/register'],
      env: { ...process.env, ...this.env, PORT: String(this.port), SOAK_SAMPLE_MS: String(SAMPLE_MS), TS_NODE_TRANSPILE_ONLY: 'true' },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child = child;
    child.on('message', (m: { type: string } & Partial<InstanceSample>) => {
      if (m.type === 'sample') this.onSample({ ...(m as InstanceSample), instance: this.index, life });
      else if (m.type === 'dying-in-flush') {
        this.dyingInFlush = true;
        this.diedAt = Date.now();
      }
      this.waiters.get(m.type)?.();
    });
    child.once('exit', () => {
      if (this.child === child) {
        this.up = false;
        this.child = undefined;
      }
      this.waiters.get('exit')?.();
    });
    await this.waitFor('ready', 120_000);
    this.up = true;
  }

  waitFor(type: string, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(type);
        resolve(false);
      }, timeoutMs);
      this.waiters.set(type, () => {
        clearTimeout(timer);
        this.waiters.delete(type);
        resolve(true);
      });
    });
  }

  send(command: InstanceCommand): void {
    this.child?.send(command);
  }

  kill(): void {
    this.child?.kill('SIGKILL');
  }
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

async function main(): Promise<void> {
  const dump = process.argv.indexOf('--from-dump');
  if (dump >= 0) return rejudge(process.argv[dump + 1], process.argv.slice(2));
  const options = parseArgs(process.argv.slice(2));
  const command = `npm run soak -- --seconds ${options.seconds} --seed ${options.seed} --rate ${options.rate}${options.rateLimitMode === 'exact' ? ' --rate-limit-mode exact' : ''}`;
  console.log(`soak: seed ${options.seed} (replay: ${command})`);
  const random = seededRandom(options.seed);
  const cleanup = new Cleanup();
  process.once('SIGINT', () => void cleanup.run().then(() => process.exit(130)));
  try {
    const code = await run(options, command, random, cleanup);
    await cleanup.run();
    process.exit(code);
  } catch (error) {
    console.error('soak failed:', (error as Error).message);
    await cleanup.run();
    process.exit(1);
  }
}

async function run(options: Options, command: string, random: () => number, cleanup: Cleanup): Promise<number> {
  const sentinels = process.env.REDIS_SENTINELS;
  const sentinelName = process.env.REDIS_SENTINEL_NAME || 'mymaster';
  // Stores: a database of the run's own (dropped at the end), reached by the instances through a proxy the soak can cut.
  const db = await createTestDatabase(PG_ADMIN_URL, 'api_token_soak');
  cleanup.add(() => db.drop());
  const pgTarget = new URL(PG_ADMIN_URL);
  const pgProxy = await TcpProxy.start(pgTarget.hostname, Number(pgTarget.port || 5432));
  cleanup.add(() => pgProxy.close());
  let redis: PrivateRedisServer | undefined;
  let redisUrl = '';
  if (!sentinels) {
    // Persistent, as a production Redis is: killed, it comes back with what it wrote, less about a second.
    redis = await PrivateRedisServer.start({ port: options.redisPort, appendOnly: true });
    cleanup.add(() => redis!.stop());
    redisUrl = redis.url();
  }
  const sentinelNodes = sentinels?.split(',').map((n) => ({ host: n.split(':')[0], port: Number(n.split(':')[1]) }));

  // The soak's own administration (like the CLI: no HTTP, no flush schedule, no log poll), on PostgreSQL directly.
  @Module({
    imports: [
      TestAppModule.forRoot({
        stores: { databaseUrl: db.url, redisUrl, redisSentinels: sentinelNodes, redisSentinelName: sentinelName },
        apiToken: { flushCron: false, revocationPollIntervalMs: 0 },
        typeorm: { extra: { max: 3 } },
      }),
    ],
  })
  class AdminModule {}
  const admin = await NestFactory.createApplicationContext(AdminModule, { logger: ['error'] });
  cleanup.add(() => admin.close());
  const tokens = admin.get(ApiTokenService);

  const history: SoakHistory = { startedAt: 0, endedAt: 0, instances: INSTANCES, rateLimitMode: options.rateLimitMode, requests: [], tokens: [], faults: [], memory: [], finalUses: [] };
  const secrets: string[] = [];
  const samples: (InstanceSample & { instance: number; life: number })[] = [];
  const addToken = (created: CreatedApiToken, kind: TokenLife['kind'], extra: Partial<TokenLife> = {}): TokenLife => {
    const life: TokenLife = { ref: history.tokens.length, id: created.id, kind, validFrom: Date.now(), ...extra };
    if (created.expiresAt) life.expiresAt = Date.parse(`${created.expiresAt}Z`);
    history.tokens.push(life);
    secrets.push(created.token);
    return life;
  };
  const hot: TokenLife[] = [];
  for (let i = 0; i < 16; i++) hot.push(addToken(await tokens.create({ scope: 'app' }), 'hot'));
  const limits = [
    { limit: 8, windowSeconds: 5 },
    { limit: 20, windowSeconds: 10 },
    { limit: 15, windowSeconds: 5 },
  ];
  const limited: TokenLife[] = [];
  for (const rateLimit of limits) limited.push(addToken(await tokens.create({ scope: 'app', rateLimit }), 'limited', { limit: rateLimit }));

  // Instances, on the proxied database.
  const dbUrl = new URL(pgProxy.proxied(db.url));
  const instances: Instance[] = [];
  const lastSample: (InstanceSample & { life: number })[] = [];
  for (let i = 0; i < INSTANCES; i++) {
    dbUrl.searchParams.set('application_name', `soak-instance-${i}`);
    const env: Record<string, string> = { DATABASE_URL: dbUrl.toString(), SOAK_RATE_LIMIT_MODE: options.rateLimitMode };
    if (sentinels) Object.assign(env, { SOAK_REDIS_SENTINELS: sentinels, REDIS_SENTINEL_NAME: sentinelName });
    else env.REDIS_URL = redisUrl;
    const instance = new Instance(i, await sparePort(), env, (s) => {
      const prev = lastSample[s.instance];
      lastSample[s.instance] = s;
      if (prev?.life === s.life && (s.redisOutages > prev.redisOutages || !s.redisUp || !prev.redisUp)) (history.redisDown ??= []).push({ instance: s.instance, start: prev.t, end: s.t });
      samples.push(s);
      history.memory.push({ instance: s.instance, life: s.life, t: s.t, rssBytes: s.rssBytes, heapBytes: s.heapBytes, loopP99Ms: s.loopLifeP99Ms } satisfies MemorySample);
    });
    cleanup.add(() => instance.kill());
    instances.push(instance);
  }
  await Promise.all(instances.map((i) => i.start()));

  // Load.
  const fixedUnknown = Array.from({ length: 30 }, () => randomToken(random));
  const malformed = ['', 'Bearer', 'Basic dXNlcjpwYXNz', 'Bearer app-***', `Bearer ${'a'.repeat(300)}`, 'Bearer app-[a-z]*', 'Bearer  app-', 'Token abc'];
  const churn: TokenLife[] = [];
  const expiring: TokenLife[] = [];
  let inFlight = 0;
  let nextId = 0;
  const pick = <T>(list: T[]) => list[Math.floor(random() * list.length)];
  const probing = (t: TokenLife, now: number) => now - (t.end?.answered ?? t.expiresAt ?? now) < 15_000 && (!t.end || now - (t.end.refuseFrom ?? 0) < 15_000);
  const sendOne = () => {
    const now = Date.now();
    const up = instances.filter((i) => i.up);
    if (!up.length) return;
    const instance = pick(up);
    const roll = random();
    let kind: RequestKind;
    let token = -1;
    let header: string | undefined;
    if (roll < 0.45) {
      kind = 'hot';
      token = pick(hot).ref;
    } else if (roll < 0.67) {
      kind = 'churn';
      const live = churn.filter((t) => probing(t, now));
      if (!live.length) return;
      token = pick(live).ref;
    } else if (roll < 0.79) {
      kind = 'limited';
      token = pick(limited).ref;
    } else if (roll < 0.85) {
      kind = 'expiring';
      const live = expiring.filter((t) => probing(t, now));
      if (!live.length) return;
      token = pick(live).ref;
    } else if (roll < 0.94) {
      kind = 'unknown';
      header = `Bearer ${random() < 0.5 ? pick(fixedUnknown) : randomToken(random)}`;
    } else {
      kind = 'malformed';
      header = pick(malformed);
    }
    if (token >= 0) header = `Bearer ${secrets[token]}`;
    const record: RequestRecord = { id: nextId++, kind, token, instance: instance.index, sent: Date.now(), done: 0, status: NO_ANSWER };
    history.requests.push(record);
    inFlight++;
    let settled = false;
    const finish = (status: number, error?: string) => {
      if (settled) return;
      settled = true;
      inFlight--;
      record.done = Date.now();
      record.status = status;
      if (error) record.error = error;
    };
    const send = (retry: boolean) => {
      const req = request(
        { host: '127.0.0.1', port: instance.port, path: '/app/whoami', agent: retry ? false : instance.agent, headers: header ? { authorization: header } : {} },
        (res) => {
          res.resume();
          res.on('end', () => finish(res.statusCode ?? 0));
          res.on('error', (e: NodeJS.ErrnoException) => finish(CONNECTION_ERROR, e.code ?? 'response error'));
        },
      );
      // Past the hang bound (and a margin) the request is given up and recorded as unanswered.
      req.setTimeout(SOAK_BOUNDS.hangMs + 2000, () => {
        finish(NO_ANSWER);
        req.destroy();
      });
      req.on('error', (e: NodeJS.ErrnoException) => {
        // Node's documented keep-alive race: the server closed an idle connection as this request
        // reused it, so the request never reached the application; sent again once, on a new one
        // (https://nodejs.org/api/http.html#requestreusedsocket). The retry takes a new connection, never another idle one.
        if (!retry && !settled && req.reusedSocket && e.code === 'ECONNRESET') {
          record.sent = Date.now();
          return send(true);
        }
        finish(CONNECTION_ERROR, e.code ?? 'request error');
      });
      req.end();
    };
    send(false);
  };

  // The client's own event loop: a stall here delays when answers are seen, and the report says so.
  const clientLoop = monitorEventLoopDelay({ resolution: 10 });
  clientLoop.enable();
  const clientTimer = setInterval(() => {
    (history.clientStalls ??= []).push({ t: Date.now(), maxMs: clientLoop.max / 1e6 });
    clientLoop.reset();
  }, 1000);
  // PostgreSQL itself, probed on a connection of the soak's own: a stall not injected here (the machine's
  // PostgreSQL is shared) is recorded, and judged as a cut (SOAK_BOUNDS.postgresStallMs).
  const probe = new Client({ connectionString: db.url, query_timeout: 10_000 });
  await probe.connect();
  probe.on('error', () => undefined);
  cleanup.add(() => probe.end());
  let probeRunning = true;
  const prober = (async () => {
    while (probeRunning) {
      const start = Date.now();
      await probe.query('SELECT count(*) FROM api_tokens WHERE token = $1', ['app-probe']).catch(() => undefined);
      const end = Date.now();
      if (end - start > SOAK_BOUNDS.postgresStallMs) (history.pgStalls ??= []).push({ start, end });
      await sleep(500);
    }
  })();
  const durationMs = options.seconds * 1000;
  const startedAt = Date.now();
  history.startedAt = startedAt;
  let loadRunning = true;
  const load = (async () => {
    let sent = 0;
    while (loadRunning) {
      const due = Math.floor(((Date.now() - startedAt) / 1000) * options.rate);
      // At most 256 in flight: a stalled instance is recorded, not piled on without end.
      for (; sent < due; sent++) if (inFlight < 256) sendOne();
      await sleep(10);
    }
  })();

  // Token churn: creations, expiring tokens, revocations and rotations every 0.5–2 s.
  const adminRunning = { on: true };
  const churnLoop = (async () => {
    while (adminRunning.on) {
      await sleep(between(random, 500, 2000));
      if (!adminRunning.on) break;
      const now = Date.now();
      const live = churn.filter((t) => !t.end && t.uncertainFrom === undefined);
      const roll = random();
      try {
        if (roll < 0.35 && live.length < 30) {
          churn.push(addToken(await tokens.create({ scope: 'app' }), 'churn'));
        } else if (roll < 0.5) {
          expiring.push(addToken(await tokens.create({ scope: 'app', expiresInSeconds: between(random, 2, 12) }), 'expiring'));
        } else if (live.length && roll < 0.75) {
          const t = pick(live);
          const started = Date.now();
          t.uncertainFrom = started;
          await tokens.revoke(secrets[t.ref]);
          t.end = { how: 'revoked', started, answered: Date.now() };
          t.uncertainFrom = undefined;
        } else if (live.length) {
          const t = pick(live);
          const grace = random() < 0.3 ? 0 : between(random, 2, 6);
          const started = Date.now();
          t.uncertainFrom = started;
          const rotation = await tokens.rotate(secrets[t.ref], { graceSeconds: grace });
          const answered = Date.now();
          if (rotation) {
            t.end = grace === 0 ? { how: 'revoked', started, answered } : { how: 'rotated', started, answered, refuseFrom: Date.parse(`${rotation.previous.expiresAt}Z`) };
            t.uncertainFrom = undefined;
            churn.push(addToken(rotation.successor, 'churn'));
          }
        }
      } catch {
        // The token's state is unknown after a failed call: uncertainFrom stays set and it is not judged from then on.
      }
      void now;
    }
  })();

  // Faults.
  const kinds: FaultKind[] = sentinels ? ['redis-failover', 'pg-cut', 'pg-terminate', 'instance-kill'] : ['redis-kill', 'redis-stop', 'pg-cut', 'pg-terminate', 'instance-kill'];
  const quietTail = Math.min(20_000, durationMs * 0.15);
  const plan = planFaults(random, kinds, Math.min(10_000, durationMs * 0.1), durationMs - quietTail - 5000, INSTANCES);
  let healedAt = 0;
  for (const fault of plan) {
    // At least 5 s of calm after each fault (a kill that waited for a flush can push the schedule back).
    const wait = Math.max(startedAt + fault.at, healedAt + 5000) - Date.now();
    if (wait > 0) await sleep(wait);
    if (Date.now() - startedAt > durationMs - quietTail) break;
    history.faults.push(await inject(fault, { redis, pgProxy, instances, db, sentinelNodes, sentinelName }));
    healedAt = Date.now();
  }
  const left = startedAt + durationMs - Date.now();
  if (left > 0) await sleep(left);

  // The end: stop the load and the churn, write every pending use, a last flush, then read the stores.
  loadRunning = false;
  adminRunning.on = false;
  await load;
  await churnLoop;
  while (inFlight > 0) await sleep(20);
  history.endedAt = Date.now();
  clearInterval(clientTimer);
  probeRunning = false;
  await prober;
  for (const instance of instances.filter((i) => i.up)) {
    const stopped = instance.waitFor('exit', 30_000);
    instance.send({ command: 'stop' });
    await stopped;
  }
  const flush = admin.get(ApiTokenUsageFlushService);
  let flushed = null;
  for (let attempt = 0; attempt < 20 && !flushed; attempt++) {
    flushed = await flush.flushNow().catch(() => null);
    if (!flushed) await sleep(1000);
  }
  if (!flushed) console.error('soak: the final flush did not run (lock held or Redis down); uses are judged as they are');
  const rows = await db.query(`SELECT id::text AS id, to_char(last_used_at, 'YYYY-MM-DD"T"HH24:MI:SS.US') AS last_used_at FROM api_tokens`);
  const byId = new Map(rows.map((r) => [r.id as string, r.last_used_at as string | null]));
  for (const t of history.tokens) if (byId.has(t.id)) history.finalUses.push({ ref: t.ref, lastUsedAt: byId.get(t.id) ? Date.parse(`${byId.get(t.id)}Z`) : null });

  const results = checkInvariants(history);
  // SOAK_DUMP=path: the history as JSON (ids and times, never a token), to study a violation offline.
  if (process.env.SOAK_DUMP) writeFileSync(process.env.SOAK_DUMP, JSON.stringify({ history, samples, seed: options.seed, command }));
  const violations = results.reduce((s, r) => s + r.violations, 0);
  const html = renderReport({
    history,
    results,
    seed: options.seed,
    command,
    samples,
    notes: [`Machine: ${cpus().length} CPUs, load average at the end ${loadavg().map((l) => l.toFixed(1)).join(' ')}; Node ${process.version}. Offered rate ${options.rate} requests/s; flush every 10 s; Redis ${sentinels ? 'through Sentinel' : 'one server, appendfsync everysec'}.`],
  });
  // A report never holds a token: the check is cheap and the promise is absolute.
  for (const secret of secrets) if (html.includes(secret)) throw new Error('soak: a token reached the report; not written');
  mkdirSync(resolve(options.out, '..'), { recursive: true });
  writeFileSync(options.out, html);
  for (const r of results) console.log(`soak: ${r.pass ? 'pass' : 'FAIL'} ${r.name}: ${r.checked} checked, ${r.violations} violations${r.first ? `; first: ${r.first}` : ''}${r.note ? ` (${r.note})` : ''}`);
  console.log(`soak: report ${relative(process.cwd(), options.out) || options.out}`);
  console.log(`soak: ${history.requests.length} requests, ${history.faults.length} faults, ${violations} violations`);
  return violations ? 1 : 0;
}

/**
 * `--from-dump file.json [--out FILE]`: judges a recorded history (SOAK_DUMP) again and writes its report, so that a
 * correction of the checker is tried on the very run that showed the problem.
 */
async function rejudge(file: string, argv: string[]): Promise<void> {
  const { history, samples, seed, command } = JSON.parse(readFileSync(file, 'utf8')) as { history: SoakHistory; samples: ReportInput['samples']; seed: number; command: string };
  const results = checkInvariants(history);
  const violations = results.reduce((s, r) => s + r.violations, 0);
  const out = argv[argv.indexOf('--out') + 1] && argv.includes('--out') ? argv[argv.indexOf('--out') + 1] : file.replace(/\.json$/, '') + '.html';
  writeFileSync(out, renderReport({ history, results, seed: seed ?? 0, command: command ?? '(not recorded)', samples, notes: [`Judged again from the history this run recorded (SOAK_DUMP), with the checker of this commit.`, ...(process.env.SOAK_NOTE ? [process.env.SOAK_NOTE] : [])] }));
  for (const r of results) console.log(`soak: ${r.pass ? 'pass' : 'FAIL'} ${r.name}: ${r.checked} checked, ${r.violations} violations${r.first ? `; first: ${r.first}` : ''}${r.note ? ` (${r.note})` : ''}`);
  console.log(`soak: report ${out}`);
  console.log(`soak: ${history.requests.length} requests, ${history.faults.length} faults, ${violations} violations`);
  process.exit(violations ? 1 : 0);
}

/** A random token of the generated shape (`app-` and 24 characters) that no row holds. */
function randomToken(random: () => number): string {
  let s = 'app-';
  for (let i = 0; i < 24; i++) s += ALPHABET[Math.floor(random() * ALPHABET.length)];
  return s;
}

interface Targets {
  redis?: PrivateRedisServer;
  pgProxy: TcpProxy;
  instances: Instance[];
  db: { name: string; query: (sql: string, params?: unknown[]) => Promise<Record<string, unknown>[]> };
  sentinelNodes?: { host: string; port: number }[];
  sentinelName: string;
}

/** Injects one fault, waits until it is healed, and returns what happened when. */
async function inject(fault: ReturnType<typeof planFaults>[number], t: Targets): Promise<FaultEvent> {
  const start = Date.now();
  switch (fault.kind) {
    case 'redis-kill':
      await t.redis!.kill();
      await sleep(fault.holdMs);
      await t.redis!.start();
      return { kind: fault.kind, start, end: Date.now(), detail: `SIGKILL, restarted after ${fault.holdMs} ms (append-only file)` };
    case 'redis-stop':
      t.redis!.pause();
      await sleep(fault.holdMs);
      t.redis!.resume();
      return { kind: fault.kind, start, end: Date.now(), detail: `SIGSTOP for ${fault.holdMs} ms` };
    case 'redis-failover': {
      const sentinel = new Redis({ ...t.sentinelNodes![0], maxRetriesPerRequest: 1 });
      const master = () => sentinel.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', t.sentinelName).then((a) => (a as string[])[1], () => '?');
      const before = await master();
      const reply = await sentinel.call('SENTINEL', 'FAILOVER', t.sentinelName).then(String, (e: Error) => e.message.split(' ')[0]);
      await sleep(5000);
      const after = await master();
      sentinel.disconnect();
      // The report says whether the master moved, so a failover that did not happen is not mistaken for one survived.
      return { kind: fault.kind, start, end: Date.now(), detail: `SENTINEL FAILOVER (${reply}): master port ${before} → ${after}` };
    }
    case 'pg-cut':
      t.pgProxy.cut('refuse');
      await sleep(fault.holdMs);
      t.pgProxy.restore();
      return { kind: fault.kind, start, end: Date.now(), detail: `proxy refusing for ${fault.holdMs} ms` };
    case 'pg-terminate': {
      const rows = await t.db.query(`SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'soak-instance-%'`, [t.db.name]);
      return { kind: fault.kind, start, end: Date.now(), detail: `pg_terminate_backend of ${rows[0]?.n ?? 0} instance connections` };
    }
    case 'instance-kill': {
      const instance = t.instances[fault.instance!];
      // Killed by its own hook while its flush's UPDATE is on the wire; if it does not win a flush
      // tick within 35 s (the other instance holds the lock), it is killed as it is.
      const exited = instance.waitFor('exit', 35_000);
      instance.send({ command: 'arm-kill-in-flush' });
      const inFlush = await exited;
      const killedAt = inFlush && instance.dyingInFlush ? instance.diedAt : Date.now();
      if (!inFlush) {
        const gone = instance.waitFor('exit', 10_000);
        instance.kill();
        await gone;
      }
      const midFlush = inFlush && instance.dyingInFlush;
      instance.up = false;
      await instance.start();
      return { kind: fault.kind, start: killedAt, end: Date.now(), instance: fault.instance, midFlush, detail: `instance ${fault.instance} ${midFlush ? 'killed during its flush UPDATE' : 'killed (no flush won)'}, restarted` };
    }
  }
}

void main();
