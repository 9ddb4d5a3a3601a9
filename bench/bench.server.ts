import 'reflect-metadata';
import { ApiTokenGuard, type ApiTokenModuleOptions, type AuthenticatedApiToken, CurrentApiToken } from '../libs/api-token/src';
import { ApiTokenUsageRecorder } from '../libs/api-token/src/usage/usage.recorder';
import { type CanActivate, Controller, type ExecutionContext, Get, type INestApplication, Injectable, Module, UseGuards } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { GCProfiler } from 'node:v8';
import { Session } from 'node:inspector/promises';
import { inject } from 'light-my-request';
import { writeFile } from 'node:fs/promises';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import Redis from 'ioredis';
import { Client } from 'pg';
import { type TestAppConfig, TestAppModule } from '../test/app/app.module';
import { NaiveTokenGuard } from './naive.guard';
import { BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { BENCH_CLIENT_HEADER, requiredEnv, stopServer } from './server.process';

/**
 * One benchmark server (a child process of bench/run.ts): the test application (the demo's routes) plus
 * `GET /bench/open` (no guard), `GET /bench/noop` (a guard that does nothing) and `GET /bench/naive`
 * (the naive guard). It talks to its parent
 * over IPC only, so that reading its counters adds no HTTP request, Redis command or query.
 */

/** The server configurations the benchmark compares. */
export const VARIANTS = {
  /** The library in its default configuration. */
  default: {},
  /** Dify's design: no in-process cache, a usage write on every request. */
  dify: { localCacheMax: 0, usageWriteIntervalMs: 0 },
  /**
   * The default configuration with the recommended failed-attempt limit; the client is the
   * `x-bench-client` header when sent (the flood's), else the address (the hot token's).
   */
  limited: {
    failedAttemptLimit: {
      limit: 100,
      windowSeconds: 60,
      clientKey: (request) => {
        const named = request.headers[BENCH_CLIENT_HEADER];
        return typeof named === 'string' ? named : request.ip;
      },
    },
  },
} satisfies Record<string, ApiTokenModuleOptions>;
export type Variant = keyof typeof VARIANTS;

/** Messages the parent sends. */
export type ServerCommand =
  | { id: number; command: 'stats' }
  | { id: number; command: 'inject'; paths: string[]; authorization: string; count: number; interleave: boolean }
  | { id: number; command: 'profile-start' }
  | { id: number; command: 'profile-stop'; path: string }
  | { id: number; command: 'stop' };
/** A command before the parent numbers it. */
export type ServerRequest = ServerCommand extends infer C ? (C extends unknown ? Omit<C, 'id'> : never) : never;

/** What the server reports: statements sent to PostgreSQL and commands sent to Redis since it started. */
export interface ServerStats {
  statements: number;
  /** Reads of `api_tokens` by token (the library's lookup and the naive guard's). */
  lookups: number;
  /** Most lookups in flight at once since the previous stats (the lookup budget's bound). */
  lookupsMaxConcurrent: number;
  /** Commands this process sent to Redis (round trips; not the commands a script runs inside Redis), by name. */
  redis: Record<string, number>;
  /** CPU time of the process (user + system), microseconds. */
  cpuMicros: number;
  /** Longest event-loop delay since the previous stats, milliseconds. */
  eventLoopDelayMaxMs: number;
  rssBytes: number;
  /** Bytes allocated on the JS heap since the process started (freed by every GC plus the growth of the used heap). */
  allocatedBytes: number;
}

/** What `inject` reports per path: CPU time and JS heap bytes of its requests, and how many answered 200. */
export interface InjectStats {
  cpuMicros: number;
  /** Interleaved only: the CPU µs of each request. */
  perRequest: number[];
  allocatedBytes: number;
  ok: number;
}

/** The HTTP adapters the benchmark compares: Nest's default (Express) and Fastify. */
export type Adapter = 'express' | 'fastify';

// The library's lookup (`FROM api_tokens t LEFT JOIN api_token_policies … WHERE t.token = $1`), the
// membership filter's check of many tokens (`WHERE token = ANY($1::varchar[])`), and the naive guard's.
const LOOKUP_SQL = /\bFROM api_tokens\b(?: t\b[^;]*?)? WHERE (?:t\.)?token = (?:\$1|ANY\(\$1)/;
const counts = { statements: 0, lookups: 0 };
/** Lookups sent and not yet answered, and the most at once since the last stats. */
const inFlight = { now: 0, max: 0 };
const redisSent: Record<string, number> = {};
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();

// Allocation is not counted by V8 directly: what each GC freed, plus how much the used heap grew.
const gcProfiler = new GCProfiler();
const heapAtStart = process.memoryUsage().heapUsed;
let freedBytes = 0;
gcProfiler.start();
function allocatedBytes(): number {
  for (const gc of gcProfiler.stop()?.statistics ?? []) freedBytes += gc.beforeGC.heapStatistics.usedHeapSize - gc.afterGC.heapStatistics.usedHeapSize;
  gcProfiler.start();
  return freedBytes + process.memoryUsage().heapUsed - heapAtStart;
}

// Every ioredis client of the process (the application's, and any the library duplicates) sends through here.
const sendCommand = Redis.prototype.sendCommand;
// The invalidation channel's liveness ping (one PUBLISH to the instance's own echo channel a second) is
// not counted: it runs whatever the requests do, so it is no command a request caused.
const ECHO_PING = /:echo:/;
Redis.prototype.sendCommand = function (this: Redis, command: Parameters<Redis['sendCommand']>[0], stream?: Parameters<Redis['sendCommand']>[1]) {
  if (command.name !== 'publish' || !ECHO_PING.test(String(command.args[0]))) redisSent[command.name] = (redisSent[command.name] ?? 0) + 1;
  return sendCommand.call(this, command, stream);
};

/** A pg Client that counts what it sends (installed through TypeORM's `extra.Client`). */
class CountingClient extends Client {
  override query(...args: unknown[]): never {
    const first = args[0] as string | { text?: string } | undefined;
    const text = typeof first === 'string' ? first : (first?.text ?? '');
    counts.statements++;
    if (LOOKUP_SQL.test(text)) {
      counts.lookups++;
      // In flight from here until pg answers: pg.Pool (the library's lookups) passes a callback, TypeORM awaits the promise.
      inFlight.max = Math.max(inFlight.max, ++inFlight.now);
      let answered = false;
      const done = () => {
        if (!answered) inFlight.now--;
        answered = true;
      };
      const callback = args[args.length - 1];
      if (typeof callback === 'function') {
        args[args.length - 1] = (...results: unknown[]) => {
          done();
          return (callback as (...r: unknown[]) => unknown)(...results);
        };
      }
      const answer = (Client.prototype.query as (...a: unknown[]) => unknown).apply(this, args);
      (answer as PromiseLike<unknown> | undefined)?.then?.(done, done);
      return answer as never;
    }
    return (Client.prototype.query as (...a: unknown[]) => never).apply(this, args);
  }
}

/** The unguarded route answers the same shape the guarded ones do. */
const OPEN_BODY: AuthenticatedApiToken = { id: '00000000-0000-4000-8000-000000000000', appId: null, tenantId: null, scope: 'app' };

/** What any guard costs in Nest, whatever it does: admits every request with a fixed identity. */
@Injectable()
class NoopGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    // The cheapest way to the request (no closures per call, as switchToHttp() makes), as ApiTokenGuard has it.
    context.getArgByIndex<{ apiToken?: AuthenticatedApiToken }>(0).apiToken = OPEN_BODY;
    return true;
  }
}

@Controller('bench')
class BenchController {
  @Get('open')
  open(): AuthenticatedApiToken {
    return OPEN_BODY;
  }

  @Get('noop')
  @UseGuards(NoopGuard)
  noop(@CurrentApiToken() token: AuthenticatedApiToken): AuthenticatedApiToken {
    return token;
  }

  @Get('guard')
  @UseGuards(ApiTokenGuard('app'))
  guard(@CurrentApiToken() token: AuthenticatedApiToken): AuthenticatedApiToken {
    return token;
  }

  @Get('naive')
  @UseGuards(NaiveTokenGuard)
  naive(@CurrentApiToken() token: AuthenticatedApiToken): AuthenticatedApiToken {
    return token;
  }
}

/**
 * BENCH_TRACING=1: an OpenTelemetry SDK is registered (batched, to an exporter that drops the spans),
 * so the module's spans are made and ended as in production; the cost of tracing, side by side with a run without.
 */
function registerTracing(): void {
  const discard = { export: (_: unknown, done: (result: { code: number }) => void) => done({ code: 0 }), shutdown: async () => undefined };
  new NodeTracerProvider({ spanProcessors: [new BatchSpanProcessor(discard)] }).register();
}

/** The bench application (not yet listening), configured from the environment as bench/run.ts sets it; also used by bench/instructions.ts. */
export async function createBenchApp(variant: Variant, adapter: Adapter, overrides: ApiTokenModuleOptions = {}): Promise<INestApplication> {
  if (process.env.BENCH_TRACING === '1') registerTracing();
  const config: TestAppConfig = {
    stores: { databaseUrl: requiredEnv('DATABASE_URL', 'bench server'), redisUrl: requiredEnv('REDIS_URL', 'bench server') },
    // No scheduled usage flush: no flush tick lands in a measurement.
    apiToken: { flushCron: false, ...VARIANTS[variant], ...overrides },
    typeorm: { extra: { Client: CountingClient, max: 10 } },
  };
  @Module({ imports: [TestAppModule.forRoot(config)], controllers: [BenchController], providers: [NaiveTokenGuard] })
  class BenchModule {}
  const options = { logger: ['error', 'warn'] as ('error' | 'warn')[] };
  return adapter === 'fastify' ? NestFactory.create(BenchModule, new FastifyAdapter(), options) : NestFactory.create(BenchModule, options);
}

async function main(): Promise<void> {
  const variant = (process.env.BENCH_VARIANT ?? 'default') as Variant;
  const adapter = (process.env.BENCH_ADAPTER ?? 'express') as Adapter;
  const port = Number(process.env.PORT);
  const app = await createBenchApp(variant, adapter);
  await app.listen(port, '127.0.0.1');
  const session = new Session();
  process.on('message', (message: ServerCommand) => {
    handle(app, session, message).then(
      (result) => process.send?.({ id: message.id, result }),
      (error: Error) => process.send?.({ id: message.id, error: error.message }),
    );
  });
  process.on('disconnect', () => void stopServer(app));
  process.send?.({ ready: true });
}

async function handle(app: INestApplication, session: Session, message: ServerCommand): Promise<unknown> {
  switch (message.command) {
    case 'stats': {
      // Pending coalesced usage writes land now, inside the window being measured.
      await app.get(ApiTokenUsageRecorder).flushPending();
      const cpu = process.cpuUsage();
      const eventLoopDelayMaxMs = loopDelay.max / 1e6;
      loopDelay.reset();
      const lookupsMaxConcurrent = inFlight.max;
      inFlight.max = inFlight.now;
      return { ...counts, lookupsMaxConcurrent, redis: { ...redisSent }, cpuMicros: cpu.user + cpu.system, eventLoopDelayMaxMs, rssBytes: process.memoryUsage().rss, allocatedBytes: allocatedBytes() } satisfies ServerStats;
    }
    case 'inject':
      return injectMany(app, message);
    case 'profile-start':
      session.connect();
      await session.post('Profiler.enable');
      await session.post('Profiler.start');
      return true;
    case 'profile-stop': {
      const { profile } = await session.post('Profiler.stop');
      session.disconnect();
      await writeFile(message.path, JSON.stringify(profile));
      return true;
    }
    case 'stop':
      setImmediate(() => void stopServer(app));
      return true;
  }
}

/**
 * Sends `count` requests to each path through the adapter's request handler in this process, one
 * after the other, with no socket (light-my-request, what Fastify's own `inject` uses): no syscall and
 * no load generator competing for the cores, so what is left is the framework and the library.
 * Interleaved, the paths take turns request by request and CPU time is read around each request, so
 * that a slow spell of the shared machine falls on all of them alike; heap bytes are then not
 * counted (reading them per request would cost more than the request). Not interleaved, each path
 * runs its `count` requests in a row, and both are counted.
 */
async function injectMany(app: INestApplication, message: Extract<ServerCommand, { command: 'inject' }>): Promise<InjectStats[]> {
  const { paths, authorization, count, interleave } = message;
  const send = injector(app, authorization);
  const stats: InjectStats[] = paths.map(() => ({ cpuMicros: 0, perRequest: [], allocatedBytes: 0, ok: 0 }));
  if (interleave) {
    for (let i = 0; i < count; i++) {
      for (let p = 0; p < paths.length; p++) {
        const at = (i + p) % paths.length;
        const before = process.cpuUsage();
        const status = (await send(paths[at])).statusCode;
        const cpu = process.cpuUsage(before);
        stats[at].cpuMicros += cpu.user + cpu.system;
        stats[at].perRequest.push(cpu.user + cpu.system);
        if (status === 200) stats[at].ok++;
      }
    }
    return stats;
  }
  for (let p = 0; p < paths.length; p++) {
    const allocated = allocatedBytes();
    const before = process.cpuUsage();
    for (let i = 0; i < count; i++) if ((await send(paths[p])).statusCode === 200) stats[p].ok++;
    const cpu = process.cpuUsage(before);
    stats[p].cpuMicros = cpu.user + cpu.system;
    stats[p].allocatedBytes = allocatedBytes() - allocated;
  }
  return stats;
}

/** Sends one request through the adapter's handler in this process, no socket (light-my-request). */
export function injector(app: INestApplication, authorization: string): (path: string) => Promise<{ statusCode: number; body: string }> {
  const instance = app.getHttpAdapter().getInstance() as Parameters<typeof inject>[0] & { inject?: (o: object) => Promise<{ statusCode: number; body: string }> };
  return (path) => {
    const options = { method: 'GET' as const, url: path, headers: { authorization } };
    return instance.inject ? instance.inject(options) : inject(instance, options);
  };
}



if (require.main === module) {
  main().catch((error: unknown) => {
    console.error('bench server failed to start:', error);
    process.exit(1);
  });
}
