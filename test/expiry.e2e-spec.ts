import { ApiTokenMetrics, ApiTokenService, ApiTokenUsageFlushService } from '../libs/api-token/src';
import { ApiTokenCacheService } from '../libs/api-token/src/cache/token-cache.service';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { hashToken } from '../libs/api-token/src/tokens/token.hash';
import type { INestApplication } from '@nestjs/common';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import request from 'supertest';
import { QueryCounter } from './support/query-counter';
import { countExisting } from './support/redis';
import { until } from './support/until';
import { localCacheState } from './support/local-cache';
import { suiteFixture } from './support/suite-fixture';

const INVALID = 'Access token is invalid';
const DIFY_READER = join(__dirname, 'support', 'dify-reader.py');

/** One request: its answer, and when it was sent and answered (this process's clock, the instances' clock too). */
interface Timed {
  status: number;
  message: unknown;
  sentAt: number;
  doneAt: number;
}

/** What Dify's reader makes of a cached entry (see support/dify-reader.py). */
type DifyRead =
  | { result: 'token'; token: Record<string, string | null> }
  | { result: 'negative' }
  | { result: 'invalid'; error: string };

const readLikeDify = (raw: string): DifyRead => JSON.parse(execFileSync('python3', [DIFY_READER], { input: raw }).toString('utf8')) as DifyRead;
const ms = (naiveUtc: string | null): number => Date.parse(`${naiveUtc}Z`);

describe.each(['express', 'fastify'] as const)('token expiry and rotation (%s)', (adapter) => {
  const suite = suiteFixture();
  let a: INestApplication;
  let b: INestApplication;
  const counter = new QueryCounter();

  const call = async (app: INestApplication, token: string, scope = 'app'): Promise<Timed> => {
    const sentAt = Date.now();
    const res = await request(app.getHttpServer()).get(`/${scope}/whoami`).set('Authorization', `Bearer ${token}`);
    return { status: res.status, message: (res.body as { message?: unknown }).message, sentAt, doneAt: Date.now() };
  };
  const status = async (app: INestApplication, token: string, scope = 'app') => (await call(app, token, scope)).status;
  const local = (app: INestApplication, token: string, scope: string | null = 'app') => localCacheState(app, token, scope);
  const expiredCount = (app: INestApplication) => app.get(ApiTokenMetrics).snapshot().scopes.app?.lookups.expired ?? 0;
  /**
   * The expiry oracle: an answer completed before the expiry must be 200; a request sent at or after it
   * must be refused exactly like an unknown token. Both instances share this process's clock.
   */
  const expectValidity = (answer: Timed, expiresAtMs: number) => {
    if (answer.doneAt < expiresAtMs) expect(answer.status).toBe(200);
    if (answer.sentAt >= expiresAtMs) expect({ status: answer.status, message: answer.message }).toEqual({ status: 401, message: INVALID });
  };

  beforeAll(async () => {
    // No scheduled flush: the tests run the job themselves. No revocation-log poll either, which would
    // also set the expiry timer (test/dify-shared.e2e-spec.ts): expired rows stay until the job runs.
    const apiToken = { flushCron: false as const, revocationPollIntervalMs: 0 };
    a = await suite.app({ counter, adapter, apiToken });
    b = await suite.app({ counter, adapter, apiToken });
  });

  it('creates tokens with an expiry and lists it; refuses a bad expiry naming the field, before any I/O', async () => {
    const tokens = a.get(ApiTokenService);
    const appId = randomUUID();
    const before = Date.now();
    const inAnHour = await tokens.create({ scope: 'app', appId, expiresInSeconds: 3600 });
    const at = new Date('2099-01-31T12:00:00.250Z');
    const fixed = await tokens.create({ scope: 'dataset', appId, expiresAt: at });
    const never = await tokens.create({ scope: 'app', appId });
    expect(ms(inAnHour.expiresAt)).toBeGreaterThanOrEqual(before + 3_600_000);
    expect(ms(inAnHour.expiresAt)).toBeLessThanOrEqual(Date.now() + 3_600_000);
    expect(fixed.expiresAt).toBe('2099-01-31T12:00:00.250000');
    expect(never.expiresAt).toBeNull();
    const listed = await b.get(ApiTokenService).list({ appId });
    expect(Object.fromEntries(listed.map((t) => [t.id, t.expiresAt]))).toEqual({
      [inAnHour.id]: inAnHour.expiresAt,
      [fixed.id]: '2099-01-31T12:00:00.250000',
      [never.id]: null,
    });

    const secret = generateApiToken('app');
    counter.reset();
    await expect(tokens.create({ scope: 'app', expiresAt: at, expiresInSeconds: 60 })).rejects.toThrow('give "expiresAt" or "expiresInSeconds", not both');
    await expect(tokens.create({ scope: 'app', expiresInSeconds: 0 })).rejects.toThrow('"expiresInSeconds" must be a whole number of seconds');
    await expect(tokens.create({ scope: 'app', expiresInSeconds: 1.5 })).rejects.toThrow('"expiresInSeconds"');
    await expect(tokens.create({ scope: 'app', expiresInSeconds: '60' as unknown as number })).rejects.toThrow('"expiresInSeconds"');
    await expect(tokens.create({ scope: 'app', expiresAt: new Date(Date.now() - 1000) })).rejects.toThrow('"expiresAt" must be a valid Date in the future');
    await expect(tokens.create({ scope: 'app', expiresAt: new Date('nope') })).rejects.toThrow('"expiresAt"');
    await expect(tokens.create({ scope: 'app', expiresAt: secret as unknown as Date })).rejects.not.toThrow(secret.slice(4));
    await expect(tokens.rotate(secret, { graceSeconds: -1 })).rejects.toThrow('"graceSeconds" must be a whole number of seconds from 0');
    await expect(tokens.rotate(secret, { graceSeconds: Infinity })).rejects.toThrow('"graceSeconds"');
    expect(counter.count(/api_token/)).toBe(0);
  });

  it('refuses an expiring token on both instances from the moment it expires, with no database query then', async () => {
    const epochB = b.get(ApiTokenCacheService).localEpoch;
    const created = await a.get(ApiTokenService).create({ scope: 'app', expiresInSeconds: 2 });
    const expiresAtMs = ms(created.expiresAt);
    // The creation's eviction reaches B by pub/sub; arriving during B's fill below, it would keep the
    // record out of B's L1 (as it should). On a loaded Cluster it came that late once: wait for it.
    await until('B hears of the creation', () => b.get(ApiTokenCacheService).localEpoch !== epochB);
    for (const app of [a, b]) expect(await status(app, created.token)).toBe(200);
    expect([local(a, created.token), local(b, created.token)]).toEqual(['hit', 'hit']);
    const expiredBefore = [expiredCount(a), expiredCount(b)];
    counter.reset();

    const answers: Timed[][] = [[], []];
    await until('both instances refuse the token', async () => {
      // No pause near the expiry: each instance is asked again as soon as it answered.
      if (Date.now() < expiresAtMs - 150) await new Promise((resolve) => setTimeout(resolve, 20));
      const [fromA, fromB] = await Promise.all([call(a, created.token), call(b, created.token)]);
      answers[0].push(fromA);
      answers[1].push(fromB);
      // Until each has refused a request *sent* after the expiry: one sent just before it may be
      // served just after it and refused too, which would end the loop before the case checked below.
      return [fromA, fromB].every((answer) => answer.status === 401 && answer.sentAt >= expiresAtMs);
    });

    // Refused from the first request sent at or after the expiry, however fast the machine polls
    // (a bound on wall time, such as 100 ms, would be a speed assertion; this is stronger).
    for (const seen of answers) {
      for (const answer of seen) expectValidity(answer, expiresAtMs);
      expect(seen.find((answer) => answer.sentAt >= expiresAtMs)).toMatchObject({ status: 401 });
    }
    expect(counter.count()).toBe(0);
    // Every refusal was an expired record in the in-process cache, counted as such.
    const refusals = answers.map((seen) => seen.filter((answer) => answer.status === 401).length);
    expect([expiredCount(a) - expiredBefore[0], expiredCount(b) - expiredBefore[1]]).toEqual(refusals);
  });

  it('refuses an expired record read from Redis with no database query, and caches no valid record of an expired row', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app', tenantId: randomUUID(), expiresInSeconds: 1 });
    expect(await status(a, created.token)).toBe(200);
    const entry = (await suite.redis.get(`api_token:app:${created.token}`))!;
    expect(JSON.parse(entry)).toMatchObject({ expires_at: created.expiresAt });
    await until('the token expires', () => Date.now() >= ms(created.expiresAt));
    // The library's own entry lives no longer than the token (its TTL is capped at the expiry); an entry
    // that outlives it (written by 0.2, or by an instance whose clock is behind) is what this is about.
    await suite.redis.set(`api_token:app:${created.token}`, entry, 'EX', 600);
    b.get(ApiTokenCacheService).clearLocal();
    const before = expiredCount(b);
    counter.reset();

    expect(await call(b, created.token)).toMatchObject({ status: 401, message: INVALID });
    expect(counter.count()).toBe(0);
    expect(expiredCount(b)).toBe(before + 1);

    // The row, read from the database, is cached as "no such token": Dify ignores expires_at.
    await suite.redis.del(`api_token:app:${created.token}`);
    b.get(ApiTokenCacheService).clearLocal();
    expect(await status(b, created.token)).toBe(401);
    expect(counter.count()).toBe(1);
    expect(await suite.redis.get(`api_token:app:${created.token}`)).toBe('null');
    expect(local(b, created.token)).toBe('negative');
  });

  it('rotation with a grace period: both tokens work on both instances, then only the new one', async () => {
    const appId = randomUUID();
    const tenantId = randomUUID();
    const old = await a.get(ApiTokenService).create({ scope: 'dataset', appId, tenantId });
    await a.get(ApiTokenRepository).setPolicy(old.id, { rateLimit: { limit: 1_000_000, windowSeconds: 60 } }); // copied by the rotation; never reached by the polling below
    for (const app of [a, b]) expect(await status(app, old.token, 'dataset')).toBe(200);
    expect(local(a, old.token, 'dataset')).toBe('hit');

    const rotation = (await b.get(ApiTokenService).rotate(old.token, { graceSeconds: 2 }))!;

    const { successor, previous } = rotation;
    expect(rotation.cacheCleared).toBe(true);
    expect(successor.token).toMatch(/^dataset-[A-Za-z0-9]{24}$/);
    expect(successor).toMatchObject({ scope: 'dataset', appId, tenantId, expiresAt: null });
    expect(await a.get(ApiTokenRepository).findByToken(successor.token, 'dataset')).toMatchObject({
      rateLimit: { limit: 1_000_000, windowSeconds: 60 },
      expiresAt: null,
    });
    const expiresAtMs = ms(previous.expiresAt);
    expect(previous.id).toBe(old.id);
    expect(expiresAtMs).toBeGreaterThan(Date.now());
    expect(expiresAtMs).toBeLessThanOrEqual(Date.now() + 2000);
    // The old token's cached records, which lack the expiry, are gone on every instance.
    await until("instance A drops the old token's entry", () => local(a, old.token, 'dataset') === 'miss');
    expect(await countExisting(suite.redis, `api_token:dataset:${old.token}`)).toBe(0);

    for (const app of [a, b]) {
      expectValidity(await call(app, old.token, 'dataset'), expiresAtMs);
      expect(await status(app, successor.token, 'dataset')).toBe(200);
    }
    counter.reset();
    await until('both instances refuse the old token', async () => {
      const answers = await Promise.all([call(a, old.token, 'dataset'), call(b, old.token, 'dataset')]);
      for (const answer of answers) expectValidity(answer, expiresAtMs);
      return answers.every((answer) => answer.status === 401);
    });
    expect(counter.count()).toBe(0);
    for (const app of [a, b]) expect(await status(app, successor.token, 'dataset')).toBe(200);
    const listed = await a.get(ApiTokenService).list({ appId });
    expect(listed.map((t) => t.id).sort()).toEqual([old.id, successor.id].sort());
  });

  it("a rotation's grace never extends the old token past the expiry it already had", async () => {
    const tokens = a.get(ApiTokenService);
    const old = await tokens.create({ scope: 'app', expiresInSeconds: 60 });
    const ownExpiry = ms((await a.get(ApiTokenRepository).findByToken(old.token, 'app'))!.expiresAt!);
    const rotation = (await tokens.rotate(old.token, { graceSeconds: 3600 }))!;
    expect(ms(rotation.previous.expiresAt)).toBe(ownExpiry);
    expect(ms((await a.get(ApiTokenRepository).findByToken(old.token, 'app'))!.expiresAt!)).toBe(ownExpiry);
    // A grace shorter than the time left does shorten it.
    const other = await tokens.create({ scope: 'app', expiresInSeconds: 3600 });
    const shortened = (await tokens.rotate(other.token, { graceSeconds: 60 }))!;
    expect(ms(shortened.previous.expiresAt)).toBeLessThanOrEqual(Date.now() + 60_000);
  });

  it('rotation with 0 grace revokes the old token at once on every instance; an unknown or expired token is not rotated', async () => {
    const tokens = a.get(ApiTokenService);
    const old = await tokens.create({ scope: 'app', expiresInSeconds: 3600 });
    for (const app of [a, b]) expect(await status(app, old.token)).toBe(200);
    const revoked = a.get(ApiTokenMetrics).snapshot().invalidation.revocations.revoked;

    const rotation = (await a.get(ApiTokenService).rotate(old.token, { graceSeconds: 0 }))!;

    expect(rotation.previous.id).toBe(old.id);
    // The successor keeps the old token's lifetime (an hour), counted from its own creation.
    expect(ms(rotation.successor.expiresAt) - ms(rotation.successor.createdAt)).toBeGreaterThan(3_598_000);
    expect(ms(rotation.successor.expiresAt) - ms(rotation.successor.createdAt)).toBeLessThan(3_602_000);
    expect(local(a, old.token)).toBe('miss');
    await until('instance B drops the old token', () => local(b, old.token) !== 'hit');
    for (const app of [a, b]) {
      expect(await call(app, old.token)).toMatchObject({ status: 401, message: INVALID });
      expect(await status(app, rotation.successor.token)).toBe(200);
    }
    expect(await suite.db.query('SELECT id FROM api_tokens WHERE id = $1', [old.id])).toEqual([]);
    expect(a.get(ApiTokenMetrics).snapshot().invalidation.revocations.revoked).toBe(revoked + 1);

    expect(await tokens.rotate(old.token, { graceSeconds: 60 })).toBeNull();
    expect(await tokens.rotate(generateApiToken('app'))).toBeNull();
    const expiring = await tokens.create({ scope: 'app', expiresInSeconds: 1 });
    await until('the token expires', () => Date.now() >= ms(expiring.expiresAt));
    expect(await tokens.rotate(expiring.token, { graceSeconds: 60 })).toBeNull();
  });

  it('a rotation whose old token cannot be given its end fails whole: its successor is revoked, the old token kept', async () => {
    const appId = randomUUID();
    const tokens = a.get(ApiTokenService);
    const repository = a.get(ApiTokenRepository);
    for (const graceSeconds of [60, 0]) {
      const old = await tokens.create({ scope: 'app', appId });
      const failure = new Error('the database stopped answering');
      // With a grace the old token gets an expiry; with none it is revoked: the step that fails here.
      const step = graceSeconds ? jest.spyOn(repository, 'setPolicy') : jest.spyOn(repository, 'revoke');
      step.mockRejectedValueOnce(failure);
      try {
        await expect(tokens.rotate(old.token, { graceSeconds })).rejects.toBe(failure);
      } finally {
        step.mockRestore();
      }
      expect((await tokens.list({ appId })).map((t) => t.id)).toEqual([old.id]);
      expect((await tokens.list({ appId }))[0].expiresAt).toBeNull();
      expect(await status(a, old.token)).toBe(200);
      await tokens.revoke(old.token);
    }
  });

  it('the scheduled job deletes expired rows and their cache entries everywhere; Dify then refuses them too', async () => {
    const tenantId = randomUUID();
    const tokens = a.get(ApiTokenService);
    const expiring = await tokens.create({ scope: 'app', tenantId, expiresInSeconds: 1 });
    const lasting = await tokens.create({ scope: 'app', tenantId, expiresInSeconds: 3600 });
    for (const app of [a, b]) {
      for (const t of [expiring, lasting]) expect(await status(app, t.token)).toBe(200);
    }
    const keys = [`api_token:app:${expiring.token}`];
    expect(await countExisting(suite.redis, ...keys)).toBe(1);
    expect(await suite.redis.smembers(`tenant_tokens:${tenantId}`)).toEqual(expect.arrayContaining(keys));
    await until('the token expires by PostgreSQL\'s clock', async () => (await suite.db.query("SELECT now() AT TIME ZONE 'UTC' >= $1::timestamp AS due", [expiring.expiresAt]))[0].due === true);
    const removedBefore = a.get(ApiTokenMetrics).snapshot().flush.expiredRemoved;

    const stats = (await b.get(ApiTokenUsageFlushService).flushNow())!;

    expect(stats.expired).toBeGreaterThanOrEqual(1);
    expect(await suite.db.query('SELECT id FROM api_tokens WHERE id = $1', [expiring.id])).toEqual([]);
    expect(await suite.db.query('SELECT token_id FROM api_token_policies WHERE token_id = $1', [expiring.id])).toEqual([]);
    expect(await suite.db.query('SELECT id FROM api_tokens WHERE id = $1', [lasting.id])).toHaveLength(1);
    expect(await countExisting(suite.redis, ...keys)).toBe(0);
    expect(local(b, expiring.token)).toBe('miss');
    await until('instance A drops the expired token', () => local(a, expiring.token) === 'miss');
    expect(b.get(ApiTokenMetrics).snapshot().flush.expiredRemoved).toBe(stats.expired);
    expect(a.get(ApiTokenMetrics).snapshot().flush.expiredRemoved).toBe(removedBefore);
    // What Dify does: a Redis miss, then `SELECT … WHERE token = … AND type = …`: nothing either way.
    expect(await suite.redis.get(`api_token:app:${expiring.token}`)).toBeNull();
    expect(await suite.db.query('SELECT id FROM api_tokens WHERE token = $1 AND type = $2', [expiring.token, 'app'])).toEqual([]);
    for (const app of [a, b]) {
      expect(await call(app, expiring.token)).toMatchObject({ status: 401, message: INVALID });
      expect(await status(app, lasting.token)).toBe(200);
    }
    expect((await b.get(ApiTokenUsageFlushService).flushNow())!.expired).toBe(0);
  });

  it("Dify's reader accepts the library's extended cache entries, which carry the policy fields even when null", async () => {
    const tenantId = randomUUID();
    const tokens = a.get(ApiTokenService);
    const plain = await tokens.create({ scope: 'app', tenantId });
    const extended = await tokens.create({ scope: 'app', tenantId, expiresInSeconds: 3600 });
    await a.get(ApiTokenRepository).setPolicy(extended.id, { rateLimit: { limit: 5, windowSeconds: 1 } });
    for (const t of [plain, extended]) expect(await status(a, t.token)).toBe(200);

    for (const t of [plain, extended]) {
      const raw = (await suite.redis.get(`api_token:app:${t.token}`))!;
      expect(readLikeDify(raw)).toEqual({
        result: 'token',
        token: {
          id: t.id,
          app_id: null,
          tenant_id: tenantId,
          type: 'app',
          token: t.token,
          last_used_at: null,
          created_at: t.createdAt,
        },
      });
    }
    const extendedRaw = JSON.parse((await suite.redis.get(`api_token:app:${extended.token}`))!) as Record<string, unknown>;
    expect(Object.keys(extendedRaw).slice(7)).toEqual(['expires_at', 'rate_limit']);
    expect(JSON.parse((await suite.redis.get(`api_token:app:${plain.token}`))!)).toMatchObject({ expires_at: null, rate_limit: null });

    // The reader is as strict as Dify's model: it can fail.
    const { created_at: _dropped, ...missingField } = extendedRaw;
    expect(readLikeDify(JSON.stringify(missingField))).toMatchObject({ result: 'invalid', error: 'created_at: field required' });
    expect(readLikeDify(JSON.stringify({ ...extendedRaw, id: 5 }))).toMatchObject({ result: 'invalid' });
    expect(readLikeDify('null')).toEqual({ result: 'negative' });
  });
});

describe('token expiry and rotation in hashed mode', () => {
  const suite = suiteFixture();
  let app: INestApplication;

  beforeAll(async () => {
    app = await suite.app({ apiToken: { hashTokens: true, flushCron: false, revocationPollIntervalMs: 0 } });
  });

  it('expires, rotates and sweeps by the hash, the same as in plain mode', async () => {
    const tokens = app.get(ApiTokenService);
    const whoami = (token: string) => request(app.getHttpServer()).get('/app/whoami').set('Authorization', `Bearer ${token}`);
    const old = await tokens.create({ scope: 'app', expiresInSeconds: 3600 });
    expect((await whoami(old.token)).status).toBe(200);

    const { successor } = (await tokens.rotate(old.token, { graceSeconds: 1 }))!;

    expect(successor.token).toMatch(/^app-[A-Za-z0-9]{24}$/);
    expect(await suite.db.query('SELECT token FROM api_tokens WHERE id = $1', [successor.id])).toEqual([{ token: hashToken(successor.token) }]);
    expect((await whoami(old.token)).status).toBe(200);
    const expiresAtMs = ms((await tokens.list()).find((t) => t.id === old.id)!.expiresAt);
    await until('the old token expires', () => Date.now() >= expiresAtMs);
    expect((await whoami(old.token)).status).toBe(401);
    expect((await whoami(successor.token)).status).toBe(200);
    await until("the old token expires by PostgreSQL's clock", async () => (await suite.db.query("SELECT now() AT TIME ZONE 'UTC' >= to_timestamp($1 / 1000.0) AT TIME ZONE 'UTC' AS due", [expiresAtMs]))[0].due === true);
    expect((await app.get(ApiTokenUsageFlushService).flushNow())!.expired).toBe(1);
    expect((await tokens.list()).map((t) => t.id)).toEqual([successor.id]);
    expect(await suite.redis.exists(`api_token:app:${hashToken(old.token)}`)).toBe(0);
  });
});
