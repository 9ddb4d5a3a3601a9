import type { INestApplication } from '@nestjs/common';
import { ApiTokenAuthenticator, ApiTokenMetrics, ApiTokenService } from '../libs/api-token/src';
import { ApiTokenLookupShedError } from '../libs/api-token/src/auth/lookup-budget';
import { ApiTokenCacheService } from '../libs/api-token/src/cache/token-cache.service';
import { ApiTokenKnownTokens } from '../libs/api-token/src/auth/known-tokens.service';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import * as generator from '../libs/api-token/src/tokens/token.generator';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { gate, holdLookups } from './support/gate';
import { whoami } from './support/requests';
import { suiteFixture } from './support/suite-fixture';
import { until } from './support/until';

/**
 * The membership filter (on by default): unknown tokens are refused after one batched statement and
 * no Redis command, while a token it does not hold yet (created by Dify or another instance after it
 * was built) is accepted on its first request, and a table that does not answer sends the token the
 * usual way (503, never 401).
 */
describe('the membership filter of stored tokens', () => {
  const suite = suiteFixture();
  let app: INestApplication;
  let other: INestApplication;
  let before: string;

  beforeAll(async () => {
    other = await suite.app({ apiToken: { flushCron: false } }); // creates the table
    before = await insertBySql();
    app = await suite.app({ apiToken: { flushCron: false, maxConcurrentLookups: 1, maxQueuedLookups: 1 } });
  });

  let release: (() => void) | undefined;
  afterEach(() => {
    release?.();
    jest.restoreAllMocks();
  });

  const lookups = () => app.get(ApiTokenMetrics).snapshot().scopes.app?.lookups;
  const insertBySql = async (): Promise<string> => {
    const token = generateApiToken('app');
    await suite.db.query("INSERT INTO api_tokens (type, token, created_at) VALUES ('app', $1, now() AT TIME ZONE 'UTC')", [token]);
    return token;
  };

  /** Holds the first membership statement at a gate until `open()` (or the test's end). */
  const holdFirstStatement = () => {
    const repository = app.get(ApiTokenRepository);
    const existing = repository.existing.bind(repository);
    const held = gate();
    release = () => held.open();
    const spy = jest.spyOn(repository, 'existing').mockImplementationOnce(async (tokens) => {
      await held.promise;
      return existing(tokens);
    });
    return { spy, open: () => held.open() };
  };

  it('is built before the application serves: a token stored before the start needs no statement of its own', async () => {
    expect(app.get(ApiTokenKnownTokens).size).toBe(1);
    const existing = jest.spyOn(app.get(ApiTokenRepository), 'existing');
    expect((await whoami(app, before)).status).toBe(200);
    expect(existing).not.toHaveBeenCalled();
  });

  it('refuses a flood of distinct unknown tokens with no Redis command and one statement per batch', async () => {
    const repository = app.get(ApiTokenRepository);
    const existing = holdFirstStatement();
    const find = jest.spyOn(repository, 'findByToken');
    const filteredBefore = lookups()?.filtered ?? 0;
    // The usual path's first step is the Redis read: every command it sends follows from that call.
    // (Counting the server's commands would count the app's timers too: the usage flush's tick.)
    const redisRead = jest.spyOn(app.get(ApiTokenCacheService), 'lookupRedis');

    const flood = Array.from({ length: 200 }, () => whoami(app, generateApiToken('app')).then((res) => res.status));
    await until('the first statement is held and the other tokens wait for the next', () => existing.spy.mock.calls.length === 1 && app.get(ApiTokenKnownTokens).waiting === 200);
    existing.open();

    expect(await Promise.all(flood)).toEqual(Array(200).fill(401));
    expect(redisRead).not.toHaveBeenCalled();
    expect(find).not.toHaveBeenCalled();
    // The first statement (the tokens that came within its linger), then one for those that came while it ran.
    const sizes = existing.spy.mock.calls.map(([tokens]) => tokens.length);
    expect(sizes).toHaveLength(2);
    expect(sizes[0] + sizes[1]).toBe(200);
    expect((lookups()?.filtered ?? 0) - filteredBefore).toBe(200);
  });

  it('remembers a refused unknown token in L1: its next request makes no statement', async () => {
    const token = generateApiToken('app');
    expect((await whoami(app, token)).status).toBe(401);
    const existing = jest.spyOn(app.get(ApiTokenRepository), 'existing');
    expect((await whoami(app, token)).status).toBe(401);
    expect(existing).not.toHaveBeenCalled();
  });

  it('accepts on its first request a token Dify inserted after the build, and a token another instance created', async () => {
    const fromDify = await insertBySql();
    expect((await whoami(app, fromDify)).status).toBe(200);
    const { token } = await other.get(ApiTokenService).create({ scope: 'app' });
    expect((await whoami(app, token)).status).toBe(200);
    // Both are held now: their next lookups (L1 cleared) make no membership statement.
    app.get(ApiTokenCacheService).clearLocal();
    const existing = jest.spyOn(app.get(ApiTokenRepository), 'existing');
    expect((await whoami(app, fromDify)).status).toBe(200);
    expect((await whoami(app, token)).status).toBe(200);
    expect(existing).not.toHaveBeenCalled();
  });

  it('holds a token created on this instance at once', async () => {
    const { token } = await app.get(ApiTokenService).create({ scope: 'app' });
    const existing = jest.spyOn(app.get(ApiTokenRepository), 'existing');
    expect((await whoami(app, token)).status).toBe(200);
    expect(existing).not.toHaveBeenCalled();
  });

  it('a stampede on a new token: one membership statement, then one lookup', async () => {
    const token = await insertBySql();
    const existing = holdFirstStatement();
    const find = jest.spyOn(app.get(ApiTokenRepository), 'findByToken');
    const stampede = Array.from({ length: 30 }, () => whoami(app, token).then((res) => res.status));
    await until('the first statement is held and the other requests wait', () => existing.spy.mock.calls.length === 1 && app.get(ApiTokenKnownTokens).waiting === 30);
    existing.open();
    expect(await Promise.all(stampede)).toEqual(Array(30).fill(200));
    // The first statement found it: the 29 waiting need none of their own.
    expect(existing.spy).toHaveBeenCalledTimes(1);
    expect(find).toHaveBeenCalledTimes(1);
  });

  it('keeps a refusal out of L1 when the token was created while its statement ran', async () => {
    const token = generateApiToken('app');
    const repository = app.get(ApiTokenRepository);
    const existing = repository.existing.bind(repository);
    const read = gate();
    const held = gate();
    release = () => held.open();
    jest.spyOn(repository, 'existing').mockImplementationOnce(async (tokens) => {
      const found = await existing(tokens);
      read.open();
      await held.promise;
      return found;
    });
    const refused = whoami(app, token).then((res) => res.status);
    await read.promise; // the table said: no row holds it

    const cache = app.get(ApiTokenCacheService);
    const epoch = cache.localEpoch;
    jest.spyOn(generator, 'generateApiToken').mockReturnValueOnce(token);
    await other.get(ApiTokenService).create({ scope: 'app' });
    await until('the creation evicts on this instance', () => cache.localEpoch !== epoch);
    held.open();

    expect(await refused).toBe(401); // answered from what the table said when it was asked
    expect((await whoami(app, token)).status).toBe(200);
  });

  it('runs its statement within the lookup budget: a flood waits in one place of the queue, none is shed', async () => {
    const valid = await insertBySql();
    const repository = app.get(ApiTokenRepository);
    const held = holdLookups(repository);
    release = held.open;
    const existing = jest.spyOn(repository, 'existing');
    const counters = () => app.get(ApiTokenMetrics).snapshot().scopes.app;
    const queued = counters()?.lookupsQueued ?? 0;

    // The valid token's lookup holds the budget's only place (maxConcurrentLookups 1).
    const first = whoami(app, valid).then((res) => res.status);
    await until('the lookup holds the only place', () => held.started() === 1);
    const flood = Array.from({ length: 50 }, () => whoami(app, generateApiToken('app')).then((res) => res.status));
    await until('one statement waits in the queue', () => counters()?.lookupsQueued === queued + 1);
    await until('the other tokens wait for the next statement', () => app.get(ApiTokenKnownTokens).waiting === 50);

    held.open();
    expect(await first).toBe(200);
    expect(await Promise.all(flood)).toEqual(Array(50).fill(401));
    expect(counters()?.lookupsShed ?? 0).toBe(0);
    // The valid token's statement, the queued one, then one for the flood's other tokens (if any came after it).
    expect(existing.mock.calls.length).toBeLessThanOrEqual(3);
    expect(existing.mock.calls.slice(1).flatMap(([tokens]) => tokens)).toHaveLength(50);
  });

  it('sheds a token past 1,000 waiting for an answer, at once and counted (a stalled table does not pile requests up)', async () => {
    const existing = holdFirstStatement();
    const authenticator = app.get(ApiTokenAuthenticator);
    const shedBefore = app.get(ApiTokenMetrics).snapshot().scopes.app?.lookupsShed ?? 0;
    const waiting = Array.from({ length: 1_000 }, () => authenticator.authenticate(generateApiToken('app'), 'app'));
    await until('the first statement is held', () => existing.spy.mock.calls.length === 1);
    await expect(authenticator.authenticate(generateApiToken('app'), 'app')).rejects.toBeInstanceOf(ApiTokenLookupShedError);
    expect((app.get(ApiTokenMetrics).snapshot().scopes.app?.lookupsShed ?? 0) - shedBefore).toBe(1);
    existing.open();
    expect(await Promise.all(waiting)).toEqual(Array(1_000).fill(null));
  });
});

describe('the membership filter under a full lookup budget', () => {
  const suite = suiteFixture();
  afterEach(() => jest.restoreAllMocks());

  it('answers 503 for the tokens of a statement the budget shed, counted, without sending them the usual way', async () => {
    const app = await suite.app({ apiToken: { flushCron: false, maxConcurrentLookups: 1, maxQueuedLookups: 0 } });
    const valid = generateApiToken('app');
    await suite.db.query("INSERT INTO api_tokens (type, token) VALUES ('app', $1)", [valid]);
    const held = holdLookups(app.get(ApiTokenRepository));
    try {
      const first = whoami(app, valid).then((res) => res.status);
      await until('the lookup holds the only place', () => held.started() === 1);
      const redisRead = jest.spyOn(app.get(ApiTokenCacheService), 'lookupRedis');
      const shed = await whoami(app, generateApiToken('app'));
      expect([shed.status, shed.headers['retry-after']]).toEqual([503, expect.stringMatching(/^\d+$/)]);
      expect(app.get(ApiTokenMetrics).snapshot().scopes.app?.lookupsShed).toBe(1);
      expect(redisRead).not.toHaveBeenCalled();
      held.open();
      expect(await first).toBe(200);
    } finally {
      held.open();
    }
  });
});

describe('the membership filter while PostgreSQL does not answer', () => {
  const suite = suiteFixture();

  it('sends an unknown token the usual way (503 with Retry-After, never 401), then filters again', async () => {
    const proxy = await suite.proxy(suite.db.url);
    const app = await suite.app({ databaseUrl: proxy.proxied(suite.db.url), apiToken: { flushCron: false, localCacheMax: 0 } });
    expect(app.get(ApiTokenKnownTokens).size).toBe(0); // built, empty

    proxy.cut('refuse');
    try {
      const answer = await whoami(app, generateApiToken('app'));
      expect([answer.status, answer.headers['retry-after']]).toEqual([503, expect.stringMatching(/^\d+$/)]);
    } finally {
      proxy.restore();
    }
    const filtered = () => app.get(ApiTokenMetrics).snapshot().scopes.app?.lookups.filtered ?? 0;
    const before = filtered();
    await until('the table answers again', async () => (await whoami(app, generateApiToken('app'))).status === 401);
    expect(filtered()).toBeGreaterThan(before);
  });
});
