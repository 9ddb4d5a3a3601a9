// The public API of nestjs-api-token: what an application needs, nothing else. Everything not
// exported here is internal and may change in any release (the package's `exports` map hides it).

// The module and its options
export { ApiTokenModule } from './api-token.module';
export { ConfigurableModuleClass as ApiTokenConfigurableModule } from './api-token.module-definition';
export type {
  ApiTokenModuleAsyncOptions,
  ApiTokenModuleExtras,
  ApiTokenModuleForRootOptions,
} from './api-token.module-definition';
export type {
  ApiTokenClientKey,
  ApiTokenErrorFormat,
  ApiTokenModuleOptions,
  FailedAttemptLimit,
  ApiTokenValidateHook,
  ApiTokenValidation,
  ApiTokenValidationRefusal,
} from './api-token.options';

// The request path: guard, decorator, and the authenticator for non-HTTP use
export {
  ApiTokenContextError,
  ApiTokenGuard,
  type ApiTokenGuardClass,
  type ApiTokenGuardInstance,
  type ApiTokenGuardRequest,
  type ApiTokenRequest,
  apiTokenRequestOf,
  apiTokenResponseOf,
} from './auth/api-token.guard';
export { ApiTokenRateLimitException, ApiTokenUnauthorizedException } from './auth/refusal';
export { CurrentApiToken } from './auth/current-api-token.decorator';
export { ApiTokenAuthenticator } from './auth/api-token.authenticator';
export type { AuthenticatedApiToken, RateLimitPolicy } from './store/api-token.record';

// Token lifecycle
export {
  type ApiTokenRateLimitChange,
  type ApiTokenRevocation,
  type ApiTokenRotation,
  ApiTokenService,
  type ApiTokenSummary,
  type CreateApiTokenInput,
  type CreatedApiToken,
  type ListApiTokensInput,
  type RotateApiTokenOptions,
  type TenantInvalidation,
} from './tokens/api-token.service';

// The cache and the table, injectable by these names
export { ApiTokenCacheService } from './cache/api-token-cache.facade';
export { ApiTokenRepository } from './store/api-token-repository.facade';

// Usage flush
export { ApiTokenUsageFlushService, type UsageFlushStats } from './usage/usage-flush.service';

// Observability
export {
  ApiTokenMetrics,
  type ApiTokenMetricsSnapshot,
  type DatabaseResult,
  type FlushOutcome,
  type InvalidationKind,
  type LookupOutcome,
  type RedisFallbackReason,
  type ScopeMetricsSnapshot,
  type TimingSnapshot,
} from './metrics/api-token.metrics';
export { registerApiTokenMetrics } from './metrics/prometheus.registration';
export { type ApiTokenHealthCheckOptions, ApiTokenHealthIndicator, type ApiTokenHealthResult } from './metrics/api-token.health';

// Storage
export { ApiTokenEntity } from './store/api-token.entity';
export {
  API_TOKEN_MIGRATIONS,
  ApiTokenMigration,
  ApiTokenMigration1764000000000,
  ApiTokenOwnTablesMigration1764100000000,
  ApiTokenPolicyChangesMigration1764200000000,
} from './store/api-token.migration';

// Errors
export { ApiTokenError, ApiTokenInputError, ApiTokenStoreError } from './api-token.errors';
