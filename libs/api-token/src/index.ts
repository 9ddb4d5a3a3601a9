export { ApiTokenAuthenticator } from './auth/api-token.authenticator';
export { ApiTokenCacheService, type CacheLookup } from './cache/token-cache.service';
export { API_TOKEN_DATA_SOURCE, API_TOKEN_OPTIONS, API_TOKEN_REDIS } from './api-token.constants';
export { CurrentApiToken } from './auth/current-api-token.decorator';
export { ApiTokenEntity } from './store/api-token.entity';
export { ApiTokenError, ApiTokenInputError, ApiTokenStoreError } from './api-token.errors';
export { API_TOKEN_ERRORS, ApiTokenGuard, type ApiTokenRequest, RETRY_AFTER_SECONDS, parseAuthorization } from './auth/api-token.guard';
export * from './api-token.keys';
export {
  API_TOKEN_MIGRATIONS,
  ApiTokenMigration,
  ApiTokenMigration1764000000000,
  ApiTokenRevocationLogMigration1764100000000,
} from './store/api-token.migration';
export { ApiTokenModule } from './api-token.module';
export type { ApiTokenModuleExtras } from './api-token.module-definition';
export {
  type ApiTokenErrorFormat,
  type ApiTokenModuleOptions,
  DEFAULT_API_TOKEN_OPTIONS,
  DEFAULT_TOKEN_PATTERN,
  type ResolvedApiTokenOptions,
  resolveApiTokenOptions,
} from './api-token.options';
export {
  type ApiTokenRecord,
  type AuthenticatedApiToken,
  type RateLimitPolicy,
  formatNaiveUtc,
  parseRecord,
  serializeRecord,
  toNaiveUtc,
} from './store/api-token.record';
export type { RedisClient } from './redis/redis.commands';
export { ApiTokenRedisService } from './redis/redis-access.service';
export { type ApiTokenFilter, ApiTokenRepository, type LastUsedUpdate } from './store/api-token.repository';
export { DEFAULT_FLUSH_CRON, MAX_FLUSH_GAP_SECONDS, longestCronGapSeconds } from './usage/flush.schedule';
export { ApiTokenUsageRecorder } from './usage/usage.recorder';
export {
  ApiTokenUsageFlushService,
  FLUSH_JOB_NAME,
  FLUSH_LOCK_KEY,
  FLUSH_TICK_KEY,
  MAX_FUTURE_SKEW_MS,
  type UsageFlushStats,
} from './usage/usage-flush.service';
export { TOKEN_RANDOM_LENGTH, generateApiToken } from './tokens/token.generator';
export { hashToken, storedToken } from './tokens/token.hash';
export { SCOPE_RULE, isScope } from './tokens/token.scope';
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
  isUuid,
} from './tokens/api-token.service';
export { RATE_LIMIT_ERRORS } from './limits/rate-limit.errors';
export { ApiTokenInvalidationService, INVALIDATION_CHANNEL, invalidationChannel } from './cache/cache-invalidation.service';
export {
  type ApiTokenMetricsSnapshot,
  type ApiTokenMetricsSource,
  ApiTokenMetrics,
  DATABASE_RESULTS,
  type DatabaseResult,
  FLUSH_OUTCOMES,
  type FlushOutcome,
  INVALIDATION_KINDS,
  type InvalidationKind,
  LOOKUP_OUTCOMES,
  type LookupOutcome,
  MAX_OPERATION_LABELS,
  MAX_SCOPE_LABELS,
  OTHER_LABEL,
  REDIS_FALLBACK_REASONS,
  type RedisFallbackReason,
  ScopeCounters,
  type ScopeMetricsSnapshot,
  type TimingSnapshot,
} from './metrics/api-token.metrics';
export { API_TOKEN_COUNTERS, API_TOKEN_GAUGES, API_TOKEN_HISTOGRAMS, registerApiTokenMetrics } from './metrics/prometheus.registration';
export { type ApiTokenHealthCheckOptions, ApiTokenHealthIndicator, type ApiTokenHealthResult } from './metrics/api-token.health';
export { type ApiTokenStoresOptions, apiTokenStoresFromEnv } from './env/stores.modules';
export { ApiTokenStartupLogger, describeDatabaseFailure, describeRedisDown } from './env/stores.startup';
