/** Where the end-to-end suite finds PostgreSQL and Redis, and the Redis database it keeps to itself. */
export const PG_ADMIN_URL = process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const REDIS_HOST = process.env.TEST_REDIS_HOST ?? '127.0.0.1';
export const REDIS_PORT = Number(process.env.TEST_REDIS_PORT ?? 6379);
/** The suite's own Redis database index: tests only write keys there. */
export const REDIS_TEST_DB = Number(process.env.TEST_REDIS_DB ?? 13);
export const REDIS_TEST_URL = `redis://${REDIS_HOST}:${REDIS_PORT}/${REDIS_TEST_DB}`;
