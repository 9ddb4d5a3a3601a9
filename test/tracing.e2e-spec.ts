import { SpanStatusCode } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import type { INestApplication } from '@nestjs/common';
import { ApiTokenAuthenticator, ApiTokenMetrics, ApiTokenService, ApiTokenUsageFlushService } from '../libs/api-token/src';
import { ApiTokenCacheService } from '../libs/api-token/src/cache/token-cache.service';
import { ATTR, SPAN } from '../libs/api-token/src/metrics/api-token.tracing';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { ApiTokenExpirySweep } from '../libs/api-token/src/tokens/expiry.sweep';
import { ApiTokenRevocationLogService } from '../libs/api-token/src/tokens/revocation-log.service';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { holdLookups } from './support/gate';
import { get, listen } from './support/http-client';
import { whoami as request } from './support/requests';
import { suiteFixture } from './support/suite-fixture';
import type { TcpProxy } from './support/tcp-proxy';
import { InMemoryTracing, spanText, tokenPieces } from './support/tracing';
import { until } from './support/until';

const TENANT = '5b0c7e2a-8d1f-4a6b-9c3e-2f4d6a8b0c1e';

/**
 * The spans of the I/O the module does, recorded by the OpenTelemetry SDK's in-memory exporter
 * registered as the global tracer provider, against the real PostgreSQL (behind a proxy the test can
 * cut) and Redis: each kind of work makes its span with its attributes; an in-process hit makes none;
 * and no span carries any piece of any token the test used.
 */
describe('tracing', () => {
  const suite = suiteFixture();
  let tracing: InMemoryTracing;
  let pgProxy: TcpProxy;
  let app: INestApplication;
  let port: number;
  let repository: ApiTokenRepository;
  let tokens: ApiTokenService;
  /** Every token the test used, valid or not: none may show in a span. */
  const secrets: string[] = [];
  /** Every span exported, kept across the tests' resets for the last test's scan. */
  const exported: ReadableSpan[] = [];

  const newToken = async (values: { tenantId?: string; expiresAt?: string } = {}) => {
    const record = await repository.insert({ token: generateApiToken('app'), type: 'app', ...values });
    secrets.push(record.token);
    return record;
  };
  const unknownToken = () => {
    const token = generateApiToken('app');
    secrets.push(token);
    return token;
  };
  const whoami = (token: string) => get(port, '/app/whoami', token);
  const named = (name: string) => tracing.named(name);
  const only = (name: string): ReadableSpan => {
    const spans = named(name);
    expect(spans).toHaveLength(1);
    return spans[0];
  };
  const childrenOf = (parent: ReadableSpan, name: string) =>
    named(name).filter((span) => span.parentSpanContext?.spanId === parent.spanContext().spanId);

  beforeAll(async () => {
    tracing = InMemoryTracing.start();
    suite.cleanup(() => tracing.stop());
    pgProxy = await suite.proxy(suite.db.url);
    app = await suite.app({
      databaseUrl: pgProxy.proxied(suite.db.url),
      // The revocation log is read only when the test says (poll()), so no read of the timer's takes its entries.
      // Unknown tokens take the usual path (its spans are under test); the filter's span has a test of its own.
      apiToken: { flushCron: false, lockWaitMs: 200, revocationPollIntervalMs: 0, membershipFilterRebuildMs: 0 },
      typeorm: { connectTimeoutMS: 500, extra: { query_timeout: 1000 } },
    });
    port = await listen(app);
    repository = app.get(ApiTokenRepository);
    tokens = app.get(ApiTokenService);
  });

  beforeEach(() => tracing.reset());
  afterEach(() => void exported.push(...tracing.spans()));

  it('traces a lookup past the in-process cache with its source, and an in-process hit not at all', async () => {
    const { token } = await newToken();
    expect((await whoami(token)).status).toBe(200);
    const miss = only(SPAN.lookup);
    expect(miss.attributes).toEqual({ [ATTR.scope]: 'app', [ATTR.source]: 'postgres', [ATTR.outcome]: 'valid', [ATTR.lock]: 'acquired' });
    expect(miss.status.code).toBe(SpanStatusCode.UNSET);

    tracing.reset();
    expect((await whoami(token)).status).toBe(200);
    expect((await whoami(token)).status).toBe(200);
    expect(named(SPAN.lookup)).toEqual([]);

    app.get(ApiTokenCacheService).clearLocal();
    expect((await whoami(token)).status).toBe(200);
    expect(only(SPAN.lookup).attributes).toEqual({ [ATTR.scope]: 'app', [ATTR.source]: 'redis', [ATTR.outcome]: 'valid' });
  });

  it("traces an unknown token's lookup in PostgreSQL, then Redis's cached negative", async () => {
    const token = unknownToken();
    expect((await whoami(token)).status).toBe(401);
    expect(only(SPAN.lookup).attributes).toMatchObject({ [ATTR.source]: 'postgres', [ATTR.outcome]: 'not_found' });
    tracing.reset();
    app.get(ApiTokenCacheService).clearLocal();
    expect((await whoami(token)).status).toBe(401);
    expect(only(SPAN.lookup).attributes).toEqual({ [ATTR.scope]: 'app', [ATTR.source]: 'negative', [ATTR.outcome]: 'not_found' });
  });

  it("traces an unknown token the membership filter refused: source filter, no lock (no Redis command)", async () => {
    const filtered = await suite.app({ apiToken: { flushCron: false, revocationPollIntervalMs: 0 } });
    expect((await request(filtered, unknownToken())).status).toBe(401);
    expect(only(SPAN.lookup).attributes).toEqual({ [ATTR.scope]: 'app', [ATTR.source]: 'filter', [ATTR.outcome]: 'not_found' });
  });

  it('marks the lookups that joined one under way, one span each', async () => {
    const { token } = await newToken();
    const authenticator = app.get(ApiTokenAuthenticator);
    await Promise.all([1, 2, 3].map(() => authenticator.authenticate(token, 'app')));
    const spans = named(SPAN.lookup);
    expect(spans).toHaveLength(3);
    expect(spans.filter((span) => span.attributes[ATTR.joined] === true)).toHaveLength(2);
    for (const span of spans) expect(span.attributes).toMatchObject({ [ATTR.source]: 'postgres', [ATTR.outcome]: 'valid' });
  });

  it('shows a wait for the lookup lock held elsewhere as a span inside the lookup', async () => {
    const { token } = await newToken();
    const lock = `api_token_query_lock:{api_token:app:${token}}`;
    await suite.redis.set(lock, 'held-by-another-instance', 'PX', 10_000);
    try {
      expect((await whoami(token)).status).toBe(200);
    } finally {
      await suite.redis.del(lock);
    }
    const lookup = only(SPAN.lookup);
    expect(lookup.attributes).toMatchObject({ [ATTR.source]: 'postgres', [ATTR.lock]: 'waited', [ATTR.outcome]: 'valid' });
    const [wait] = childrenOf(lookup, SPAN.lockWait);
    expect(wait.attributes).toEqual({ [ATTR.scope]: 'app', [ATTR.outcome]: 'timed_out' });
  });

  it('records a lookup that PostgreSQL did not answer as failed, by class and code only', async () => {
    pgProxy.cut('refuse');
    try {
      expect((await whoami(unknownToken())).status).toBe(503);
    } finally {
      pgProxy.restore();
    }
    const span = only(SPAN.lookup);
    expect(span.status).toEqual({ code: SpanStatusCode.ERROR });
    expect(span.attributes).toMatchObject({ [ATTR.outcome]: 'unavailable', 'error.type': 'ApiTokenStoreError' });
    expect(span.events.map((event) => [event.name, event.attributes])).toEqual([['exception', { 'exception.type': 'ApiTokenStoreError' }]]);
  });

  it('marks a lookup that waited for a place under maxConcurrentLookups, and one shed past the queue', async () => {
    const budgeted = await suite.app({ apiToken: { flushCron: false, revocationPollIntervalMs: 0, maxConcurrentLookups: 1, maxQueuedLookups: 1, membershipFilterRebuildMs: 0 } });
    // Every database lookup waits at the gate: the first holds the only place, the second the queue's.
    const held = holdLookups(budgeted.get(ApiTokenRepository));
    try {
      const first = request(budgeted, unknownToken()).then((res) => res.status);
      await until('the first lookup holds the only place', () => held.started() === 1);
      const second = request(budgeted, unknownToken()).then((res) => res.status);
      await until('the second lookup waits in the queue', () => budgeted.get(ApiTokenMetrics).snapshot().scopes.app.lookupsQueued === 1);
      expect((await request(budgeted, unknownToken())).status).toBe(503);
      held.open();
      expect([await first, await second]).toEqual([401, 401]);
    } finally {
      held.open();
      jest.restoreAllMocks();
    }
    // The two lookups that got a place end in either order.
    const seen = named(SPAN.lookup).map((span) => [span.attributes[ATTR.outcome], span.attributes[ATTR.queued] ?? false, span.attributes['error.type'] ?? '']);
    expect(seen.sort()).toEqual([
      ['not_found', false, ''],
      ['not_found', true, ''],
      ['unavailable', false, 'ApiTokenLookupShedError'],
    ]);
  });

  it('traces a flush run with the keys it took and the rows it wrote, and the expiry sweep after it', async () => {
    const { token } = await newToken();
    expect((await whoami(token)).status).toBe(200);
    const stats = await app.get(ApiTokenUsageFlushService).flushNow();
    expect(stats?.taken).toBeGreaterThan(0);
    const flush = only(SPAN.flush);
    expect(flush.attributes).toEqual({
      [ATTR.trigger]: 'manual',
      [ATTR.outcome]: 'completed',
      [ATTR.keysScanned]: stats!.scanned,
      [ATTR.keysTaken]: stats!.taken,
      [ATTR.rowsWritten]: stats!.updated,
      [ATTR.keysUnusable]: 0,
      [ATTR.expiredRemoved]: 0,
    });
    expect(stats!.updated).toBeGreaterThan(0);
    const [sweep] = childrenOf(flush, SPAN.expirySweep);
    expect(sweep.attributes).toEqual({ [ATTR.trigger]: 'flush', [ATTR.outcome]: 'completed', [ATTR.expiredRemoved]: 0 });
  });

  it('traces revocations by token and by id, found or not', async () => {
    const first = await newToken();
    const second = await newToken();
    await tokens.revoke(first.token);
    await tokens.revoke(unknownToken());
    await tokens.revokeById(second.id);
    expect(named(SPAN.revoke).map((span) => span.attributes)).toEqual([
      { [ATTR.target]: 'token', [ATTR.outcome]: 'revoked', [ATTR.rows]: 1, [ATTR.scopes]: ['app'], [ATTR.cacheCleared]: true },
      { [ATTR.target]: 'token', [ATTR.outcome]: 'not_found', [ATTR.rows]: 0, [ATTR.scopes]: [], [ATTR.cacheCleared]: true },
      { [ATTR.target]: 'id', [ATTR.outcome]: 'revoked', [ATTR.rows]: 1, [ATTR.scopes]: ['app'], [ATTR.cacheCleared]: true },
    ]);
  });

  it('traces rotations, with the revocation of the old token inside when there is no grace', async () => {
    const { token } = await newToken();
    const rotation = await tokens.rotate(token, { graceSeconds: 0 });
    secrets.push(rotation!.successor.token);
    const rotate = only(SPAN.rotate);
    expect(rotate.attributes).toEqual({ [ATTR.graceSeconds]: 0, [ATTR.scope]: 'app', [ATTR.outcome]: 'rotated', [ATTR.cacheCleared]: true });
    expect(childrenOf(rotate, SPAN.revoke)).toHaveLength(1);

    tracing.reset();
    const graced = await tokens.rotate(rotation!.successor.token, { graceSeconds: 60 });
    secrets.push(graced!.successor.token);
    expect(await tokens.rotate(unknownToken())).toBeNull();
    expect(named(SPAN.rotate).map((span) => span.attributes[ATTR.outcome])).toEqual(['rotated', 'not_found']);
    expect(named(SPAN.revoke)).toEqual([]);
  });

  it('traces a tenant invalidation with the keys it dropped', async () => {
    const { token } = await newToken({ tenantId: TENANT });
    expect((await whoami(token)).status).toBe(200);
    tracing.reset();
    const { dropped } = await tokens.invalidateTenant(TENANT);
    expect(dropped).toBe(1);
    expect(only(SPAN.invalidateTenant).attributes).toEqual({
      [ATTR.tenantId]: TENANT,
      [ATTR.outcome]: 'cleared',
      [ATTR.keysDropped]: 1,
      [ATTR.cacheCleared]: true,
    });
  });

  it('traces the expiry sweep, with the revocation of each page inside', async () => {
    await newToken({ expiresAt: '2020-01-01T00:00:00' });
    expect(await app.get(ApiTokenExpirySweep).sweep()).toBe(1);
    const sweep = only(SPAN.expirySweep);
    expect(sweep.attributes).toEqual({ [ATTR.trigger]: 'timer', [ATTR.outcome]: 'completed', [ATTR.expiredRemoved]: 1 });
    const [revoke] = childrenOf(sweep, SPAN.revoke);
    expect(revoke.attributes).toMatchObject({ [ATTR.target]: 'id', [ATTR.rows]: 1 });
  });

  it('traces a read of the revocation log that found entries, and no empty one', async () => {
    const log = app.get(ApiTokenRevocationLogService);
    await log.poll(); // the first read (what start-up does): every entry still inside the window
    const first = named(SPAN.revocationLogRead);
    expect(first.map((span) => span.attributes[ATTR.initial])).toEqual([true]);
    tracing.reset();
    await log.poll();
    expect(named(SPAN.revocationLogRead)).toEqual([]);

    const { token } = await newToken();
    await tokens.revoke(token);
    await tokens.setRateLimit(token, null); // no row any more: nothing changes, nothing logged
    tracing.reset();
    await log.poll();
    expect(only(SPAN.revocationLogRead).attributes).toEqual({
      [ATTR.revocations]: 1,
      [ATTR.policyChanges]: 0,
      [ATTR.initial]: false,
      // The token's key in its scope and in no scope.
      [ATTR.keysDropped]: 2,
    });
  });

  it('puts no piece of any token in a span name, attribute, event or status', () => {
    // The scan must see spans of every kind, or it proves little.
    expect(new Set(exported.map((span) => span.name))).toEqual(new Set(Object.values(SPAN)));
    expect(secrets.length).toBeGreaterThan(10);
    expect(tokenPieces(spanText(exported), secrets)).toEqual([]);
  });
});
