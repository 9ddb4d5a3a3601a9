import type { INestApplication } from '@nestjs/common';
import { ApiTokenMetrics, ApiTokenService } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { gate, holdLookups as holdAt } from './support/gate';
import { whoami } from './support/requests';
import { suiteFixture } from './support/suite-fixture';
import { until } from './support/until';

describe('the PostgreSQL lookup budget (maxConcurrentLookups, maxQueuedLookups)', () => {
  const suite = suiteFixture();
  let app: INestApplication;
  let other: INestApplication;

  beforeAll(async () => {
    // Unknown tokens fill the budget here by the usual path; the filter's statements have their own suite.
    app = await suite.app({ apiToken: { maxConcurrentLookups: 1, maxQueuedLookups: 1, membershipFilterRebuildMs: 0 } });
    other = await suite.app({ apiToken: { membershipFilterRebuildMs: 0 } });
  });

  // A failing test must not leave a lookup held: its request would keep the app from closing.
  let release: (() => void) | undefined;
  afterEach(() => {
    release?.();
    jest.restoreAllMocks();
  });

  const counters = () => app.get(ApiTokenMetrics).snapshot().scopes.app;

  /** Holds every database lookup of `instance` at a gate, released after each test. */
  const holdLookups = (instance: INestApplication) => {
    const held = holdAt(instance.get(ApiTokenRepository));
    release = held.open;
    return held;
  };

  it('past its queue a lookup is answered 503 with Retry-After, while in-process and Redis hits pass', async () => {
    const repository = app.get(ApiTokenRepository);
    const local = await repository.insert({ token: generateApiToken('app'), type: 'app' });
    const inRedis = await repository.insert({ token: generateApiToken('app'), type: 'app' });
    expect((await whoami(app, local.token)).status).toBe(200); // in this instance's L1
    expect((await whoami(other, inRedis.token)).status).toBe(200); // in Redis, not in this instance's L1

    // Every database lookup of this instance waits at the gate: the first one holds the only place.
    const held = holdLookups(app);
    const first = whoami(app, generateApiToken('app')).then((res) => res.status);
    await until('the first lookup holds the only place', () => held.started() === 1);
    const second = whoami(app, generateApiToken('app')).then((res) => res.status);
    await until('the second lookup waits in the queue', () => counters()?.lookupsQueued === 1, 2_000);

    const shedToken = generateApiToken('app');
    const shed = await whoami(app, shedToken);
    expect(shed.status).toBe(503);
    expect(shed.headers['retry-after']).toMatch(/^\d+$/);
    expect(counters()?.lookupsShed).toBe(1);
    expect(counters()?.unavailable ?? 0).toBe(0);

    // Hits are served untouched while the budget is full.
    expect((await whoami(app, local.token)).status).toBe(200);
    expect((await whoami(app, inRedis.token)).status).toBe(200);
    expect(held.started()).toBe(1);

    held.open();
    expect(await first).toBe(401);
    expect(await second).toBe(401);
    expect(held.started()).toBe(2);
    // A shed lookup cached nothing: the same token is looked up once there is room.
    expect((await whoami(app, shedToken)).status).toBe(401);
    expect(held.started()).toBe(3);
  });

  it('a valid token waiting in the queue is accepted once a place frees', async () => {
    const repository = app.get(ApiTokenRepository);
    const valid = await repository.insert({ token: generateApiToken('app'), type: 'app' });
    const find = repository.findByToken.bind(repository);
    const held = gate();
    release = () => held.open();
    let started = 0;
    jest.spyOn(repository, 'findByToken').mockImplementation(async (...args) => {
      if (++started === 1) await held.promise;
      return find(...args);
    });
    const queued = counters()?.lookupsQueued ?? 0;
    const first = whoami(app, generateApiToken('app')).then((res) => res.status);
    await until('the first lookup holds the only place', () => started === 1);
    const waiting = whoami(app, valid.token).then((res) => res.status);
    await until('the valid token waits in the queue', () => counters()?.lookupsQueued === queued + 1);
    held.open();
    expect(await first).toBe(401);
    expect(await waiting).toBe(200);
  });

  it('a valid token created on another instance mid-flood is accepted on its first request', async () => {
    // Room to queue the flood: 2 lookups at once, 64 waiting.
    const roomy = await suite.app({ apiToken: { maxConcurrentLookups: 2, maxQueuedLookups: 64, membershipFilterRebuildMs: 0 } });
    const held = holdLookups(roomy);
    const queued = () => roomy.get(ApiTokenMetrics).snapshot().scopes.app?.lookupsQueued ?? 0;
    // A flood of 20 unknown tokens: 2 lookups held at the gate, 18 waiting.
    const flood = Array.from({ length: 20 }, () => whoami(roomy, generateApiToken('app')).then((res) => res.status));
    await until('the flood fills the lookups and waits in the queue', () => held.started() === 2 && queued() === 18);

    const { token } = await other.get(ApiTokenService).create({ scope: 'app' });
    const first = whoami(roomy, token).then((res) => res.status);
    await until('the new token waits behind the flood', () => queued() === 19);
    held.open();
    expect(await first).toBe(200);
    expect(await Promise.all(flood)).toEqual(Array(20).fill(401));
    expect(roomy.get(ApiTokenMetrics).snapshot().scopes.app?.lookupsShed ?? 0).toBe(0);
  });
});
