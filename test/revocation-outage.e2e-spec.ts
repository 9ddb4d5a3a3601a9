import { ApiTokenService } from '../libs/api-token/src';
import type { INestApplication } from '@nestjs/common';
import request from 'supertest';
import { CapturingLogger } from './support/capturing-logger';
import { REDIS_TEST_URL } from './support/servers';
import { TcpProxy } from './support/tcp-proxy';
import { until } from './support/until';
import { suiteFixture } from './support/suite-fixture';

/**
 * A revocation made while the instance cannot reach Redis cannot drop the cached entry; the instance
 * keeps trying, so once Redis is reachable again the stale entry is gone and the token is refused.
 */
describe('revocation while Redis is unreachable', () => {
  const suite = suiteFixture();
  let proxy: TcpProxy;
  let app: INestApplication;
  const logger = new CapturingLogger();
  const whoami = (token: string) => request(app.getHttpServer()).get('/app/whoami').set('Authorization', `Bearer ${token}`);

  beforeAll(async () => {
    proxy = await suite.proxy(REDIS_TEST_URL);
    app = await suite.app({ redisUrl: proxy.proxied(REDIS_TEST_URL), logger });
  });

  it('drops the cached entry once Redis is reachable again', async () => {
    const tokens = app.get(ApiTokenService);
    const { token } = await tokens.create({ scope: 'app' });
    expect((await whoami(token)).status).toBe(200);
    const key = `api_token:app:${token}`;
    expect(await suite.redis.exists(key)).toBe(1);

    proxy.cut('refuse');
    const revocation = await tokens.revoke(token);
    expect(revocation.revoked).toHaveLength(1);
    expect(revocation.cacheCleared).toBe(false);
    expect(await suite.redis.exists(key)).toBe(1);
    expect((await whoami(token)).status).toBe(401);

    proxy.restore();
    await until('the retry reports the revocation cleared', () => logger.matching(/now cleared from the cache/).length === 1);
    expect(await suite.redis.exists(key)).toBe(0);
    expect((await whoami(token)).status).toBe(401);
  });
});
