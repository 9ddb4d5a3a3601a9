import Redis from 'ioredis';
import { REDIS_TEST_URL } from './servers';

/** A client on the suite's own Redis database. */
export function testRedis(): Redis {
  return new Redis(REDIS_TEST_URL, { maxRetriesPerRequest: 1 });
}

/** Deletes the library's keys in the suite's own database (only tests write there). */
export async function clearLibraryKeys(redis: Redis): Promise<void> {
  for (const pattern of ['api_token*', 'tenant_tokens:*']) {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      if (keys.length) await redis.del(...keys);
    } while (cursor !== '0');
  }
}
