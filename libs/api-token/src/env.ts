// nestjs-api-token/env: the environment and start-up plumbing the package's `bin` and the demo share
// (stores from DATABASE_URL / REDIS_URL / REDIS_CLUSTER_NODES / REDIS_SENTINELS, one-line start-up
// diagnostics). Kept out of the main entry: an application that wires its own stores never needs it.

export { type ApiTokenStoresOptions, apiTokenStoresFromEnv } from './env/stores.modules';
export { ApiTokenStartupLogger, describeDatabaseFailure, describeRedisDown } from './env/stores.startup';
