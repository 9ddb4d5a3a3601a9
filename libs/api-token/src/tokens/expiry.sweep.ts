import { Inject, Injectable, Logger, OnModuleInit } from '@nestjs/common';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { ApiTokenStoreError } from '../api-token.errors';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { ApiTokenUsageFlushService } from '../usage/usage-flush.service';
import { ApiTokenService } from './api-token.service';

/**
 * Expired tokens deleted per page. Each goes through the revocation path (a DELETE, then a SCAN of its
 * cache keys and a publish), so a page is kept well inside the flush lock's lifetime.
 */
const SWEEP_PAGE = 100;

/**
 * Removes expired tokens on the usage flush's schedule, in its run and under its lock (one instance
 * per tick): each expired row is deleted and its cache entries dropped on every instance, exactly as
 * {@link ApiTokenService.revoke} does, so a Dify sharing PostgreSQL and Redis refuses the token too.
 * Expiry is judged by PostgreSQL's clock.
 */
@Injectable()
export class ApiTokenExpirySweep implements OnModuleInit {
  private readonly logger = new Logger(ApiTokenExpirySweep.name);

  constructor(
    private readonly tokens: ApiTokenService,
    private readonly flush: ApiTokenUsageFlushService,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
  ) {}

  onModuleInit(): void {
    this.flush.setFollowUp((keepLock) => this.sweep(keepLock));
  }

  /**
   * Deletes expired tokens a page at a time while `keepLock` holds; returns how many. A database
   * failure is logged and leaves the rest for the next run.
   */
  async sweep(keepLock: () => Promise<boolean> = async () => true): Promise<number> {
    const page = Math.min(SWEEP_PAGE, this.options.flushPageSize);
    let removed = 0;
    try {
      for (;;) {
        const count = await this.tokens.removeExpired(page);
        removed += count;
        if (count < page || !(await keepLock())) return removed;
      }
    } catch (error) {
      if (!(error instanceof ApiTokenStoreError)) throw error;
      this.logger.error(`Expired tokens not removed: ${error.message}; the next run tries again`);
      return removed;
    }
  }
}
