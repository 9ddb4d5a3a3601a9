import { Module } from '@nestjs/common';
import { ApiTokenAuthenticator } from './auth/api-token.authenticator';
import { ApiTokenKnownTokens } from './auth/known-tokens.service';
import { ApiTokenRefusals } from './auth/refusal';
import { ApiTokenCacheService } from './cache/token-cache.service';
import { API_TOKEN_OPTIONS } from './api-token.constants';
import { ConfigurableModuleClass, MODULE_OPTIONS_TOKEN } from './api-token.module-definition';
import { type ApiTokenModuleOptions, resolveApiTokenOptions } from './api-token.options';
import { ApiTokenRedisService } from './redis/redis-access.service';
import { ApiTokenRepository } from './store/api-token.repository';
import { ApiTokenUsageRecorder } from './usage/usage.recorder';
import { ApiTokenUsageFlushService } from './usage/usage-flush.service';
import { ApiTokenInvalidationService } from './cache/cache-invalidation.service';
import { ApiTokenScopeSweep } from './cache/scope.sweep';
import { ApiTokenService } from './tokens/api-token.service';
import { ApiTokenExpirySweep } from './tokens/expiry.sweep';
import { ApiTokenMetrics } from './metrics/api-token.metrics';
import { ApiTokenHealthIndicator } from './metrics/api-token.health';
import { ApiTokenRateLimiter } from './limits/rate-limiter.service';
import { ApiTokenFailedAttemptLimiter } from './limits/failed-attempt-limiter.service';
import { ApiTokenRevokedTokens } from './cache/revoked-tokens';
import { ApiTokenRevocationLogService } from './tokens/revocation-log.service';
import { ApiTokenCacheService as PublicApiTokenCache } from './cache/api-token-cache.facade';
import { ApiTokenRepository as PublicApiTokenRepository } from './store/api-token-repository.facade';

const services = [
  PublicApiTokenCache,
  PublicApiTokenRepository,
  ApiTokenAuthenticator,
  ApiTokenKnownTokens,
  ApiTokenRefusals,
  ApiTokenCacheService,
  ApiTokenRedisService,
  ApiTokenRepository,
  ApiTokenUsageRecorder,
  ApiTokenUsageFlushService,
  ApiTokenService,
  ApiTokenExpirySweep,
  ApiTokenInvalidationService,
  ApiTokenScopeSweep,
  ApiTokenMetrics,
  ApiTokenHealthIndicator,
  ApiTokenRateLimiter,
  ApiTokenFailedAttemptLimiter,
  ApiTokenRevokedTokens,
  ApiTokenRevocationLogService,
];

/**
 * API-token authentication: register once with `forRoot` or `forRootAsync`, beside
 * `RedisModule` (`@nestjs-modules/ioredis`) and `TypeOrmModule`, then guard routes with
 * `@UseGuards(ApiTokenGuard('app'))`. Global unless `isGlobal: false`.
 */
@Module({
  providers: [
    ...services,
    { provide: API_TOKEN_OPTIONS, useFactory: (options: ApiTokenModuleOptions) => resolveApiTokenOptions(options), inject: [MODULE_OPTIONS_TOKEN] },
  ],
  exports: [...services, API_TOKEN_OPTIONS],
})
export class ApiTokenModule extends ConfigurableModuleClass {}
