import { ApiTokenService } from '../libs/api-token/src';
import { ApiTokenCacheService } from '../libs/api-token/src/cache/token-cache.service';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { INestApplication } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { holdNextFind } from './support/gate';
import { QueryCounter } from './support/query-counter';
import { whoami } from './support/requests';
import { suiteFixture } from './support/suite-fixture';
import { until } from './support/until';

const ms = (naiveUtc: string | null): number => Date.parse(`${naiveUtc}Z`);
/** Dify's seven fields, in its order: what Dify's `ApiTokenCache.set` writes for a row it read itself. */
const DIFY_FIELDS = ['id', 'app_id', 'tenant_id', 'type', 'token', 'last_used_at', 'created_at'];

/**
 * The library beside a Dify installation that shares its Redis: Dify's fill writes an entry of its
 * own whenever the key is absent, and a token holder decides when that happens (a call to any Dify
 * endpoint). Such an entry cannot say "no expiry, no limit", so it must never turn a policy off.
 */
describe('sharing the cache with Dify', () => {
  const suite = suiteFixture();
  const counter = new QueryCounter();
  let a: INestApplication;
  let b: INestApplication;

  /** Replaces the token's entry with the one Dify writes for the same row (its seven fields, 600 s). */
  const fillLikeDify = async (token: string, scope = 'app') => {
    const key = `api_token:${scope}:${token}`;
    const row = (await a.get(ApiTokenRepository).findByToken(token, scope))!;
    const entry = {
      id: row.id,
      app_id: row.appId,
      tenant_id: row.tenantId,
      type: row.type,
      token: row.token,
      last_used_at: row.lastUsedAt,
      created_at: row.createdAt,
    };
    expect(Object.keys(entry)).toEqual(DIFY_FIELDS);
    await suite.redis.set(key, JSON.stringify(entry), 'EX', 600);
    for (const app of [a, b]) app.get(ApiTokenCacheService).clearLocal();
  };
  const stored = async (token: string, scope = 'app') => JSON.parse((await suite.redis.get(`api_token:${scope}:${token}`)) ?? 'undefined') as unknown;

  beforeAll(async () => {
    a = await suite.app({ counter, apiToken: { flushCron: false } });
    b = await suite.app({ counter, apiToken: { flushCron: false } });
  });

  it('an expired token whose entry Dify wrote is refused: the entry is read again from PostgreSQL once', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app', expiresInSeconds: 1 });
    await whoami(a, created.token).expect(200);
    await fillLikeDify(created.token);
    await until('the token expires', () => Date.now() >= ms(created.expiresAt));
    counter.reset();

    await whoami(b, created.token).expect(401);

    expect(counter.count()).toBe(1);
    // Rewritten in the library's form: an expired row is "no such token".
    expect(await suite.redis.get(`api_token:app:${created.token}`)).toBe('null');
    // A refuses it too; whether from its own L1 or after one more read depends on whether the expiry
    // timer's sweep (which deletes the row and so the entry) ran first: not what this test is about.
    await whoami(a, created.token).expect(401);
  });

  it("a rate-limited token whose entry Dify wrote keeps its limit, and the entry is rewritten in the library's form", async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app', tenantId: randomUUID(), rateLimit: { limit: 2, windowSeconds: 3600 } });
    await fillLikeDify(created.token);
    counter.reset();

    const answers = [];
    for (let i = 0; i < 4; i++) answers.push(await whoami(b, created.token));

    expect(answers.map((answer) => answer.status)).toEqual([200, 200, 429, 429]);
    expect(answers[0].headers['ratelimit-policy']).toBe('"token";q=2;w=3600');
    expect(counter.count()).toBe(1);
    expect(await stored(created.token)).toMatchObject({ id: created.id, expires_at: null, rate_limit: { limit: 2, window_seconds: 3600 } });
  });

  it('a rotated-out token whose entry Dify wrote is refused once its grace is over', async () => {
    const old = await a.get(ApiTokenService).create({ scope: 'app' });
    const { previous, successor } = (await a.get(ApiTokenService).rotate(old.token, { graceSeconds: 1 }))!;
    await whoami(b, old.token).expect(200);
    await fillLikeDify(old.token);
    await until('the grace ends', () => Date.now() >= ms(previous.expiresAt));

    await whoami(b, old.token).expect(401);
    await whoami(a, old.token).expect(401);
    await whoami(b, successor.token).expect(200);
  });

  it("a token that has no policy costs one lookup when Dify wrote its entry, then none: the library's entry says so", async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    await fillLikeDify(created.token);
    counter.reset();
    for (let i = 0; i < 3; i++) {
      await whoami(b, created.token).expect(200);
      b.get(ApiTokenCacheService).clearLocal();
    }
    expect(counter.count()).toBe(1);
    expect(await stored(created.token)).toMatchObject({ expires_at: null, rate_limit: null });
  });

  it("no entry outlives its token's expiry, so Dify (which ignores expires_at) stops finding it then", async () => {
    const soon = await a.get(ApiTokenService).create({ scope: 'app', expiresInSeconds: 30 });
    const never = await a.get(ApiTokenService).create({ scope: 'app' });
    await whoami(a, soon.token).expect(200);
    await whoami(a, never.token).expect(200);
    const ttl = await suite.redis.ttl(`api_token:app:${soon.token}`);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(30);
    expect(await suite.redis.ttl(`api_token:app:${never.token}`)).toBeGreaterThan(590);
  });

  it('a fill whose database read outlived the generation key writes nothing: its deadline counts from before the read', async () => {
    // A token older than the generation key's hour: no generation key, as after any hour without change.
    const token = generateApiToken('app');
    await suite.db.query("INSERT INTO api_tokens (type, token, created_at) VALUES ('app', $1, now() AT TIME ZONE 'UTC')", [token]);
    // Its own poll off: this instance learns of the revocation below only from Redis.
    const lagging = await suite.app({ apiToken: { flushCron: false, revocationPollIntervalMs: 0 } });
    const hold = holdNextFind(lagging.get(ApiTokenRepository));
    const pending = whoami(lagging, token).then((answer) => answer.status);
    await hold.read;

    await b.get(ApiTokenService).revoke(token);
    // An hour passes during the read: the revocation's generation key expires, and the fill's clock moves on.
    await suite.redis.del(`api_token_generation:{api_token:app:${token}}`);
    const now = performance.now();
    const clock = jest.spyOn(performance, 'now').mockImplementation(() => now + 3_601_000);
    try {
      hold.release();
      await pending;
    } finally {
      clock.mockRestore();
      jest.restoreAllMocks();
    }

    expect(await suite.redis.get(`api_token:app:${token}`)).toBeNull();
  });

  it('an expired row is deleted at its expiry, not at the next flush: Dify refuses the token then too', async () => {
    // Neither instance runs a flush here (flushCron: false): only the expiry timer can delete the row.
    const created = await a.get(ApiTokenService).create({ scope: 'app', expiresInSeconds: 2 });
    await whoami(b, created.token).expect(200);
    const expiresAtMs = ms(created.expiresAt);

    await until('the row is deleted', async () => (await suite.db.query('SELECT 1 FROM api_tokens WHERE id = $1', [created.id])).length === 0, 10_000);
    console.log(`expired row deleted ${Date.now() - expiresAtMs} ms after its expiry`);

    // What Dify does: a Redis miss, then `SELECT … WHERE token = … AND type = …`: nothing either way.
    expect(await suite.redis.get(`api_token:app:${created.token}`)).toBeNull();
    await whoami(a, created.token).expect(401);
  });
});
