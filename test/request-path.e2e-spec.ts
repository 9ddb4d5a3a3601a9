import { ApiTokenAuthenticator, ApiTokenGuard, ApiTokenService } from '../libs/api-token/src';
import { ApiTokenScopeSweep } from '../libs/api-token/src/cache/scope.sweep';
import { ApiTokenCacheService } from '../libs/api-token/src/cache/token-cache.service';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { type ApiTokenRecord, parseRecord, toNaiveUtc } from '../libs/api-token/src/store/api-token.record';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { INestApplication } from '@nestjs/common';
import request from 'supertest';
import { QueryCounter } from './support/query-counter';
import { until } from './support/until';
import { suiteFixture } from './support/suite-fixture';
import { UNCONFIRMED } from '../libs/api-token/src/redis/redis-access.service';

const MISSING = "Authorization header must be provided and start with 'Bearer'";
const SCHEME = "Authorization scheme must be 'Bearer'";
const INVALID = 'Access token is invalid';
const NAIVE_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?$/;

describe.each(['express', 'fastify'] as const)('request path (%s)', (adapter) => {
  const suite = suiteFixture();
  let app: INestApplication;
  let repository: ApiTokenRepository;
  const counter = new QueryCounter();
  const whoami = (path: string, authorization?: string) => {
    const req = request(app.getHttpServer()).get(path);
    return authorization === undefined ? req : req.set('Authorization', authorization);
  };
  const newToken = (scope = 'app', tenantId: string | null = null) =>
    repository.insert({ token: generateApiToken(scope), type: scope, tenantId });

  beforeAll(async () => {
    // Unknown tokens take the usual path here (negatives, single flight); the filter has its own suite.
    app = await suite.app({ counter, adapter, apiToken: { membershipFilterRebuildMs: 0 } });
    repository = app.get(ApiTokenRepository);
  });

  beforeEach(() => counter.reset());

  describe('header parsing', () => {
    it.each([
      ['no header', undefined, MISSING],
      ['no space', 'Bearerapp-abc', MISSING],
      ['scheme only with a space', 'Bearer ', MISSING],
      ['another scheme', 'Basic dXNlcjpwYXNz', SCHEME],
      ['an unknown token', 'Bearer app-unknownunknownunknown1', INVALID],
    ])('%s: 401 with its message and WWW-Authenticate', async (_name, header, message) => {
      const res = await whoami('/app/whoami', header);
      expect(res.status).toBe(401);
      expect(res.body.message).toBe(message);
      expect(res.headers['www-authenticate']).toBe('Bearer');
    });

    it('accepts the scheme in any case', async () => {
      const { token } = await newToken();
      for (const scheme of ['bearer', 'BEARER', 'BeArEr']) {
        expect((await whoami('/app/whoami', `${scheme} ${token}`)).status).toBe(200);
      }
    });
  });

  describe('scopes', () => {
    it('answers 200 with the demo JSON for a token of the route scope', async () => {
      const record = await newToken('dataset', '7b1c7c1e-4a53-4f0c-9d8c-3f1a1b2c3d4e');
      const res = await whoami('/dataset/whoami', `Bearer ${record.token}`);
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ id: record.id, appId: null, tenantId: record.tenantId, scope: 'dataset' });
    });

    it('refuses a token of another scope and caches a negative for that scope (TTL at most 60 s)', async () => {
      const { token } = await newToken('app');
      const res = await whoami('/dataset/whoami', `Bearer ${token}`);
      expect(res.status).toBe(401);
      expect(res.body.message).toBe(INVALID);
      expect(await suite.redis.get(`api_token:dataset:${token}`)).toBe('null');
      const ttl = await suite.redis.ttl(`api_token:dataset:${token}`);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(60);
    });
  });

  describe('cache entries in Dify format', () => {
    it.each(['UTC', 'Asia/Tokyo'])('writes the row as compact JSON in field order, naive UTC, TZ=%s', async (tz) => {
      const saved = process.env.TZ;
      process.env.TZ = tz;
      try {
        const tenantId = 'a0a0a0a0-1111-4222-8333-444455556666';
        const record = await newToken('app', tenantId);
        await suite.db.query(`UPDATE api_tokens SET last_used_at = '2026-02-03 10:00:00.123456' WHERE id = $1`, [record.id]);
        expect((await whoami('/app/whoami', `Bearer ${record.token}`)).status).toBe(200);

        const key = `api_token:app:${record.token}`;
        const raw = await suite.redis.get(key);
        const createdAt = JSON.parse(raw!).created_at as string;
        expect(raw).toBe(
          `{"id":"${record.id}","app_id":null,"tenant_id":"${tenantId}","type":"app","token":"${record.token}",` +
            `"last_used_at":"2026-02-03T10:00:00.123456","created_at":"${createdAt}","expires_at":null,"rate_limit":null}`,
        );
        expect(createdAt).toMatch(NAIVE_UTC);
        expect(Math.abs(Date.parse(`${createdAt}Z`) - Date.now())).toBeLessThan(120_000);
        const ttl = await suite.redis.ttl(key);
        expect(ttl).toBeGreaterThan(590);
        expect(ttl).toBeLessThanOrEqual(600);
        expect(await suite.redis.sismember(`tenant_tokens:${tenantId}`, key)).toBe(1);

        const activeKey = `api_token_active:app:${record.token}`;
        await until('the use is recorded', async () => (await suite.redis.exists(activeKey)) === 1);
        const active = await suite.redis.get(activeKey);
        expect(active).toMatch(NAIVE_UTC);
        expect(Math.abs(Date.parse(`${active}Z`) - Date.now())).toBeLessThan(120_000);
        const activeTtl = await suite.redis.ttl(activeKey);
        expect(activeTtl).toBeGreaterThan(3590);
        expect(activeTtl).toBeLessThanOrEqual(3600);
      } finally {
        process.env.TZ = saved;
      }
    });

    it("reads an entry in the library's form (microseconds, an offset, extra fields) without the database", async () => {
      const token = generateApiToken('app');
      const id = '0b7e5f2a-9c1d-4e3f-8a2b-1c0d9e8f7a6b';
      await suite.redis.set(
        `api_token:app:${token}`,
        JSON.stringify({
          id, app_id: null, tenant_id: null, type: 'app', token, last_used_at: '2026-02-03T10:00:00.123456', created_at: '2026-01-01T09:00:00+09:00',
          expires_at: null, rate_limit: null, extra: 1,
        }),
        'EX',
        600,
      );
      const res = await whoami('/app/whoami', `Bearer ${token}`);
      expect(res.status).toBe(200);
      expect(res.body.id).toBe(id);
      expect(counter.count()).toBe(0);
    });

    it('reads an entry Dify wrote (its seven fields: no policy it can vouch for) from the database once, and rewrites it', async () => {
      const record = await newToken();
      const key = `api_token:app:${record.token}`;
      const { id, appId, tenantId, type, token, createdAt } = record;
      const dify = { id, app_id: appId, tenant_id: tenantId, type, token, last_used_at: '2026-02-03T10:00:00.123456', created_at: createdAt };
      await suite.redis.set(key, JSON.stringify(dify), 'EX', 600);
      counter.reset();
      const res = await whoami('/app/whoami', `Bearer ${record.token}`);
      expect(res.status).toBe(200);
      expect(res.body.id).toBe(id);
      expect(counter.count()).toBe(1);
      expect(JSON.parse((await suite.redis.get(key))!)).toMatchObject({ id, expires_at: null, rate_limit: null });
    });

    it('treats a corrupted entry as a miss, reads the database and overwrites it', async () => {
      const record = await newToken();
      const key = `api_token:app:${record.token}`;
      await suite.redis.set(key, '{"id": broken', 'EX', 600);
      expect((await whoami('/app/whoami', `Bearer ${record.token}`)).status).toBe(200);
      expect(counter.count()).toBe(1);
      const stored = parseRecord((await suite.redis.get(key))!) as ApiTokenRecord;
      expect(stored.id).toBe(record.id);
    });
  });

  describe('negative cache and single flight', () => {
    it('20 requests with one unknown token make at most one database query', async () => {
      const token = generateApiToken('app');
      for (let i = 0; i < 20; i++) expect((await whoami('/app/whoami', `Bearer ${token}`)).status).toBe(401);
      expect(counter.count()).toBe(1);
      app.get(ApiTokenCacheService).clearLocal();
      for (let i = 0; i < 5; i++) expect((await whoami('/app/whoami', `Bearer ${token}`)).status).toBe(401);
      expect(counter.count()).toBe(1);
    });

    it('300 concurrent first requests for one valid token make exactly one database query', async () => {
      const record = await newToken();
      const answers = await Promise.all(Array.from({ length: 300 }, () => whoami('/app/whoami', `Bearer ${record.token}`)));
      expect(answers.map((r) => r.status)).toEqual(Array(300).fill(200));
      expect(counter.count()).toBe(1);
    });
  });

  describe('scopes', () => {
    it('refuses an app record a writer put under the dataset key: 401, after one database lookup', async () => {
      const { token } = await newToken('app');
      expect((await whoami('/app/whoami', `Bearer ${token}`)).status).toBe(200);
      await suite.redis.set(`api_token:dataset:${token}`, (await suite.redis.get(`api_token:app:${token}`))!, 'EX', 600);
      counter.reset();
      const res = await whoami('/dataset/whoami', `Bearer ${token}`);
      expect(res.status).toBe(401);
      expect(counter.count()).toBe(1);
    });

    it('refuses an app record held in the in-process cache under the dataset key', async () => {
      const record = await newToken('app');
      // An unconfirmed fill writes L1 only: the app record sits in this instance's L1 under the dataset key.
      const cache = app.get(ApiTokenCacheService);
      await cache.fill('dataset', record.token, record, UNCONFIRMED, cache.localEpoch, cache.localClock());
      expect((await whoami('/dataset/whoami', `Bearer ${record.token}`)).status).toBe(401);
    });

    it('refuses the reserved scope "any" where a lookup enters, before any I/O, and keeps the scope-less entry', async () => {
      const { token } = await newToken('dataset');
      const authenticator = app.get(ApiTokenAuthenticator);
      expect(await authenticator.authenticate(token, null)).toMatchObject({ scope: 'dataset' });
      const entry = await suite.redis.get(`api_token:any:${token}`);
      counter.reset();
      for (const scope of ['any', 'None', 'a:b']) {
        await expect(authenticator.authenticate(token, scope)).rejects.toThrow(/"scope" must be 1 to 16 letters/);
      }
      expect(() => ApiTokenGuard('any')).toThrow(/not "any" or "None"/);
      expect(counter.count(/.*/)).toBe(0);
      expect(await suite.redis.get(`api_token:any:${token}`)).toBe(entry);
      expect(await authenticator.authenticate(token, null)).toMatchObject({ scope: 'dataset' });
    });
  });

  describe('tokens that cannot be valid', () => {
    it.each([
      ['300 characters', `app-${'a'.repeat(296)}`],
      ['a glob star', '*'],
      ['a glob pattern', 'app-*'],
      ['a character class', '[a-z]*'],
      ['a question mark', 'app-????'],
      ['non-ASCII', 'app-tökén'],
      ['a colon', 'app-abc:def'],
    ])('%s: 401 with no database query and no cache entry', async (_name, token) => {
      const res = await whoami('/app/whoami', `Bearer ${token}`);
      expect(res.status).toBe(401);
      expect(res.body.message).toBe(INVALID);
      expect(counter.count(/api_tokens/)).toBe(0);
      expect(await suite.redis.exists(`api_token:app:${token}`)).toBe(0);
    });

    it('the sweep after a revocation deletes the entry in a scope the token never had, not one filled after it in its own', async () => {
      const { token } = await newToken('app');
      expect((await whoami('/dataset/whoami', `Bearer ${token}`)).status).toBe(401); // cached refused under dataset
      await app.get(ApiTokenService).revoke(token);
      expect((await whoami('/app/whoami', `Bearer ${token}`)).status).toBe(401); // refused, filled after the revocation
      expect(await suite.redis.exists(`api_token:app:${token}`)).toBe(1);
      // What the sweep itself deletes (the revocation log's poll may also drop the refilled entry).
      const cache = app.get(ApiTokenCacheService);
      const sweepSlice = cache.sweepSlice.bind(cache);
      const swept: string[] = [];
      jest.spyOn(cache, 'sweepSlice').mockImplementation((tokens, position, budgetMs) => sweepSlice(tokens, position, budgetMs, swept));
      try {
        await app.get(ApiTokenScopeSweep).drain();
      } finally {
        jest.restoreAllMocks();
      }
      // Not the app entry: deleting it would only cost the next request a query for an answer it already has.
      expect(swept).toEqual([`api_token:dataset:${token}`]);
      expect(await suite.redis.exists(`api_token:dataset:${token}`)).toBe(0);
    });

    it('deleting by a token with glob characters deletes nothing else', async () => {
      const others = await Promise.all([newToken('app'), newToken('dataset')]);
      for (const { token, type } of others) expect((await whoami(`/${type}/whoami`, `Bearer ${token}`)).status).toBe(200);
      const cache = app.get(ApiTokenCacheService);
      for (const literal of ['*', 'app-*', '[a-z]*', '?*', '\\*']) {
        expect(await cache.deleteAllScopes(literal)).toEqual([]);
      }
      for (const { token, type } of others) expect(await suite.redis.exists(`api_token:${type}:${token}`)).toBe(1);
      expect(await cache.deleteAllScopes(others[0].token)).toEqual([`api_token:app:${others[0].token}`]);
      expect(await suite.redis.exists(`api_token:dataset:${others[1].token}`)).toBe(1);
    });
  });

  it('stores timestamps as naive UTC whatever the process TZ is', async () => {
    const saved = process.env.TZ;
    process.env.TZ = 'America/Los_Angeles';
    try {
      const record = await newToken();
      const [{ created_at }] = (await suite.db.query(`SELECT to_char(created_at, 'YYYY-MM-DD"T"HH24:MI:SS') AS created_at FROM api_tokens WHERE id = $1`, [record.id])) as { created_at: string }[];
      expect(toNaiveUtc(created_at)).toBe(record.createdAt);
      expect(Math.abs(Date.parse(`${created_at}Z`) - Date.now())).toBeLessThan(120_000);
    } finally {
      process.env.TZ = saved;
    }
  });
});
