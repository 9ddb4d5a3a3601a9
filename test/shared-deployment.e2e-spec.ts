import { ApiTokenMetrics, ApiTokenService } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { ApiTokenRevokedTokens } from '../libs/api-token/src/cache/revoked-tokens';
import { ApiTokenRevocationLogService, revocationWindowMs } from '../libs/api-token/src/tokens/revocation-log.service';
import { API_TOKEN_OPTIONS } from '../libs/api-token/src/api-token.constants';
import type { ResolvedApiTokenOptions } from '../libs/api-token/src/api-token.options';
import type { INestApplication } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { revokeInOpenTransaction } from './support/database';
import { whoami } from './support/requests';
import { suiteFixture } from './support/suite-fixture';
import { until } from './support/until';
import { holdNextFind } from './support/gate';
import { PrivateRedisServer } from './support/redis-server';

/**
 * A deployment shared with other writers and operators: what a hostile token holder or an unlucky
 * operator did to the revocation and policy-change logs, the tenant index, the expiry timer and exact
 * rate limiting, each found by an attack on issue 22's changes and failing before its fix.
 */
const POLL_MS = 200;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('shared deployment: logs, tenant index, expiry timer', () => {
  const suite = suiteFixture();
  let a: INestApplication;
  let b: INestApplication;
  const listed = (app: INestApplication, token: string) => app.get(ApiTokenRevokedTokens).has(token);
  const resets = (app: INestApplication) => app.get(ApiTokenMetrics).snapshot().invalidation.logResets;

  beforeAll(async () => {
    const apiToken = { revocationPollIntervalMs: POLL_MS, localCacheTtlMs: 60_000, flushCron: false as const };
    a = await suite.app({ apiToken });
    b = await suite.app({ apiToken });
  });

  /** What any instance's routine prune does once every entry is older than the window (a quiet quarter of an hour). */
  const quietPeriodThenPrune = async () => {
    await suite.db.query(`UPDATE api_token_revocations SET revoked_at = revoked_at - interval '1 hour'`);
    await suite.db.query(`UPDATE api_token_policy_changes SET changed_at = changed_at - interval '1 hour'`);
    const windowMs = revocationWindowMs(a.get<ResolvedApiTokenOptions>(API_TOKEN_OPTIONS));
    await a.get(ApiTokenRepository).pruneRevocations(windowMs);
  };

  // A false alarm in routine operation makes the reset alert noise: the prune empties a quiet log
  // (it was once read as a reset: max(id) fell below the last id read).
  it('the routine prune of a quiet log is not taken for a reset (no alert, no "revoke them again")', async () => {
    const t = await a.get(ApiTokenService).create({ scope: 'app' });
    await a.get(ApiTokenService).revoke(t.token);
    await until('B reads the revocation', () => listed(b, t.token), 5_000);
    const before = resets(b);
    await quietPeriodThenPrune();
    const log = b.get(ApiTokenRevocationLogService);
    const reads = log.readCount;
    await until('B polls twice', () => log.readCount > reads + 2, 5_000);
    console.log(`log resets counted by B after a routine prune: ${resets(b) - before}`);
    expect(resets(b)).toBe(before);
  });

  // VACUUM FULL / CLUSTER rewrite the table: new file node, same ids. Taken for a reset too.
  it('VACUUM FULL of the log (routine maintenance) is not taken for a reset', async () => {
    const t = await a.get(ApiTokenService).create({ scope: 'app' });
    await a.get(ApiTokenService).revoke(t.token);
    await until('B reads the revocation', () => listed(b, t.token), 5_000);
    const before = resets(b);
    await suite.db.query('VACUUM FULL api_token_revocations');
    const log = b.get(ApiTokenRevocationLogService);
    const reads = log.readCount;
    await until('B polls twice', () => log.readCount > reads + 2, 5_000);
    console.log(`log resets counted by B after VACUUM FULL: ${resets(b) - before}`);
    expect(resets(b)).toBe(before);
  });

  // A long run of skipped ids (here a sequence moved far ahead) must not fill the list of watched
  // gaps so that a real gap (a revocation whose transaction commits after a later one) goes unread.
  it('after a quiet-period prune, a revocation that commits after a later one is still read', async () => {
    // A deployment that has logged 20 000 revocations (or policy changes) in its life.
    await suite.db.query(`SELECT setval('api_token_revocations_id_seq', greatest(20000, (SELECT last_value FROM api_token_revocations_id_seq)))`);
    const seed = await a.get(ApiTokenService).create({ scope: 'app' });
    await a.get(ApiTokenService).revoke(seed.token);
    await until('B reads it', () => listed(b, seed.token), 5_000);
    await quietPeriodThenPrune();
    const log = b.get(ApiTokenRevocationLogService);
    let reads = log.readCount;
    await until('B polls (and rewinds)', () => log.readCount > reads + 2, 5_000);

    const first = await a.get(ApiTokenService).create({ scope: 'app' });
    await a.get(ApiTokenService).revoke(first.token);
    await until('B reads the first revocation after the prune', () => listed(b, first.token), 5_000);

    const late = await a.get(ApiTokenService).create({ scope: 'app' });
    const early = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(b, late.token)).status).toBe(200);
    const held = await revokeInOpenTransaction(suite.db.url, late.token);
    try {
      await a.get(ApiTokenService).revoke(early.token);
      await until('B reads the later revocation', () => listed(b, early.token), 5_000);
      reads = log.readCount;
      await until('B polls again', () => log.readCount > reads + 1, 5_000);
      await held.commit();
    } finally {
      await held.end();
    }
    const ok = await until('B reads the revocation that committed late', () => listed(b, late.token), 3_000).then(
      () => true,
      () => false,
    );
    const gaps = (log as unknown as { revocations: { gaps: Map<string, number> } }).revocations.gaps;
    const status = (await whoami(b, late.token)).status;
    console.log(`B listed the late revocation: ${ok}; B answers ${status} for it; B watches ${gaps.size} gaps, lowest ${[...gaps.keys()][0]}`);
    expect(ok).toBe(true);
    expect(status).toBe(401);
  });

  // The tenant index is shared by writers of different TTLs (instances with other options; Dify,
  // whose fill always sets 660 s, which the library cannot stop: docs/dify-compatibility.md). The
  // library's own fills only ever lengthen it.
  it('an instance with a shorter cache TTL never shortens the tenant index under entries of a longer one', async () => {
    const long = await suite.app({ apiToken: { cacheTtlSeconds: 3600, flushCron: false } });
    const tenantId = randomUUID();
    const mine = await long.get(ApiTokenService).create({ scope: 'app', tenantId });
    const other = await long.get(ApiTokenService).create({ scope: 'app', tenantId });
    await whoami(long, mine.token).expect(200);
    const index = `tenant_tokens:${tenantId}`;
    expect(await suite.redis.sismember(index, `api_token:app:${mine.token}`)).toBe(1);
    // Instance a has the default cache TTL (600 s, index 660 s) and fills the tenant's other token.
    await whoami(a, other.token).expect(200);
    expect(await suite.redis.sismember(index, `api_token:app:${other.token}`)).toBe(1);
    const entryTtl = await suite.redis.ttl(`api_token:app:${mine.token}`);
    expect(entryTtl).toBeGreaterThan(3000);
    expect(await suite.redis.ttl(index)).toBeGreaterThanOrEqual(entryTtl);
  });

  // A timer longer than 2^31 - 1 ms (24.8 days) fires at once in Node: a far expiry must not make
  // every poll take the expiry lock and sweep.
  it('a token expiring in 30 days does not make every poll run an expiry sweep', async () => {
    const removeExpired = jest.spyOn(b.get(ApiTokenService), 'removeExpired');
    await a.get(ApiTokenService).create({ scope: 'app', expiresInSeconds: 30 * 86_400 });
    await sleep(3_000);
    const sweeps = removeExpired.mock.calls.length;
    removeExpired.mockRestore();
    console.log(`sweeps run by B in 3 s for a token expiring in 30 days: ${sweeps}`);
    expect(sweeps).toBeLessThanOrEqual(1);
  });
});

describe('shared deployment: exact rate limiting when Redis loses the window (restart without persistence, failover)', () => {
  const suite = suiteFixture();

  // Exact mode promises never more than the limit in a window: a Redis that restarted empty (or a
  // replica promoted before it got the count) must not hand the token a fresh quota.
  it('a token limited to 3/h gets no more than 3 in the window when Redis loses the count', async () => {
    const app = await suite.app({ apiToken: { rateLimitMode: 'exact', flushCron: false } });
    const t = await app.get(ApiTokenService).create({ scope: 'app', rateLimit: { limit: 3, windowSeconds: 3600 } });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await whoami(app, t.token)).status);
    // The Redis restarts without persistence: the window's counter is gone (only it, so the test's other keys stay).
    const keys = await suite.redis.keys(`api_token_rate:*${t.id}*`);
    expect(keys.length).toBe(1);
    await suite.redis.del(...keys);
    for (let i = 0; i < 3; i++) statuses.push((await whoami(app, t.token)).status);
    const accepted = statuses.filter((s) => s === 200).length;
    console.log(`statuses ${statuses.join(',')}: ${accepted} accepted for a limit of 3/h on one instance`);
    expect(accepted).toBeLessThanOrEqual(3);
  });
});

describe('shared deployment: a policy change while a fill is in flight, on an instance whose Redis lost the change', () => {
  const suite = suiteFixture();
  let a: INestApplication;
  let b: INestApplication;

  beforeAll(async () => {
    const privateRedis = await PrivateRedisServer.start();
    suite.cleanup(() => privateRedis.kill());
    const apiToken = { revocationPollIntervalMs: POLL_MS, localCacheTtlMs: 60_000, flushCron: false as const };
    a = await suite.app({ apiToken });
    b = await suite.app({ redisUrl: privateRedis.url(), apiToken });
  });

  it('a fill that read the row before a rate limit was set does not bring the old policy back', async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    const held = holdNextFind(b.get(ApiTokenRepository));
    const answer = whoami(b, created.token).then((res) => res.status);
    expect(await held.read).not.toBeNull();
    await a.get(ApiTokenService).setRateLimit(created.token, { limit: 1, windowSeconds: 3600 });
    const log = b.get(ApiTokenRevocationLogService);
    const reads = log.readCount;
    await until('B polls twice', () => log.readCount > reads + 2, 5_000);
    held.release();
    const first = await answer;
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await whoami(b, created.token)).status);
    console.log(`in-flight fill answered ${first}; then ${statuses.join(',')}`);
    expect(statuses.filter((x) => x === 200).length).toBeLessThanOrEqual(1);
  });

  // A rollback that reverts the newest migration first (its down() drops api_token_policy_changes)
  // while this version still runs must not stop the revocation log too (they were read in one statement).
  it("a revocation reaches B through the log even while the policy-change log's table is missing", async () => {
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(b, created.token)).status).toBe(200);
    await suite.db.query('DROP TABLE api_token_policy_changes');
    await a.get(ApiTokenService).revoke(created.token);
    const ok = await until('B reads the revocation', () => b.get(ApiTokenRevokedTokens).has(created.token), 3_000).then(
      () => true,
      () => false,
    );
    const status = (await whoami(b, created.token)).status;
    console.log(`policy-change log dropped: B listed the revocation: ${ok}; B answers ${status} for the revoked token`);
    expect(status).toBe(401);
  });
});

describe("shared deployment: an instance's first read of a log longer than one page (a fresh database: ids from 1)", () => {
  const suite = suiteFixture();
  let a: INestApplication;
  let b: INestApplication;
  const listed = (app: INestApplication, token: string) => app.get(ApiTokenRevokedTokens).has(token);

  beforeAll(async () => {
    const apiToken = { revocationPollIntervalMs: POLL_MS, localCacheTtlMs: 60_000, flushCron: false as const };
    a = await suite.app({ apiToken });
    b = await suite.app({ apiToken });
  });

  // A first read longer than one page (a mass revocation, then an instance starts): pages ordered by
  // the id's text ("1000" < "2") and a cursor that jumped to the top after the first page lost entries.
  it('an instance that starts after 2500 revocations lists every one of them, and refuses a revoked token whose entry came back', async () => {
    const victim = await a.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(a, victim.token)).status).toBe(200);
    const stale = await suite.redis.get(`api_token:app:${victim.token}`);
    await suite.db.query(`INSERT INTO api_token_revocations (token, scopes) SELECT 'app-bulk' || g, '{app}' FROM generate_series(1, 500) g`);
    await a.get(ApiTokenService).revoke(victim.token);
    await suite.db.query(`INSERT INTO api_token_revocations (token, scopes) SELECT 'app-bulk' || g, '{app}' FROM generate_series(501, 2500) g`);
    await until('A and B read the whole log', () => listed(a, 'app-bulk2500') && listed(b, 'app-bulk2500'), 5_000);
    for (const app of [a, b]) {
      const reads = app.get(ApiTokenRevocationLogService).readCount;
      await until('it polls again', () => app.get(ApiTokenRevocationLogService).readCount > reads + 1, 5_000);
    }
    // The entry comes back in Redis (a failover to a replica that missed the delete).
    await suite.redis.set(`api_token:app:${victim.token}`, stale!, 'EX', 600);
    const c = await suite.app({ apiToken: { revocationPollIntervalMs: POLL_MS, flushCron: false } });
    const byId = (await suite.db.query(`SELECT id::int AS id, token FROM api_token_revocations WHERE token LIKE 'app-bulk%' OR token = $1 ORDER BY id`, [victim.token])) as { id: number; token: string }[];
    const missed: number[] = byId.filter((r) => !listed(c, r.token)).map((r) => r.id);
    const ranges: string[] = [];
    for (const g of missed) {
      const last = ranges[ranges.length - 1]?.split('..');
      if (last && Number(last[1] ?? last[0]) === g - 1) ranges[ranges.length - 1] = `${last[0]}..${g}`;
      else ranges.push(String(g));
    }
    const victimId = byId.find((r) => r.token === victim.token)!.id;
    const status = (await whoami(c, victim.token)).status;
    console.log(`a new instance misses ${missed.length} of ${byId.length} revocations, ids ${ranges.join(', ')}; the victim (id ${victimId}) answers ${status}`);
    expect(missed).toEqual([]);
    expect(status).toBe(401);
  });
});

describe("shared deployment: an instance's first read of a log longer than one page (ids of one length)", () => {
  const suite = suiteFixture();
  const listed = (app: INestApplication, token: string) => app.get(ApiTokenRevokedTokens).has(token);

  // The same without the text order: all ids of one length (text order = numeric order). The jump to
  // the highest id after the first page alone loses ids first+1000 .. max-1000.
  it('an instance that starts after 2500 revocations with 6-digit ids lists every one of them', async () => {
    // A first instance creates the tables.
    await suite.app({ apiToken: { revocationPollIntervalMs: POLL_MS, flushCron: false } });
    await suite.db.query(`SELECT setval('api_token_revocations_id_seq', greatest(200000, (SELECT last_value FROM api_token_revocations_id_seq)))`);
    await suite.db.query(`INSERT INTO api_token_revocations (token, scopes) SELECT 'app-six' || g, '{app}' FROM generate_series(1, 2500) g`);
    const c = await suite.app({ apiToken: { revocationPollIntervalMs: POLL_MS, flushCron: false } });
    const byId = (await suite.db.query(`SELECT id::int AS id, token FROM api_token_revocations WHERE token LIKE 'app-six%' ORDER BY id`)) as { id: number; token: string }[];
    const missed = byId.filter((r) => !listed(c, r.token)).map((r) => r.id);
    console.log(`6-digit ids ${byId[0].id}..${byId[byId.length - 1].id}: a new instance misses ${missed.length}, ids ${missed[0]}..${missed[missed.length - 1]}`);
    expect(missed).toEqual([]);
  });
});

describe('shared deployment: the order in which policy changes are applied', () => {
  const suite = suiteFixture();

  // Two changes of one token whose ids straddle a power of ten (99, 100) were applied in text order,
  // newest first: the older, wider limit was noted and a stale entry with it trusted. Ids of one
  // length (97, 98) are the control: text order and numeric order agree there.
  it.each([{ first: 99 }, { first: 97 }])('a new instance applies the newer of two rate-limit changes (ids $first and the next), not the older one', async ({ first }) => {
    const apiToken = { revocationPollIntervalMs: POLL_MS, flushCron: false as const };
    const a = await suite.app({ apiToken });
    const t = await a.get(ApiTokenService).create({ scope: 'app' });
    await suite.db.query(`SELECT setval('api_token_policy_changes_id_seq', ${first - 1})`);
    await a.get(ApiTokenService).setRateLimit(t.token, { limit: 1000, windowSeconds: 3600 });
    expect((await whoami(a, t.token)).status).toBe(200);
    const stale = await suite.redis.get(`api_token:app:${t.token}`);
    expect(stale).toContain('"limit":1000');
    await a.get(ApiTokenService).setRateLimit(t.token, { limit: 1, windowSeconds: 3600 });
    const ids = (await suite.db.query('SELECT id::int AS id, rate_limit FROM api_token_policy_changes ORDER BY id')) as { id: number; rate_limit: number }[];
    const log = a.get(ApiTokenRevocationLogService);
    const reads = log.readCount;
    await until('A polls twice', () => log.readCount > reads + 1, 5_000);
    // The old entry comes back (a failover to a replica that missed the delete).
    await suite.redis.set(`api_token:app:${t.token}`, stale!, 'EX', 600);
    const c = await suite.app({ apiToken });
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await whoami(c, t.token)).status);
    console.log(`changes ${JSON.stringify(ids)}; new instance, stale entry with limit 1000 back in Redis: ${statuses.join(',')}`);
    expect(statuses).toEqual([200, 429, 429, 429]);
  });
});
