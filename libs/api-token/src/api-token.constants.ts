/** Injection token of the ioredis client (single node or Cluster) the module uses. */
export const API_TOKEN_REDIS = Symbol('API_TOKEN_REDIS');
/** Injection token of the TypeORM DataSource the module uses. */
export const API_TOKEN_DATA_SOURCE = Symbol('API_TOKEN_DATA_SOURCE');
/** Injection token of the options after defaults ({@link ResolvedApiTokenOptions}). */
export const API_TOKEN_OPTIONS = Symbol('API_TOKEN_OPTIONS');
