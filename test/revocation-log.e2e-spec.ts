import { ApiTokenAuthenticator, ApiTokenMetrics, ApiTokenService } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { ApiTokenRevokedTokens } from '../libs/api-token/src/cache/revoked-tokens';
import { ApiTokenRevocationLogService } from '../libs/api-token/src/tokens/revocation-log.service';
import type { INestApplication } from '@nestjs/common';
import Redis from 'ioredis';
import { revokeInOpenTransaction } from './support/database';
import { PrivateRedisServer } from './support/redis-server';
import { createTestApp } from './support/test-app';
import { until } from './support/until';
import { localCacheState, untilCachedLocally } from './support/local-cache';
import { whoami } from './support/requests';
import { holdNextFind } from './support/gate';
import { suiteFixture } from './support/suite-fixture';

const POLL_MS = 200;
/** Long enough that only the log (never a TTL) can explain a refusal within a test. */
// Deleted rows' tokens take the usual path here (where stale entries are found); the filter has its own suite.
const apiToken = { revocationPollIntervalMs: POLL_MS, localCacheTtlMs: 60_000, membershipFilterRebuildMs: 0 };

/**
 * The revocation log is the guarantee behind pub/sub. Instance A uses the suite's Redis; instance B
 * uses a Redis of its own, so it hears none of A's messages and its Redis keeps every entry A
 * deletes: B stands for an instance whose Redis lost the revocation (a failover, a lost write).
 */
describe('revocation log', () => {
  const suite = suiteFixture();
  let privateRedis: PrivateRedisServer;
  let a: INestApplication;
  let b: INestApplication;
  let bRedis: Redis;
  const listed = (app: INestApplication, token: string) => app.get(ApiTokenRevokedTokens).has(token);

  beforeAll(async () => {
    privateRedis = await PrivateRedisServer.start();
    suite.cleanup(() => privateRedis.kill());
    bRedis = new Redis(privateRedis.url(), { maxRetriesPerRequest: 1 });
    suite.cleanup(() => bRedis.disconnect());
    a = await suite.app({ apiToken });
    b = await suite.app({ redisUrl: privateRedis.url(), apiToken });
  });

  afterEach(() => jest.restoreAllMocks());

  it('records the revocation with the row delete: the stored token, its scopes, the time', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    await a.get(ApiTokenService).revoke(created.token);
    const rows = await suite.db.query(
      'SELECT token, scopes, revoked_at > (now() AT TIME ZONE \'UTC\') - interval \'1 minute\' AS recent FROM api_token_revocations WHERE token = $1',
      [created.token],
    );
    expect(rows).toEqual([{ token: created.token, scopes: ['app'], recent: true }]);
    expect(await suite.db.query('SELECT 1 FROM api_tokens WHERE token = $1', [created.token])).toEqual([]);
    // Nothing is logged when nothing was deleted.
    await a.get(ApiTokenService).revoke(created.token);
    expect(await suite.db.query('SELECT count(*)::int AS n FROM api_token_revocations WHERE token = $1', [created.token])).toEqual([{ n: 1 }]);
  });

  it('an instance that missed the message and whose Redis kept the entry refuses the token within a poll', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    await untilCachedLocally(b, created.token, 'app', () => whoami(b, created.token).expect(200));

    await a.get(ApiTokenService).revoke(created.token);
    expect((await whoami(a, created.token)).status).toBe(401);
    await until('B reads the revocation from the log', () => listed(b, created.token), 5_000);
    expect(localCacheState(b, created.token)).toBe('miss');
    expect(await bRedis.exists(`api_token:app:${created.token}`)).toBe(0);
    expect((await whoami(b, created.token)).status).toBe(401);
  });

  // Issue 29: the scope-less lookup (`authenticate(token, null)`) has entries of its own, under `any`.
  it("an instance that missed the message drops the token's scope-less entries too: authenticate(token, null) refuses", async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    const authenticator = b.get(ApiTokenAuthenticator);
    await untilCachedLocally(b, created.token, null, () => authenticator.authenticate(created.token, null));
    expect(await bRedis.exists(`api_token:any:${created.token}`)).toBe(1);

    await a.get(ApiTokenService).revoke(created.token);
    await until('B reads the revocation from the log', () => listed(b, created.token), 5_000);
    expect(localCacheState(b, created.token, null)).toBe('miss');
    expect(await bRedis.exists(`api_token:any:${created.token}`)).toBe(0);
    expect(await authenticator.authenticate(created.token, null)).toBeNull();
  });

  it('a stale entry written back into Redis after the revocation is refused, and deleted again', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(a, created.token)).status).toBe(200);
    const key = `api_token:app:${created.token}`;
    const stale = await suite.redis.get(key);
    expect(stale).not.toBeNull();

    await a.get(ApiTokenService).revoke(created.token);
    await until('B reads the revocation from the log', () => listed(b, created.token), 5_000);
    await suite.redis.set(key, stale!, 'EX', 600);
    await bRedis.set(key, stale!, 'EX', 600);

    expect((await whoami(a, created.token)).status).toBe(401);
    expect((await whoami(b, created.token)).status).toBe(401);
    await until('the stale entries are deleted again', async () => (await suite.redis.exists(key)) + (await bRedis.exists(key)) === 0);
    expect((await whoami(b, created.token)).status).toBe(401);
  });

  it('a fill that read the row before the revocation committed is refused once the log lists the token', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    const repository = b.get(ApiTokenRepository);
    const held = holdNextFind(repository);
    const answer = whoami(b, created.token).then((res) => res.status);
    expect(await held.read).not.toBeNull();

    // B's Redis never sees A's generation change: only the log can stop this fill.
    await a.get(ApiTokenService).revoke(created.token);
    await until('B reads the revocation from the log', () => listed(b, created.token), 5_000);
    held.release();

    expect(await answer).toBe(401);
    expect(await bRedis.get(`api_token:app:${created.token}`)).toBe('null');
  });

  it('a revocation whose transaction commits after a later one was read is still read (a gap in the ids)', async () => {
    const late = await a.get(ApiTokenService).create({ scope: 'app' });
    const early = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(b, late.token)).status).toBe(200);
    const log = b.get(ApiTokenRevocationLogService);

    const held = await revokeInOpenTransaction(suite.db.url, late.token);
    try {
      await a.get(ApiTokenService).revoke(early.token);
      await until('B reads the later revocation', () => listed(b, early.token), 5_000);
      const reads = log.readCount;
      await until('B polls again', () => log.readCount > reads + 1, 5_000);
      expect(listed(b, late.token)).toBe(false);
      await held.commit();
    } finally {
      await held.end();
    }
    await until('B reads the revocation that committed late', () => listed(b, late.token), 5_000);
    expect((await whoami(b, late.token)).status).toBe(401);
  });

  it('an instance started after a revocation refuses the token from its first request', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(a, created.token)).status).toBe(200);
    const stale = await suite.redis.get(`api_token:app:${created.token}`);
    await a.get(ApiTokenService).revoke(created.token);
    const log = a.get(ApiTokenRevocationLogService);
    const reads = log.readCount;
    await until('A has read the revocation (and deleted its entries again)', () => log.readCount > reads + 1, 5_000);
    await suite.redis.set(`api_token:app:${created.token}`, stale!, 'EX', 600);
    const c = await createTestApp({ databaseUrl: suite.db.url, apiToken });
    try {
      expect(listed(c, created.token)).toBe(true);
      expect(await suite.redis.exists(`api_token:app:${created.token}`)).toBe(1);
      expect((await whoami(c, created.token)).status).toBe(401);
    } finally {
      await c.close();
    }
  });

  it('prunes entries older than cacheTtlSeconds plus the margin', async () => {
    const repository = a.get(ApiTokenRepository);
    await suite.db.query(`INSERT INTO api_token_revocations (token, scopes, revoked_at) VALUES
      ('app-old', '{app}', (now() AT TIME ZONE 'UTC') - interval '700 seconds'),
      ('app-new', '{app}', (now() AT TIME ZONE 'UTC') - interval '600 seconds')`);
    expect(await repository.pruneRevocations(660_000)).toBe(1);
    expect(await suite.db.query("SELECT token FROM api_token_revocations WHERE token LIKE 'app-old' OR token LIKE 'app-new'")).toEqual([{ token: 'app-new' }]);
  });

  // Every change that narrows what a kept token may do goes through the log too (issue 22).
  it("the end of a rotation's grace reaches an instance whose Redis kept the old entry, and a stale entry written back is not trusted", async () => {
    const old = await a.get(ApiTokenService).create({ scope: 'app' });
    await untilCachedLocally(b, old.token, 'app', () => whoami(b, old.token).expect(200));
    const stale = await bRedis.get(`api_token:app:${old.token}`);
    expect(stale).not.toBeNull();

    const { previous } = (await a.get(ApiTokenService).rotate(old.token, { graceSeconds: 1 }))!;
    await until("B reads the change from the log and drops the old token's entries", () => localCacheState(b, old.token) === 'miss', 5_000);
    // The entry comes back in B's Redis (a failover, a lost delete), without the expiry.
    await bRedis.set(`api_token:app:${old.token}`, stale!, 'EX', 600);
    await until('the grace ends', () => Date.now() >= Date.parse(`${previous.expiresAt}Z`));

    expect((await whoami(b, old.token)).status).toBe(401);
    expect((await whoami(b, old.token)).status).toBe(401);
  });

  it('a changed rate limit reaches an instance whose Redis kept the old entry, and a stale entry written back is not trusted', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    await untilCachedLocally(b, created.token, 'app', () => whoami(b, created.token).expect(200));
    const stale = await bRedis.get(`api_token:app:${created.token}`);

    await a.get(ApiTokenService).setRateLimit(created.token, { limit: 1, windowSeconds: 3600 });
    await until("B reads the change from the log and drops the token's entries", () => localCacheState(b, created.token) === 'miss', 5_000);
    await bRedis.set(`api_token:app:${created.token}`, stale!, 'EX', 600);

    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await whoami(b, created.token)).status);
    expect(statuses).toEqual([200, 429, 429]);
  });

  it('a log reset under a running instance (TRUNCATE … RESTART IDENTITY) is seen, counted and read from the start', async () => {
    const before = await a.get(ApiTokenService).create({ scope: 'app' });
    await a.get(ApiTokenService).revoke(before.token);
    await until('B reads the revocation', () => listed(b, before.token), 5_000);
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    await untilCachedLocally(b, created.token, 'app', () => whoami(b, created.token).expect(200));
    const resets = b.get(ApiTokenMetrics).snapshot().invalidation.logResets;

    await suite.db.query('TRUNCATE api_token_revocations RESTART IDENTITY');
    await a.get(ApiTokenService).revoke(created.token);

    await until('B reads the revocation made after the reset', () => listed(b, created.token), 5_000);
    expect((await whoami(b, created.token)).status).toBe(401);
    expect(b.get(ApiTokenMetrics).snapshot().invalidation.logResets).toBeGreaterThan(resets);
  });

  it("an instance's first read watches the ids of revocations still open then: one that commits later is read", async () => {
    const late = await a.get(ApiTokenService).create({ scope: 'app' });
    const early = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(a, late.token)).status).toBe(200);
    const stale = await suite.redis.get(`api_token:app:${late.token}`);
    const held = await revokeInOpenTransaction(suite.db.url, late.token);
    let c: INestApplication | undefined;
    try {
      await a.get(ApiTokenService).revoke(early.token);
      // C starts while the first revocation is open and the second committed: its first read sees only the second.
      c = await createTestApp({ databaseUrl: suite.db.url, apiToken });
      expect(listed(c, early.token)).toBe(true);
      expect(listed(c, late.token)).toBe(false);
      await held.commit();
      // A Redis entry of the revoked token that no message deletes (a lost write): only the log refuses it.
      await suite.redis.set(`api_token:app:${late.token}`, stale!, 'EX', 600);
      await until('C reads the revocation that committed late', () => listed(c!, late.token), 5_000);
      expect((await whoami(c, late.token)).status).toBe(401);
    } finally {
      await held.end();
      await c?.close();
    }
  });
});
