import { Inject, Injectable } from '@nestjs/common';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { ApiTokenAuthenticator } from '../auth/api-token.authenticator';
import type { AuthenticatedApiToken } from '../store/api-token.record';
import { ApiTokenService, type TenantInvalidation } from '../tokens/api-token.service';
import { checkScope } from '../tokens/token.scope';
import { storedToken } from '../tokens/token.hash';
import { ApiTokenCacheService as TokenCache } from './token-cache.service';

/**
 * The token cache, for an application (Dify's `ApiTokenCache.get/set/delete/invalidate` in spirit):
 * look a token up as the guard does, peek at what this process holds, evict a token, invalidate a
 * tenant. Answers identities, never the token.
 */
@Injectable()
export class ApiTokenCacheService {
  /** @internal Nest's injection: applications inject the class, never construct it. */
  constructor(
    private readonly authenticator: ApiTokenAuthenticator,
    private readonly tokens: ApiTokenService,
    private readonly cache: TokenCache,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
  ) {}

  /** The identity of `token` in `scope` through every layer (in-process, Redis, then the database, which fills both), or null. */
  lookup(token: string, scope: string): Promise<AuthenticatedApiToken | null> {
    return this.authenticator.authenticate(token, checkScope(scope, 'ApiTokenCacheService.lookup: "scope"'));
  }

  /**
   * What this process's cache holds for `token` in `scope`, with no I/O: the identity, null for a cached
   * "no such token", undefined when it holds nothing (Redis and the database are not asked).
   */
  peek(token: string, scope: string): AuthenticatedApiToken | null | undefined {
    const local = this.authenticator.authenticateLocal(token, checkScope(scope, 'ApiTokenCacheService.peek: "scope"'));
    return local === undefined ? undefined : local && local.identity;
  }

  /**
   * Drops `token`'s cache entries (in `scope`, or in every scope when none is given) from Redis and
   * from every instance's in-process cache; the row stays. True when Redis confirmed.
   */
  async evict(token: string, scope?: string): Promise<boolean> {
    const stored = storedToken(token, this.options);
    if (scope !== undefined) return this.cache.deleteNamed(stored, [checkScope(scope, 'ApiTokenCacheService.evict: "scope"')]);
    const deleted = await this.cache.deleteAllScopes(stored);
    return Array.isArray(deleted);
  }

  /** Drops every cached entry of the tenant (uuid), as {@link ApiTokenService.invalidateTenant}. */
  invalidateTenant(tenantId: string): Promise<TenantInvalidation> {
    return this.tokens.invalidateTenant(tenantId);
  }
}
