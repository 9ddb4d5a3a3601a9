import { API_TOKEN_ERRORS, RETRY_AFTER_SECONDS } from '../libs/api-token/src/auth/api-token.guard';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { ApiTokenStoreError } from '../libs/api-token/src/api-token.errors';
import type { INestApplication } from '@nestjs/common';
import { Client } from 'pg';
import { get, listen } from './support/http-client';
import { QueryCounter } from './support/query-counter';
import { TcpProxy } from './support/tcp-proxy';
import { suiteFixture } from './support/suite-fixture';

/**
 * PostgreSQL taken away through a TCP proxy the test controls: cached tokens keep working, an uncached
 * one gets 503 with Retry-After (never 401 or 500), nothing negative is cached, and it recovers.
 */
describe('PostgreSQL outage', () => {
  const suite = suiteFixture();
  let proxy: TcpProxy;
  let app: INestApplication;
  let port: number;
  const counter = new QueryCounter();
  let cached: string;
  let uncached: string;
  const unknown = generateApiToken('app');

  beforeAll(async () => {
    proxy = await suite.proxy(suite.db.url);
    app = await suite.app({
      databaseUrl: proxy.proxied(suite.db.url),
      counter,
      // L1 off: "cached" means cached in Redis, so every request needs Redis or the database.
      // Unknown tokens take the usual path (its negatives are under test); the filter has its own suite.
      apiToken: { localCacheMax: 0, membershipFilterRebuildMs: 0 },
      typeorm: { connectTimeoutMS: 500, extra: { ...counter.typeorm.extra, query_timeout: 1000 } },
    });
    port = await listen(app);
    const repository = app.get(ApiTokenRepository);
    cached = (await repository.insert({ token: generateApiToken('app'), type: 'app' })).token;
    uncached = (await repository.insert({ token: generateApiToken('app'), type: 'app' })).token;
    expect((await get(port, '/app/whoami', cached)).status).toBe(200);
  });

  const cacheKeys = async () => [await suite.redis.exists(`api_token:app:${uncached}`), await suite.redis.exists(`api_token:app:${unknown}`)];

  describe.each([
    ['refused', 'refuse'],
    ['black-holed', 'hang'],
  ] as const)('connections %s', (_, mode) => {
    it('answers 200 for a cached token and 503 with Retry-After for uncached ones, caching nothing', async () => {
      proxy.cut(mode);
      try {
        for (let i = 0; i < 3; i++) {
          expect((await get(port, '/app/whoami', cached)).status).toBe(200);
          for (const token of [uncached, unknown]) {
            const started = Date.now();
            const answer = await get(port, '/app/whoami', token);
            expect([answer.status, answer.headers['retry-after']]).toEqual([503, String(RETRY_AFTER_SECONDS)]);
            expect(JSON.parse(answer.body).message).toBe(API_TOKEN_ERRORS.unavailable);
            if (i === 0) console.log(`PostgreSQL ${mode}: uncached token answered 503 in ${Date.now() - started} ms`);
          }
        }
        expect(await cacheKeys()).toEqual([0, 0]);
      } finally {
        proxy.restore();
      }
    });

    it('recovers by itself once PostgreSQL is back', async () => {
      expect((await get(port, '/app/whoami', uncached)).status).toBe(200);
      expect((await get(port, '/app/whoami', unknown)).status).toBe(401);
      expect(await cacheKeys()).toEqual([1, 1]);
      await suite.redis.del(`api_token:app:${uncached}`, `api_token:app:${unknown}`);
    });
  });
});

/**
 * A statement that timed out on the client (`query_timeout`) may still run on its connection: the
 * library drops that connection rather than hand it to the next statement, which would queue behind.
 * One pooled connection, the table locked by another session for the whole test: the lookup times
 * out, and a statement on another table then runs on a fresh connection.
 */
describe('a statement that timed out: its connection is dropped, not pooled again', () => {
  const suite = suiteFixture();

  it('the next statement runs on a new connection while the first still waits on the lock', async () => {
    const app = await suite.app({ typeorm: { extra: { max: 1, query_timeout: 300 } }, apiToken: { revocationPollIntervalMs: 0 } });
    const repository = app.get(ApiTokenRepository);
    const { token } = await repository.insert({ token: generateApiToken('app'), type: 'app' });
    const locker = new Client({ connectionString: suite.db.url });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE');
      const error = await repository.findByToken(token, 'app').catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ApiTokenStoreError);
      await expect(repository.readRevocationLog({ after: '0', gaps: [] }, 10)).resolves.toMatchObject({ entries: [] });
    } finally {
      await locker.query('ROLLBACK');
      await locker.end();
    }
  });
});
