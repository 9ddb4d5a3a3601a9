import { ApiTokenAuthenticator } from '../libs/api-token/src';
import { ApiTokenCacheService } from '../libs/api-token/src/cache/token-cache.service';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { RETRY_AFTER_SECONDS } from '../libs/api-token/src/auth/api-token.guard';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { INestApplication } from '@nestjs/common';
import { QueryCounter } from './support/query-counter';
import { whoami } from './support/requests';
import { suiteFixture } from './support/suite-fixture';
import { holdNextFind } from './support/gate';
import { ApiTokenRedisService } from '../libs/api-token/src/redis/redis-access.service';
import { lookupLockKey } from '../libs/api-token/src/api-token.keys';

describe('single flight across instances', () => {
  const suite = suiteFixture();
  let apps: INestApplication[];
  const counter = new QueryCounter();

  beforeAll(async () => {
    const apiToken = { lockWaitMs: 400, lockRetryDelayMs: 20 };
    apps = [await suite.app({ counter, apiToken }), await suite.app({ counter, apiToken })];
  });

  beforeEach(() => counter.reset());

  it('300 concurrent first requests split over two instances make one database query', async () => {
    const { token } = await apps[0].get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
    const answers = await Promise.all(Array.from({ length: 300 }, (_, i) => whoami(apps[i % 2], token)));
    expect(answers.map((r) => r.status)).toEqual(Array(300).fill(200));
    expect(counter.count()).toBe(1);
  });

  it('concurrent misses in one process share one Redis read', async () => {
    const { token } = await apps[0].get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
    expect((await whoami(apps[1], token)).status).toBe(200); // in Redis now, not in apps[0]'s in-process cache
    const cache = apps[0].get(ApiTokenCacheService);
    const lookupRedis = jest.spyOn(cache, 'lookupRedis');
    try {
      const authenticator = apps[0].get(ApiTokenAuthenticator);
      const results = await Promise.all(Array.from({ length: 50 }, () => authenticator.authenticate(token, 'app')));
      expect(new Set(results.map((r) => r?.id)).size).toBe(1);
      expect(results[0]).toMatchObject({ id: expect.any(String), scope: 'app' });
      expect(lookupRedis).toHaveBeenCalledTimes(1);
    } finally {
      lookupRedis.mockRestore();
    }
  });

  it('a lock left by a dead holder delays the lookup by at most lockWaitMs, then the database answers', async () => {
    const { token } = await apps[0].get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
    await suite.redis.set(lookupLockKey('app', token), 'dead-holder', 'PX', 10_000);
    expect((await whoami(apps[1], token)).status).toBe(200);
    expect(counter.count()).toBe(1);
    expect(await suite.redis.get(lookupLockKey('app', token))).toBe('dead-holder');
  });

  it('a fill that outlives its lookup lock does not take Redis for down when the late unlock finds the lock gone', async () => {
    const { token } = await apps[0].get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
    const redis = apps[0].get(ApiTokenRedisService);
    const call = redis.call.bind(redis);
    let unlocked: Promise<unknown> | undefined;
    jest.spyOn(redis, 'call').mockImplementation((operation, ...rest) => {
      const result = call(operation, ...rest);
      if (operation === 'unlock') unlocked = result;
      return result;
    });
    const held = holdNextFind(apps[0].get(ApiTokenRepository));
    const answer = whoami(apps[0], token).then((res) => res.status);
    await held.read;
    // The lock's TTL runs out while the database lookup is held: the release script then finds no lock.
    expect(await suite.redis.del(lookupLockKey('app', token))).toBe(1);
    held.release();
    expect(await answer).toBe(200);
    expect(unlocked).toBeDefined();
    await unlocked;
    expect(redis.isDown).toBe(false);
    jest.restoreAllMocks();
  });

  it('a database error is answered 503 once, not retried as if the lock had failed', async () => {
    const token = generateApiToken('app');
    await suite.db.query('ALTER TABLE api_tokens RENAME TO api_tokens_away');
    try {
      const res = await whoami(apps[0], token);
      expect(res.status).toBe(503);
      expect(res.headers['retry-after']).toBe(String(RETRY_AFTER_SECONDS));
      expect(RETRY_AFTER_SECONDS).toBe(5);
      expect(counter.count()).toBe(1);
      expect(await suite.redis.exists(`api_token:app:${token}`)).toBe(0);
    } finally {
      await suite.db.query('ALTER TABLE api_tokens_away RENAME TO api_tokens');
    }
    expect((await whoami(apps[0], token)).status).toBe(401);
  });
});
