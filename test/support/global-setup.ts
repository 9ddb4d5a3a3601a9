import Redis from 'ioredis';
import { Client } from 'pg';
import { PG_ADMIN_URL, REDIS_TEST_URL } from './servers';

/** Fails the run at once, with the reason, when PostgreSQL or Redis is not there. */
export default async function globalSetup(): Promise<void> {
  const pg = new Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 3000 });
  try {
    await pg.connect();
    await pg.query('SELECT 1');
  } catch (error) {
    throw new Error(`PostgreSQL is not answering at ${PG_ADMIN_URL} (${(error as Error).message}); start it or set TEST_PG_URL`);
  } finally {
    await pg.end().catch(() => undefined);
  }
  const redis = new Redis(REDIS_TEST_URL, { lazyConnect: true, maxRetriesPerRequest: 0, connectTimeout: 3000 });
  try {
    await redis.connect();
    await redis.ping();
  } catch (error) {
    throw new Error(`Redis is not answering at ${REDIS_TEST_URL} (${(error as Error).message}); start it or set TEST_REDIS_HOST/PORT`);
  } finally {
    redis.disconnect();
  }
}
