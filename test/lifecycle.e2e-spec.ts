import { ApiTokenRevocationLogService } from '../libs/api-token/src/tokens/revocation-log.service';
import { ApiTokenAuthenticator, ApiTokenInputError, ApiTokenService } from '../libs/api-token/src';
import { ApiTokenInvalidationService, ECHO_LOST_AFTER_MS } from '../libs/api-token/src/cache/cache-invalidation.service';
import { ApiTokenRedisService } from '../libs/api-token/src/redis/redis-access.service';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { hashToken } from '../libs/api-token/src/tokens/token.hash';
import * as generator from '../libs/api-token/src/tokens/token.generator';
import type { INestApplication } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { localCacheState, untilCachedLocally } from './support/local-cache';
import { QueryCounter } from './support/query-counter';
import { countExisting, killSubscribers } from './support/redis';
import { until } from './support/until';
import { whoami } from './support/requests';
import { gate, holdNextFind } from './support/gate';
import { suiteFixture } from './support/suite-fixture';

describe('token lifecycle and revocation across two instances', () => {
  const suite = suiteFixture();
  let a: INestApplication;
  let b: INestApplication;
  const counter = new QueryCounter();
  const local = localCacheState;
  const cached = (token: string, scope = 'app') => suite.redis.get(`api_token:${scope}:${token}`);

  beforeAll(async () => {
    // An in-process TTL far longer than any wait below: an entry that goes must have been evicted, not expired.
    // Unknown tokens take the usual path here (its negatives are under test); the filter has its own suite.
    const apiToken = { localCacheTtlMs: 300_000, membershipFilterRebuildMs: 0 };
    a = await suite.app({ counter, apiToken });
    b = await suite.app({ counter, apiToken });
  });

  afterEach(() => jest.restoreAllMocks());

  it('creates tokens in Dify format with the scope default prefix, unique, and lists them masked', async () => {
    const appId = randomUUID();
    const tokens = a.get(ApiTokenService);
    const app = await tokens.create({ scope: 'app', appId });
    const dataset = await tokens.create({ scope: 'dataset', appId });
    const custom = await tokens.create({ scope: 'workflow', appId });
    expect(app.token).toMatch(/^app-[A-Za-z0-9]{24}$/);
    expect(dataset.token).toMatch(/^dataset-[A-Za-z0-9]{24}$/);
    expect(custom.token).toMatch(/^workflow-[A-Za-z0-9]{24}$/);
    expect(app.maskedToken).toBe(`app-${'*'.repeat(24)}`);

    const listed = await b.get(ApiTokenService).list({ appId });
    expect(listed.map((t) => t.id).sort()).toEqual([app.id, dataset.id, custom.id].sort());
    const shown = JSON.stringify(listed);
    for (const { token } of [app, dataset, custom]) expect(shown).not.toContain(token.slice(-24));
    expect(listed.find((t) => t.id === dataset.id)).toMatchObject({ scope: 'dataset', appId, tenantId: null, maskedToken: `dataset-${'*'.repeat(24)}` });
    expect(await b.get(ApiTokenService).list({ appId, scope: 'workflow' })).toHaveLength(1);
    expect((await whoami(b, dataset.token, 'dataset')).status).toBe(200);
  });

  it('refuses bad input with a clear error that does not echo it, before any I/O', async () => {
    const tokens = a.get(ApiTokenService);
    const secret = generateApiToken('app');
    counter.reset();
    await expect(tokens.create({ scope: 'app', appId: secret })).rejects.toThrow('"appId" must be a UUID');
    await expect(tokens.create({ scope: 'app', tenantId: 'x' })).rejects.toThrow('"tenantId" must be a UUID');
    await expect(tokens.create({ scope: 'a:b' })).rejects.toThrow('"scope" must be 1 to 16');
    await expect(tokens.create({ scope: 'any' })).rejects.toThrow('not "any"');
    await expect(tokens.create({ scope: 'x'.repeat(17) })).rejects.toThrow('"scope" must be 1 to 16');
    await expect(tokens.create({ scope: 'app', prefix: 'bad prefix' })).rejects.toThrow('"prefix"');
    // A live token pasted as the prefix, whole or cut to the length allowed, is refused and never quoted.
    const live = 'app-Xk3pQ9vLm2RtY7wZa8Nc4Hd6';
    for (const pasted of [live, live.slice(0, 16), live.slice(0, 13)]) {
      const refused = await tokens.create({ scope: 'app', prefix: pasted }).catch((e: Error) => e);
      expect(refused).toBeInstanceOf(ApiTokenInputError);
      expect(String(refused)).toMatch(/"prefix"/);
      expect(String(refused)).not.toContain(pasted.slice(4));
    }
    await expect(tokens.list({ tenantId: secret })).rejects.toThrow('"tenantId" must be a UUID');
    await expect(tokens.revoke('')).rejects.toThrow('the token must be a string');
    await expect(tokens.revokeById(secret)).rejects.toThrow('"id" must be a UUID');
    await expect(tokens.invalidateTenant('nope')).rejects.toThrow('"tenantId" must be a UUID');
    const error = await tokens.list({ appId: secret }).catch((e: Error) => e);
    expect(String(error)).not.toContain(secret.slice(4));
    expect(counter.count(/api_tokens/)).toBe(0);
    // A prefix of words with a dash is not taken for a token.
    const picky = await tokens.create({ scope: 'app', prefix: 'my-application' });
    expect(picky.token).toMatch(/^my-application-[A-Za-z0-9]{24}$/);
    await tokens.revoke(picky.token);
  });

  it('after a revoke on one instance both refuse the token, and Redis holds no entry of it', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app', appId: randomUUID(), tenantId: randomUUID() });
    expect((await whoami(a, created.token)).status).toBe(200);
    await untilCachedLocally(b, created.token, 'app', () => whoami(b, created.token).expect(200));
    await a.get(ApiTokenAuthenticator).authenticate(created.token, null);
    expect(local(a, created.token)).toBe('hit');
    expect(local(a, created.token, null)).toBe('hit');
    const received = a.get(ApiTokenInvalidationService).receivedCount;

    const result = await b.get(ApiTokenService).revoke(created.token);

    expect(result).toEqual({ revoked: [expect.objectContaining({ id: created.id, scope: 'app' })], cacheCleared: true });
    expect(local(b, created.token)).toBe('miss');
    await until('instance A drops the token from its in-process cache', () => local(a, created.token) === 'miss');
    expect(local(a, created.token, null)).toBe('miss');
    expect(a.get(ApiTokenInvalidationService).receivedCount).toBeGreaterThan(received);
    expect(await countExisting(suite.redis, `api_token:app:${created.token}`, `api_token:any:${created.token}`)).toBe(0);
    expect((await whoami(a, created.token)).status).toBe(401);
    expect((await whoami(b, created.token)).status).toBe(401);
    expect(await cached(created.token)).toBe('null');
    expect(await a.get(ApiTokenService).list({ tenantId: created.tenantId! })).toEqual([]);
  });

  it('revokes by id, and a revoke of an unknown token or id revokes nothing', async () => {
    const tokens = b.get(ApiTokenService);
    const created = await tokens.create({ scope: 'dataset' });
    expect((await whoami(a, created.token, 'dataset')).status).toBe(200);
    expect((await tokens.revokeById(created.id)).revoked.map((t) => t.id)).toEqual([created.id]);
    await until('instance A drops the token', () => local(a, created.token, 'dataset') === 'miss');
    expect((await whoami(a, created.token, 'dataset')).status).toBe(401);
    expect(await tokens.revokeById(created.id)).toEqual({ revoked: [], cacheCleared: true });
    expect(await tokens.revoke(generateApiToken('app'))).toEqual({ revoked: [], cacheCleared: true });
  });

  it('a fill that read the row before the revoke cannot bring the token back', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    const repository = a.get(ApiTokenRepository);
    const held = holdNextFind(repository);

    const pending = whoami(a, created.token).then((res) => res.status);
    expect(await held.read).toMatchObject({ id: created.id });
    await b.get(ApiTokenService).revoke(created.token);
    held.release();

    expect(await pending).toBe(401);
    expect(await cached(created.token)).toBeNull();
    expect(local(a, created.token)).not.toBe('hit');
    expect((await whoami(a, created.token)).status).toBe(401);
    expect((await whoami(b, created.token)).status).toBe(401);
    expect(await cached(created.token)).toBe('null');
  });

  it('a fill whose write reaches Redis after the revoke writes nothing, on every instance', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    const repository = a.get(ApiTokenRepository);
    const held = holdNextFind(repository);

    const pending = whoami(a, created.token).then((res) => res.status);
    await held.read;
    expect((await b.get(ApiTokenService).revoke(created.token)).cacheCleared).toBe(true);
    held.release();

    // The fill read the row before the revoke; its write reaches Redis after it and is refused there.
    expect(await pending).toBe(401);
    expect(await cached(created.token)).toBeNull();
    expect(local(a, created.token)).toBe('miss');
    expect((await whoami(b, created.token)).status).toBe(401);
    expect((await whoami(a, created.token)).status).toBe(401);
  });

  it('a Redis read that overlapped a revocation does not put the token back in the in-process cache', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(b, created.token)).status).toBe(200);
    expect(local(a, created.token)).toBe('miss');
    const redisService = a.get(ApiTokenRedisService);
    const call = redisService.call.bind(redisService) as (...args: unknown[]) => Promise<unknown>;
    const read = gate();
    const release = gate();
    jest.spyOn(redisService, 'call').mockImplementation((async (...args: unknown[]) => {
      const result = await call(...args);
      // The read is a string (GET) or the read-and-lock script's [1, entry].
      if (args[0] === 'get' && JSON.stringify(result ?? null).includes(created.id)) {
        read.open();
        await release.promise;
      }
      return result;
    }) as never);
    const invalidation = a.get(ApiTokenInvalidationService);
    const received = invalidation.receivedCount;
    // What is under test is the pub/sub eviction: a read of the revocation log landing in the window
    // (its timer, every second) would refuse the token on its own and make the answer 401.
    jest.spyOn(a.get(ApiTokenRevocationLogService), 'poll').mockResolvedValue();

    const pending = whoami(a, created.token).then((res) => res.status);
    await read.promise;
    await b.get(ApiTokenService).revoke(created.token);
    await until('instance A hears of the revocation', () => invalidation.receivedCount > received);
    release.open();

    expect(await pending).toBe(200); // answered from what it read before the revocation
    expect(local(a, created.token)).toBe('miss');
    expect((await whoami(a, created.token)).status).toBe(401);
  });

  it('a fill that overlapped an eviction does not fill the in-process cache', async () => {
    const tenantId = randomUUID();
    const tokens = a.get(ApiTokenService);
    const [cachedOne, filled] = [await tokens.create({ scope: 'app', tenantId }), await tokens.create({ scope: 'app', tenantId })];
    expect((await whoami(b, cachedOne.token)).status).toBe(200);
    const repository = a.get(ApiTokenRepository);
    const held = holdNextFind(repository);
    const invalidation = a.get(ApiTokenInvalidationService);
    const received = invalidation.receivedCount;

    const pending = whoami(a, filled.token).then((res) => res.status);
    await held.read;
    expect((await b.get(ApiTokenService).invalidateTenant(tenantId)).dropped).toBe(1);
    await until('instance A hears of the tenant invalidation', () => invalidation.receivedCount > received);
    held.release();

    expect(await pending).toBe(200);
    expect(local(a, filled.token)).toBe('miss');
  });

  it('a created token works at once even where a negative was cached for it, in its scope and in any', async () => {
    const token = generateApiToken('app');
    expect((await whoami(a, token)).status).toBe(401);
    expect((await whoami(b, token)).status).toBe(401);
    expect(await a.get(ApiTokenAuthenticator).authenticate(token, null)).toBeNull();
    expect(await cached(token)).toBe('null');
    expect(await cached(token, 'any')).toBe('null');
    expect(local(b, token)).toBe('negative');
    jest.spyOn(generator, 'generateApiToken').mockReturnValueOnce(token);

    const created = await a.get(ApiTokenService).create({ scope: 'app' });

    expect(created.token).toBe(token);
    expect((await whoami(a, token)).status).toBe(200);
    expect(await a.get(ApiTokenAuthenticator).authenticate(token, null)).toMatchObject({ id: created.id });
    await until('instance B drops its cached negative', () => local(b, token) !== 'negative');
    expect((await whoami(b, token)).status).toBe(200);
  });

  it('retries a generated token that is taken', async () => {
    const taken = (await a.get(ApiTokenService).create({ scope: 'app' })).token;
    jest.spyOn(generator, 'generateApiToken').mockReturnValueOnce(taken);
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    expect(created.token).not.toBe(taken);
    expect(await a.get(ApiTokenRepository).list({ type: 'app' })).toEqual(
      expect.arrayContaining([expect.objectContaining({ token: taken }), expect.objectContaining({ token: created.token })]),
    );
  });

  it('empties the in-process cache when the invalidation channel comes back, since messages may have been missed', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    // An earlier test's every-scope sweep may still be sending evictions: a fill that overlaps one stays out of L1.
    await untilCachedLocally(a, created.token, 'app', () => whoami(a, created.token).expect(200));
    const invalidation = a.get(ApiTokenInvalidationService);
    expect(invalidation.isListening).toBe(true);
    // The pub/sub connections on this suite's database are the two instances' (only this suite uses it).
    expect(await killSubscribers(suite.redis)).toBe(2);

    await until('instance A is subscribed again and has emptied its cache', () => invalidation.isListening && local(a, created.token) === 'miss');
    expect((await whoami(a, created.token)).status).toBe(200);
    await until('instance B is subscribed again', () => b.get(ApiTokenInvalidationService).isListening);
    await b.get(ApiTokenService).revoke(created.token);
    await until('instance A drops the revoked token', () => local(a, created.token) === 'miss');
    expect((await whoami(a, created.token)).status).toBe(401);
  });

  it('an event loop blocked longer than the echo window is not taken for a lost channel', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(a, created.token)).status).toBe(200);
    const invalidation = a.get(ApiTokenInvalidationService);
    await until('instance A is subscribed', () => invalidation.isListening);
    const checks = jest.spyOn(invalidation as unknown as { checkEcho(): Promise<void> }, 'checkEcho');
    const lost = jest.spyOn(invalidation as unknown as { lost(error?: unknown): void }, 'lost');
    await until('a ping is sent', () => checks.mock.calls.length > 0);
    await checks.mock.results[0].value;
    expect(local(a, created.token)).toBe('hit');

    // The echo of that ping arrives while the loop is blocked; the next timer runs before the socket is read.
    await new Promise(setImmediate);
    const end = performance.now() + ECHO_LOST_AFTER_MS + 500;
    while (performance.now() < end); // a synchronous stall, like a busy or starved process
    const after = checks.mock.calls.length;
    await until('two more pings went out', () => checks.mock.calls.length >= after + 2);
    await Promise.all(checks.mock.results.map((result) => result.value));

    expect(lost).not.toHaveBeenCalled();
    expect(invalidation.isListening).toBe(true);
    expect(local(a, created.token)).toBe('hit');
  });

  it('tenant invalidation empties the tenant entries and index on every instance, and the tokens keep working', async () => {
    const tenant = randomUUID();
    const other = randomUUID();
    const tokens = a.get(ApiTokenService);
    const mine = [await tokens.create({ scope: 'app', tenantId: tenant }), await tokens.create({ scope: 'dataset', tenantId: tenant })];
    const theirs = await tokens.create({ scope: 'app', tenantId: other });
    for (const app of [a, b]) {
      for (const t of [...mine, theirs]) expect((await whoami(app, t.token, t.scope)).status).toBe(200);
    }
    const keys = mine.map((t) => `api_token:${t.scope}:${t.token}`);
    expect((await suite.redis.smembers(`tenant_tokens:${tenant}`)).sort()).toEqual([...keys].sort());
    await untilCachedLocally(b, mine[1].token, 'dataset', () => whoami(b, mine[1].token, 'dataset').expect(200));

    expect(await b.get(ApiTokenService).invalidateTenant(tenant)).toEqual({ dropped: 2, cacheCleared: true });

    expect(await countExisting(suite.redis, ...keys, `tenant_tokens:${tenant}`)).toBe(0);
    expect(await countExisting(suite.redis, `api_token:app:${theirs.token}`, `tenant_tokens:${other}`)).toBe(2);
    await until('instance A drops the tenant entries', () => mine.every((t) => local(a, t.token, t.scope) === 'miss'));
    expect(local(a, theirs.token)).toBe('hit');
    counter.reset();
    for (const app of [a, b]) {
      for (const t of mine) expect((await whoami(app, t.token, t.scope)).status).toBe(200);
    }
    expect(counter.count()).toBe(2);
    expect(await suite.redis.scard(`tenant_tokens:${tenant}`)).toBe(2);
  });
});

describe('token lifecycle in hashed mode', () => {
  const suite = suiteFixture();
  let app: INestApplication;

  beforeAll(async () => {
    app = await suite.app({ apiToken: { hashTokens: true } });
  });

  it('stores only the hash, lists no part of the token, and revokes by the token', async () => {
    const tokens = app.get(ApiTokenService);
    const created = await tokens.create({ scope: 'app' });
    expect(created.token).toMatch(/^app-[A-Za-z0-9]{24}$/);
    expect(await suite.db.query('SELECT token FROM api_tokens')).toEqual([{ token: hashToken(created.token) }]);
    expect((await tokens.list())[0].maskedToken).toBe('*'.repeat(24));
    const whoami = () => request(app.getHttpServer()).get('/app/whoami').set('Authorization', `Bearer ${created.token}`);
    expect((await whoami()).status).toBe(200);
    expect(await suite.redis.exists(`api_token:app:${hashToken(created.token)}`)).toBe(1);

    expect((await tokens.revoke(created.token)).revoked).toHaveLength(1);
    expect(await suite.redis.exists(`api_token:app:${hashToken(created.token)}`)).toBe(0);
    expect((await whoami()).status).toBe(401);
    expect(await suite.db.query('SELECT token FROM api_tokens')).toEqual([]);
  });
});
