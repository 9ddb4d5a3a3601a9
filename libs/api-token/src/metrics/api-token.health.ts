import { Injectable } from '@nestjs/common';
import { keyNodes } from '../redis/redis.commands';
import { describeError } from '../api-token.errors';
import { ApiTokenRedisService } from '../redis/redis-access.service';
import { ApiTokenRepository } from '../store/api-token.repository';

/**
 * What a check returns: `{ [key]: { status: 'up' | 'down', ... } }`, the shape of `@nestjs/terminus`'s
 * `HealthIndicatorResult` (terminus counts a `down` result as a failed check and answers 503).
 */
export type ApiTokenHealthResult<Key extends string = string> = Record<Key, { status: 'up' | 'down'; [detail: string]: unknown }>;

/** Settings of one check. */
export interface ApiTokenHealthCheckOptions {
  /** Milliseconds the check may take before it reports `down`. Default 1000. */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 1000;

/**
 * Health checks of the token store for `@nestjs/terminus` (an optional peer: the checks return its
 * result shape and need nothing from it):
 *
 * ```ts
 * check() {
 *   return this.health.check([() => this.apiToken.checkDatabase(), () => this.apiToken.checkRedis()]);
 * }
 * ```
 *
 * The module authenticates without Redis (from the database, more slowly), so a readiness check
 * may leave Redis out, or treat its `down` as a warning.
 *
 * @hideconstructor
 */
@Injectable()
export class ApiTokenHealthIndicator {
  /** @internal Nest's injection: inject the class, never construct it. */
  constructor(
    private readonly redis: ApiTokenRedisService,
    private readonly repository: ApiTokenRepository,
  ) {}

  /**
   * PING on the module's Redis client (every master of a Cluster). `up` carries `circuit`: `open`
   * while the module still carries on without Redis after an outage (it tries again by itself).
   */
  async checkRedis<Key extends string = 'api_token_redis'>(key: Key = 'api_token_redis' as Key, options: ApiTokenHealthCheckOptions = {}): Promise<ApiTokenHealthResult<Key>> {
    try {
      const nodes = keyNodes(this.redis.client);
      if (nodes.length === 0) return result(key, { status: 'down', message: 'no Redis node connected' });
      await withTimeout(Promise.all(nodes.map((node) => node.ping())), options.timeoutMs);
      return result(key, { status: 'up', circuit: this.redis.isDown ? 'open' : 'closed' });
    } catch (error) {
      return result(key, { status: 'down', message: reason(error) });
    }
  }

  /** Reads the `api_tokens` table (one row at most) through the module's DataSource. */
  async checkDatabase<Key extends string = 'api_token_database'>(
    key: Key = 'api_token_database' as Key,
    options: ApiTokenHealthCheckOptions = {},
  ): Promise<ApiTokenHealthResult<Key>> {
    try {
      await withTimeout(this.repository.checkTable(), options.timeoutMs);
      return result(key, { status: 'up' });
    } catch (error) {
      return result(key, { status: 'down', message: reason(error) });
    }
  }
}

function result<Key extends string>(key: Key, value: ApiTokenHealthResult[string]): ApiTokenHealthResult<Key> {
  return { [key]: value } as ApiTokenHealthResult<Key>;
}

/** Why a check failed: the timeout, or the error's class and code (never its message, which may quote a key). */
function reason(error: unknown): string {
  return error instanceof HealthTimeoutError ? error.message : describeError(error);
}

class HealthTimeoutError extends Error {
  constructor(timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms`);
    this.name = 'HealthTimeoutError';
  }
}

function withTimeout<T>(promise: Promise<T>, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new HealthTimeoutError(timeoutMs)), timeoutMs);
  });
  promise.catch(() => undefined);
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
