import { Inject, Injectable, Logger, OnApplicationShutdown, Optional } from '@nestjs/common';
import { ExecutionError, type Lock, Redlock, ResourceLockedError } from '@sesamecare-oss/redlock';
import { ReplyError } from 'ioredis';
import { API_TOKEN_OPTIONS, API_TOKEN_REDIS } from '../api-token.constants';
import { ApiTokenInputError, describeError } from '../api-token.errors';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { type RedisClient, redisDb } from './redis.commands';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';

/** Per-call settings of {@link ApiTokenRedisService.call}. */
export interface RedisCallOptions {
  /**
   * Milliseconds the whole call may take before it counts as failed. Default (and for 0): the
   * `redisCommandTimeoutMs` option; a call is never unbounded. A walk of many commands uses
   * {@link ApiTokenRedisService.walk}.
   */
  timeoutMs?: number;
  /**
   * Call even while the circuit is open: for writes that must not be skipped because an earlier call
   * failed (revocation and invalidation). Still not called on a connection known to be down.
   */
  force?: boolean;
}

/** A call the module gave up on: Redis did not answer within its time. */
export class RedisCallTimeoutError extends Error {
  constructor(timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms`);
    this.name = 'RedisCallTimeoutError';
  }
}

/** The ioredis `keyPrefix` of a client or Cluster, if it has one. */
function keyPrefixOf(client: RedisClient): string | undefined {
  const options = client.options as { keyPrefix?: string; redisOptions?: { keyPrefix?: string } } | undefined;
  return options?.keyPrefix || options?.redisOptions?.keyPrefix || undefined;
}

/** What {@link ApiTokenRedisService.tryLock} answers when another holder has the lock. */
export const LOCKED = Symbol('locked');

/**
 * What {@link ApiTokenRedisService.attempt} answers when Redis did not confirm a call: it failed,
 * timed out, got an error reply (NOREPLICAS, READONLY, …) or was skipped. The call may still have
 * taken effect (a timed-out write can land later), so a caller that must know treats it as "maybe".
 */
export const UNCONFIRMED = Symbol('unconfirmed');
export type Unconfirmed = typeof UNCONFIRMED;

/**
 * Settings of {@link ApiTokenRedisService.walk}: `timeoutMs` bounds the whole walk (no command is
 * sent after it), `commandTimeoutMs` each command (default `redisCommandTimeoutMs`).
 */
export interface RedisWalkOptions {
  timeoutMs: number;
  commandTimeoutMs?: number;
  force?: boolean;
}

/** Settings of {@link ApiTokenRedisService.background}. */
export interface RedisBackgroundOptions {
  /** Bound of the whole walk: no command is sent after it. */
  timeoutMs: number;
  /** Bound of each command (default `redisCommandTimeoutMs`). */
  commandTimeoutMs?: number;
  /** How many times a command that failed or timed out is sent again (default 2); an error reply is not retried. */
  retries?: number;
}

/** Retries of a background command (see {@link ApiTokenRedisService.background}). */
const BACKGROUND_RETRIES = 2;

/** Sends one command of a walk, bounded; rejects without sending once the walk is over its time. */
export type RedisStep = <T>(send: () => Promise<T>) => Promise<T>;

/** A step for one command outside a walk, bounded by `timeoutMs`. */
export const boundedStep = (timeoutMs: number): RedisStep => (send) => bounded(send(), timeoutMs);

const UNUSABLE_AFTER_READY = new Set(['connecting', 'connect', 'reconnecting', 'close', 'end']);

/**
 * The module's way to Redis: every call goes through {@link call}, which turns a failure into
 * `undefined`, so the request path carries on without Redis.
 *
 * A dead or hanging Redis costs milliseconds: each call is bounded by `redisCommandTimeoutMs`
 * whatever the client's own settings (the client belongs to the application and may queue commands
 * while it reconnects), a client that is known to be disconnected is not called at all, and after a
 * failure a circuit skips Redis for `redisCooldownMs`, then lets one call through as a probe.
 * One line is logged when Redis stops answering and one when it answers again, never one per request.
 *
 * The circuit is a few lines of state, written here rather than taken from a library (opossum,
 * cockatiel): it has to share one state across every kind of call and know the ioredis connection
 * status, which those libraries' per-function wrappers do not.
 */
@Injectable()
export class ApiTokenRedisService implements OnApplicationShutdown {
  private readonly logger = new Logger(ApiTokenRedisService.name);
  private down = false;
  private outages = 0;
  private retryAt = 0;
  private probing = false;
  private everReady = false;
  private redlock: Redlock | undefined;
  private background$: RedisClient | undefined;

  constructor(
    @Inject(API_TOKEN_REDIS) readonly client: RedisClient,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() private readonly metrics: ApiTokenMetrics = new ApiTokenMetrics(),
  ) {
    if (keyPrefixOf(client)) {
      throw new ApiTokenInputError(
        'ApiTokenModule: the Redis client has a keyPrefix; give the module a client without one (the keys are shared with Dify under fixed names, and SCAN and Lua scripts would not see prefixed keys)',
      );
    }
    metrics.source('redisUp', () => (this.down ? 0 : 1));
    // Without any 'error' listener ioredis prints every failed reconnect; this module reports an
    // outage in one line of its own, so it gives a client that has no listener a silent one.
    if (typeof client.listenerCount === 'function' && client.listenerCount('error') === 0) client.on('error', () => undefined);
  }

  /** Whether Redis is taken as down (the circuit is open or probing). */
  get isDown(): boolean {
    return this.down;
  }

  /**
   * Runs a call; a failure, a timeout, or a skip while Redis is down yields undefined (the caller
   * carries on without Redis). An error reply (e.g. WRONGTYPE) also yields undefined but shows Redis
   * is up, so it does not open the circuit. For the request path, where "no answer" is a miss.
   */
  call<T>(operation: string, call: (redis: RedisClient) => Promise<T>, options: RedisCallOptions = {}): Promise<T | undefined> {
    return this.run(operation, call, options.timeoutMs || this.options.redisCommandTimeoutMs, options.force, undefined);
  }

  /**
   * {@link call} for a caller that must tell "Redis answered" from "it did not": the answer, or
   * {@link UNCONFIRMED} when the call failed, timed out, got an error reply or was skipped.
   */
  attempt<T>(operation: string, call: (redis: RedisClient) => Promise<T>, options: RedisCallOptions = {}): Promise<T | Unconfirmed> {
    return this.run(operation, call, options.timeoutMs || this.options.redisCommandTimeoutMs, options.force, UNCONFIRMED);
  }

  /**
   * A walk of many commands (a SCAN walk and what it does per page), bounded by the module whatever
   * the client's settings: each command goes through `step`, which bounds it by `commandTimeoutMs`
   * and refuses to send one once `timeoutMs` has passed. The walk is not raced but stops itself at its
   * next command, so an abandoned walk never carries on in the background.
   */
  walk<T>(operation: string, walk: (redis: RedisClient, step: RedisStep) => Promise<T>, options: RedisWalkOptions): Promise<T | Unconfirmed> {
    const { timeoutMs, commandTimeoutMs = this.options.redisCommandTimeoutMs } = options;
    const deadline = Date.now() + timeoutMs;
    const step: RedisStep = (send) =>
      Date.now() >= deadline ? Promise.reject(new RedisCallTimeoutError(timeoutMs)) : bounded(send(), commandTimeoutMs);
    return this.run(operation, (redis) => walk(redis, step), 0, options.force, UNCONFIRMED);
  }

  /**
   * A walk for work nobody waits on (the usage flush's pages, the every-scope sweep, SCAN): each command
   * through `step` is bounded by `commandTimeoutMs` and, when it fails or times out, sent again up to
   * `retries` times; no command is sent once `timeoutMs` has passed. Unlike {@link walk}, a failure here
   * never opens the circuit nor closes it: a slow SCAN over a large shared keyspace says nothing about
   * whether a request's GET gets an answer, so it must not send the request path to the database.
   * Failures are counted (`redisFallback`), logged at debug, and answered {@link UNCONFIRMED}.
   */
  async background<T>(operation: string, walk: (redis: RedisClient, step: RedisStep) => Promise<T>, options: RedisBackgroundOptions): Promise<T | Unconfirmed> {
    const { timeoutMs, commandTimeoutMs = this.options.redisCommandTimeoutMs, retries = BACKGROUND_RETRIES } = options;
    const status = this.client.status;
    if (this.everReady && UNUSABLE_AFTER_READY.has(status)) {
      this.metrics.redisFallback(operation, 'skipped');
      return UNCONFIRMED;
    }
    const deadline = Date.now() + timeoutMs;
    const step: RedisStep = async (send) => {
      for (let attempt = 0; ; attempt++) {
        if (Date.now() >= deadline) throw new RedisCallTimeoutError(timeoutMs);
        try {
          return await bounded(send(), commandTimeoutMs);
        } catch (error) {
          if (error instanceof ReplyError || attempt >= retries) throw error;
        }
      }
    };
    try {
      return await walk(this.backgroundClient(), step);
    } catch (error) {
      this.logger.debug(`Redis background ${operation} stopped (${describeError(error)}); the request path is not affected`);
      this.metrics.redisFallback(operation, error instanceof ReplyError ? 'error_reply' : 'failed');
      return UNCONFIRMED;
    }
  }

  /**
   * One call on the {@link background} path, sent once (no retry): for a call nobody on the request
   * path waits on (a job's lock, `TIME` or tick; a write of uses). The answer, or {@link UNCONFIRMED}.
   */
  backgroundCall<T>(operation: string, call: (redis: RedisClient) => Promise<T>, options: Omit<RedisBackgroundOptions, 'retries'>): Promise<T | Unconfirmed> {
    return this.background(operation, (redis, step) => step(() => call(redis)), { ...options, retries: 0 });
  }

  /**
   * The background path's own connection (a duplicate of the application's client, made on first use):
   * a stalled SCAN or a large page of the flush's reads then holds up no request's GET behind it on one socket
   * (single node and Sentinel; see below for a Cluster).
   */
  private backgroundClient(): RedisClient {
    if (this.background$) return this.background$;
    // A duplicated Cluster starts with no slot map and no nodes, so a walk would find nothing to walk:
    // on a Cluster the background path shares the application's client (one connection per node).
    if (this.client.isCluster) return this.client;
    const duplicate = this.client.duplicate() as RedisClient;
    duplicate.on('error', () => undefined);
    return (this.background$ = duplicate);
  }

  /** Closes the background path's connection. */
  onApplicationShutdown(): void {
    this.background$?.disconnect();
    this.background$ = undefined;
    this.redlock = undefined; // it held the connection just closed
  }

  private async run<T, F>(
    operation: string,
    call: (redis: RedisClient) => Promise<T>,
    timeoutMs: number,
    force: boolean | undefined,
    failed: F,
  ): Promise<T | F> {
    const probe = this.down;
    if (probe && !force && (this.probing || Date.now() < this.retryAt)) {
      this.metrics.redisFallback(operation, 'skipped');
      return failed;
    }
    const status = this.client.status;
    if (status === 'ready') this.everReady = true;
    else if (this.everReady && UNUSABLE_AFTER_READY.has(status)) {
      this.failed(operation, `connection ${status}`);
      this.metrics.redisFallback(operation, 'skipped');
      return failed;
    }
    const outage = this.outages;
    const probing = probe && !this.probing;
    if (probing) this.probing = true;
    try {
      const result = await bounded(call(this.client), timeoutMs);
      if (this.down && outage === this.outages) this.recovered();
      return result;
    } catch (error) {
      if (error instanceof ReplyError) {
        this.logger.debug(`Redis ${operation} got an error reply (${describeError(error)})`);
        this.metrics.redisFallback(operation, 'error_reply');
        if (probe && outage === this.outages) this.recovered();
      } else {
        this.failed(operation, describeError(error));
        this.metrics.redisFallback(operation, 'failed');
      }
      return failed;
    } finally {
      if (probing) this.probing = false;
    }
  }

  /**
   * One attempt (no retry) at a Redlock lock for a background job (the usage flush, the expiry sweep),
   * bounded by `timeoutMs` (default `redisCommandTimeoutMs`) on the {@link background} path: a lock
   * that goes unanswered skips the job's run and never takes the request path off Redis. Answers the
   * lock, {@link LOCKED} when another holder has it, undefined when Redis failed. A lock granted after
   * the attempt gave up on it is released at once.
   */
  async tryLock(resource: string, ttlMs: number, options: { timeoutMs?: number } = {}): Promise<Lock | typeof LOCKED | undefined> {
    const timeoutMs = options.timeoutMs || this.options.redisCommandTimeoutMs;
    let attempt: Promise<Lock> | undefined;
    const result = await this.backgroundCall(
      'lock',
      // On the background connection: a lock's reply that is held up holds no request's command behind it.
      (redis) => {
        const redlock = (this.redlock ??= new Redlock([redis], { retryCount: 0, db: redisDb(redis) }));
        attempt = redlock.acquire([resource], ttlMs);
        return attempt.catch(async (error: unknown): Promise<typeof LOCKED> => {
          if (await refusedByScript(error)) return LOCKED;
          throw error;
        });
      },
      { timeoutMs, commandTimeoutMs: timeoutMs },
    );
    if (result !== UNCONFIRMED) return result;
    attempt?.then((lock) => lock.release()).catch(() => undefined);
    return undefined;
  }

  /**
   * Releases a lock without waiting; if Redis does not answer, the lock expires by itself. A lock that
   * had already expired (a lookup that outlived `lockTtlMs`) is refused by Redlock's release script:
   * Redis answered, so that is no outage.
   */
  unlock(lock: Lock): void {
    void this.call('unlock', () =>
      lock.release().catch(async (error: unknown) => {
        if (!(await refusedByScript(error))) throw error;
      }),
    );
  }

  private failed(operation: string, reason: string): void {
    this.retryAt = Date.now() + this.options.redisCooldownMs;
    if (this.down) return;
    this.down = true;
    this.outages++;
    this.metrics.redisOutage();
    this.logger.warn(
      `Redis ${operation} failed (${reason}); carrying on without Redis, trying again every ${this.options.redisCooldownMs} ms`,
    );
  }

  private recovered(): void {
    this.down = false;
    this.logger.log('Redis answers again; caching and usage recording resumed');
  }
}

/**
 * Rejects when `promise` has not settled within `timeoutMs` (0: the caller bounds it, see `walk`). The rejection waits for `setImmediate`,
 * which runs after the event loop's I/O phase: when the loop itself was blocked past the timeout
 * (a burst of requests), a reply already in the socket is read first and wins, so a busy process
 * does not take a live Redis for a dead one.
 */
function bounded<T>(promise: Promise<T>, timeoutMs: number): Promise<T> {
  if (!(timeoutMs > 0)) return promise;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => setImmediate(() => reject(new RedisCallTimeoutError(timeoutMs))), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Whether Redlock failed because its script refused (the resource is locked by another holder, or a
 * lock to release is no longer held), as opposed to Redis not answering.
 */
async function refusedByScript(error: unknown): Promise<boolean> {
  if (!(error instanceof ExecutionError) || error.attempts.length === 0) return false;
  const stats = await error.attempts[error.attempts.length - 1];
  return [...stats.votesAgainst.values()].some((e) => e instanceof ResourceLockedError);
}
