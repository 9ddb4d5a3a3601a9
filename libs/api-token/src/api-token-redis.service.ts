import { Inject, Injectable, Logger } from '@nestjs/common';
import { API_TOKEN_REDIS } from './api-token.constants';
import type { RedisClient } from './api-token.redis';

/**
 * The module's way to Redis: every call goes through {@link call}, which turns a failure into
 * `undefined` and logs one line when Redis stops answering and one when it answers again,
 * never one per request.
 */
@Injectable()
export class ApiTokenRedisService {
  private readonly logger = new Logger('ApiTokenRedis');
  private down = false;

  constructor(@Inject(API_TOKEN_REDIS) readonly client: RedisClient) {}

  /** Whether the last call failed. */
  get isDown(): boolean {
    return this.down;
  }

  /** Runs a call; a failure yields undefined (the caller carries on without Redis). */
  async call<T>(operation: string, call: (redis: RedisClient) => Promise<T>): Promise<T | undefined> {
    try {
      const result = await call(this.client);
      if (this.down) {
        this.down = false;
        this.logger.log('Redis answers again; caching and usage recording resumed');
      }
      return result;
    } catch (error) {
      if (!this.down) {
        this.down = true;
        this.logger.warn(`Redis ${operation} failed (${describeError(error)}); carrying on without Redis until it answers`);
      }
      return undefined;
    }
  }
}

/** An error's class and code, never its message (a message may quote a key, and keys hold tokens). */
export function describeError(error: unknown): string {
  if (!(error instanceof Error)) return typeof error;
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? `${error.name} ${code}` : error.name;
}
