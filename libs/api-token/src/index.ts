export { ApiTokenAuthenticator } from './api-token.authenticator';
export { ApiTokenCacheService, type CacheLookup } from './api-token-cache.service';
export { API_TOKEN_DATA_SOURCE, API_TOKEN_OPTIONS, API_TOKEN_REDIS } from './api-token.constants';
export { CurrentApiToken } from './api-token.decorator';
export { ApiTokenEntity } from './api-token.entity';
export { ApiTokenStoreError } from './api-token.errors';
export { API_TOKEN_ERRORS, ApiTokenGuard, type ApiTokenRequest, RETRY_AFTER_SECONDS, parseAuthorization } from './api-token.guard';
export * from './api-token.keys';
export { ApiTokenMigration, ApiTokenMigration1764000000000 } from './api-token.migration';
export { ApiTokenModule } from './api-token.module';
export type { ApiTokenModuleExtras } from './api-token.module-definition';
export {
  type ApiTokenModuleOptions,
  DEFAULT_API_TOKEN_OPTIONS,
  DEFAULT_TOKEN_PATTERN,
  type ResolvedApiTokenOptions,
  resolveApiTokenOptions,
} from './api-token.options';
export {
  type ApiTokenRecord,
  type AuthenticatedApiToken,
  formatNaiveUtc,
  parseRecord,
  serializeRecord,
  toNaiveUtc,
} from './api-token.record';
export type { RedisClient } from './api-token.redis';
export { ApiTokenRedisService } from './api-token-redis.service';
export { type ApiTokenFilter, ApiTokenRepository, type LastUsedUpdate } from './api-token.repository';
export { ACTIVE_KEY_TTL_SECONDS, ApiTokenUsageRecorder } from './api-token-usage.recorder';
export {
  ApiTokenUsageFlushService,
  DEFAULT_FLUSH_CRON,
  FLUSH_JOB_NAME,
  FLUSH_LOCK_KEY,
  FLUSH_TICK_KEY,
  MAX_FLUSH_GAP_SECONDS,
  MAX_FUTURE_SKEW_MS,
  type UsageFlushStats,
  longestCronGapSeconds,
} from './api-token-usage-flush.service';
export { TOKEN_RANDOM_LENGTH, generateApiToken } from './api-token.generator';
export { hashToken, storedToken } from './api-token.hash';
export {
  type ApiTokenRevocation,
  ApiTokenService,
  type ApiTokenSummary,
  type CreateApiTokenInput,
  type CreatedApiToken,
  type ListApiTokensInput,
  type TenantInvalidation,
  isUuid,
} from './api-token.service';
export { ApiTokenInvalidationService, INVALIDATION_CHANNEL, invalidationChannel } from './api-token-invalidation.service';
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
} from './api-token.metrics';
export { API_TOKEN_COUNTERS, API_TOKEN_GAUGES, API_TOKEN_HISTOGRAMS, registerApiTokenMetrics } from './api-token.prometheus';
export { type ApiTokenHealthCheckOptions, ApiTokenHealthIndicator, type ApiTokenHealthResult } from './api-token.health';
