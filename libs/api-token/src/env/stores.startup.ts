import { ConsoleLogger, type LogLevel } from '@nestjs/common';
import { ApiTokenInvalidationService } from '../cache/cache-invalidation.service';
import { errorCode as driverErrorCode } from '../api-token.errors';
import { ApiTokenRedisService } from '../redis/redis-access.service';
import { DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL } from './stores.env';

/** What to do when a store does not answer (the demo's `docker-compose.yml` brings both up where the defaults point). */
const REMEDY = 'start it with "docker compose up -d"';

/** Node's codes for "nothing answered there": the server is down, unreachable or the name unknown. */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'ENOENT']);

/**
 * `url` fit to be shown: its password (and any query parameter named like one) masked. Undefined when
 * it is not a URL with a host: then it must not be shown at all, as it may hold a password anywhere.
 */
export function maskUrl(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  // `user:secret@…` with no `//` parses as a URL of scheme "user" with the secret in its path.
  if (!parsed.host) return undefined;
  if (parsed.password) parsed.password = '****';
  for (const name of [...parsed.searchParams.keys()]) {
    if (/pass/i.test(name)) parsed.searchParams.set(name, '****');
  }
  return parsed.toString();
}

function where(url: string, variable: string): string {
  const shown = maskUrl(url);
  return shown ? `at ${shown}` : `at the address in ${variable}`;
}

/** The error's code: Node's (ECONNREFUSED…) or PostgreSQL's SQLSTATE; pg's own connect timeout has none, so it is named here. */
function errorCode(error: unknown): string | undefined {
  const code = driverErrorCode(error);
  if (code) return code;
  if (error instanceof Error && /^Connection terminated/.test(error.message)) return 'timeout';
  return undefined;
}

/** Whether a connection error is worth another attempt (a store starting up may answer soon; a wrong password will not). */
export function isTransientDatabaseError(error: unknown): boolean {
  const code = errorCode(error);
  return code !== undefined && (UNREACHABLE_CODES.has(code) || code === 'timeout' || code === '57P03');
}

/**
 * One line on why PostgreSQL could not be used at start and what to do, naming its address from
 * `DATABASE_URL` with the password masked; undefined when `error` is not about reaching PostgreSQL
 * (a migration that failed, a bug): the caller reports those its own way.
 */
export function describeDatabaseFailure(error: unknown, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const code = errorCode(error);
  if (code === undefined) return undefined;
  const at = where(env.DATABASE_URL || DEFAULT_DATABASE_URL, 'DATABASE_URL');
  if (isTransientDatabaseError(error)) return `PostgreSQL did not answer ${at} (${code}): ${REMEDY}, or set DATABASE_URL.`;
  if (code.startsWith('28')) return `PostgreSQL ${at} refused the login (${code}): check the user and password in DATABASE_URL.`;
  if (code === '3D000') return `PostgreSQL ${at} has no such database (${code}): create it, or fix the database name in DATABASE_URL.`;
  return undefined;
}

/**
 * One line for a Redis that does not answer at start (`REDIS_URL`, password masked, or
 * `REDIS_CLUSTER_NODES`): the application carries on without it, and says so with the remedy.
 */
export function describeRedisDown(env: NodeJS.ProcessEnv = process.env, who = 'the application'): string {
  const at = env.REDIS_CLUSTER_NODES
    ? 'at the nodes in REDIS_CLUSTER_NODES'
    : env.REDIS_SENTINELS
      ? 'through the sentinels in REDIS_SENTINELS'
      : where(env.REDIS_URL || DEFAULT_REDIS_URL, 'REDIS_URL');
  return (
    `Redis did not answer ${at}: ${who} serves anyway, authenticating every request from PostgreSQL ` +
    `(no shared cache, no revocation across instances, no usage recording) until Redis answers; ${REMEDY}, or set REDIS_URL.`
  );
}

/** Contexts whose errors the start-up code replaces with one line of its own. */
const REPLACED = new Set([
  // @nestjs/typeorm logs every failed connection attempt with a stack.
  'TypeOrmModule',
  // Nest dumps the error that ended the start; the start-up code says it in one line instead.
  'ExceptionHandler',
]);

/** The library's contexts that report Redis failures; at start the application says it once instead. */
const REDIS_CONTEXTS = new Set([ApiTokenRedisService.name, ApiTokenInvalidationService.name]);

/**
 * Nest's console logger minus the stores' start-up noise (TypeORM's stack per connection attempt,
 * Nest's dump of the error that ended the start), for an application that says what went wrong in
 * one line ({@link describeDatabaseFailure}); everything else as Nest prints it. `stderrOnly` keeps
 * stdout for a command's answer (the token CLI).
 */
export class ApiTokenStartupLogger extends ConsoleLogger {
  private readonly stderrOnly: boolean;
  /** The library's Redis warnings while the demo starts, until it knows whether Redis answers. */
  private held: unknown[][] | undefined;

  constructor(options: { stderrOnly?: boolean; logLevels?: LogLevel[]; holdRedisWarnings?: boolean } = {}) {
    super({ logLevels: options.logLevels });
    this.stderrOnly = options.stderrOnly ?? false;
    this.held = options.holdRedisWarnings ? [] : undefined;
  }

  override error(message: unknown, ...rest: unknown[]): void {
    if (REPLACED.has(rest[rest.length - 1] as string)) return;
    super.error(message, ...rest);
  }

  override warn(message: unknown, ...rest: unknown[]): void {
    if (this.held && REDIS_CONTEXTS.has(rest[rest.length - 1] as string)) this.held.push([message, ...rest]);
    else super.warn(message, ...rest);
  }

  /**
   * Ends the start: the Redis warnings held so far are dropped when the application has said Redis is down in
   * its own words (they would say it again, per component, with no remedy), else printed.
   */
  startupDone(redisDownSaid: boolean): void {
    const held = this.held ?? [];
    this.held = undefined;
    if (!redisDownSaid) for (const [message, ...rest] of held) super.warn(message, ...rest);
  }

  protected override printMessages(...[messages, context, logLevel, stream]: Parameters<ConsoleLogger['printMessages']>): void {
    super.printMessages(messages, context, logLevel, this.stderrOnly ? 'stderr' : stream);
  }
}
