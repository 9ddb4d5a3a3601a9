import { type ApiTokenErrorFormat, ApiTokenService } from '../libs/api-token/src';
import { RATE_LIMIT_ERRORS } from '../libs/api-token/src/limits/rate-limit.errors';
import { API_TOKEN_ERRORS, RETRY_AFTER_SECONDS } from '../libs/api-token/src/auth/api-token.guard';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { INestApplication } from '@nestjs/common';
import request from 'supertest';
import { TcpProxy } from './support/tcp-proxy';
import { suiteFixture } from './support/suite-fixture';

/** The body and headers of each refusal, per `errorFormat`, as a client sees them. */
const SHAPES: Record<ApiTokenErrorFormat, { challenge: string; body: (status: 401 | 503, message: string) => object }> = {
  nest: {
    challenge: 'Bearer',
    body: (status, message) => ({ message, error: status === 401 ? 'Unauthorized' : 'Service Unavailable', statusCode: status }),
  },
  // Dify's libs/external_api.py: {code, message, status}, the code from werkzeug's exception class.
  dify: {
    challenge: 'Bearer realm="api"',
    body: (status, message) => ({ code: status === 401 ? 'unauthorized' : 'service_unavailable', message, status }),
  },
};

describe.each([
  ['express', 'dify'],
  ['fastify', 'dify'],
  ['express', 'nest'],
  ['fastify', 'nest'],
] as const)('refusals on %s, errorFormat %s', (adapter, errorFormat) => {
  const suite = suiteFixture();
  let proxy: TcpProxy;
  let app: INestApplication;
  const shape = SHAPES[errorFormat];

  beforeAll(async () => {
    proxy = await suite.proxy(suite.db.url);
    app = await suite.app({
      databaseUrl: proxy.proxied(suite.db.url),
      adapter,
      apiToken: { errorFormat },
      typeorm: { connectTimeoutMS: 500, extra: { query_timeout: 1000 } },
    });
  });

  const whoami = (authorization?: string) => {
    const req = request(app.getHttpServer()).get('/app/whoami');
    return authorization === undefined ? req : req.set('Authorization', authorization);
  };

  it.each([
    ['a missing header', undefined, API_TOKEN_ERRORS.missingHeader],
    ['a wrong scheme', 'Basic dXNlcjpwYXNz', API_TOKEN_ERRORS.wrongScheme],
    ['an unknown token', `Bearer ${generateApiToken('app')}`, API_TOKEN_ERRORS.invalidToken],
    ['a token that cannot be one', 'Bearer app-*', API_TOKEN_ERRORS.invalidToken],
  ])('%s: 401 in its shape, with its challenge', async (_name, authorization, message) => {
    const res = await whoami(authorization);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe(shape.challenge);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual(shape.body(401, message));
  });

  it('a token of another scope: 401 in its shape', async () => {
    const { token } = await app.get(ApiTokenRepository).insert({ token: generateApiToken('dataset'), type: 'dataset' });
    const res = await whoami(`Bearer ${token}`);
    expect([res.status, res.body]).toEqual([401, shape.body(401, API_TOKEN_ERRORS.invalidToken)]);
  });

  it('PostgreSQL down, uncached token: 503 in its shape, with Retry-After', async () => {
    const { token } = await app.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
    proxy.cut('refuse');
    try {
      const res = await whoami(`Bearer ${token}`);
      expect(res.status).toBe(503);
      expect(res.headers['retry-after']).toBe(String(RETRY_AFTER_SECONDS));
      expect(res.headers['www-authenticate']).toBeUndefined();
      expect(res.body).toEqual(shape.body(503, API_TOKEN_ERRORS.unavailable));
    } finally {
      proxy.restore();
    }
    expect((await whoami(`Bearer ${token}`)).status).toBe(200);
  });

  it('over its rate limit: 429 in its shape, with Retry-After and the rate-limit fields, no challenge', async () => {
    const { token } = await app.get(ApiTokenService).create({ scope: 'app', rateLimit: { limit: 1, windowSeconds: 3600 } });
    await whoami(`Bearer ${token}`).expect(200);
    const res = await whoami(`Bearer ${token}`);
    expect(res.status).toBe(429);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual(
      errorFormat === 'dify'
        ? { code: 'too_many_requests', message: RATE_LIMIT_ERRORS.exceeded, status: 429 }
        : { statusCode: 429, message: RATE_LIMIT_ERRORS.exceeded, error: 'Too Many Requests' },
    );
    expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(Number(res.headers['retry-after'])).toBeLessThanOrEqual(3600);
    expect(res.headers['ratelimit-policy']).toBe('"token";q=1;w=3600');
    expect(res.headers['ratelimit']).toMatch(/^"token";r=0;t=\d+$/);
    expect(res.headers['www-authenticate']).toBeUndefined();
  });

  it('a stored token of exactly 255 characters (the column\'s size) is accepted; one of 256 is refused', async () => {
    const longest = `app-${'A'.repeat(251)}`;
    expect(longest).toHaveLength(255);
    await app.get(ApiTokenRepository).insert({ token: longest, type: 'app' });
    const res = await whoami(`Bearer ${longest}`);
    expect(res.status).toBe(200);
    const tooLong = await whoami(`Bearer ${longest}A`);
    expect([tooLong.status, tooLong.body]).toEqual([401, shape.body(401, API_TOKEN_ERRORS.invalidToken)]);
  });
});
