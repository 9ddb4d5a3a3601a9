import type { INestApplication } from '@nestjs/common';
import { createHash } from 'node:crypto';
import { ApiTokenMetrics, ApiTokenService, type ApiTokenModuleOptions } from '../libs/api-token/src';
import { FAILED_ATTEMPT_KEY_PREFIX, failedAttemptKey } from '../libs/api-token/src/api-token.keys';
import { ApiTokenFailedAttemptLimiter } from '../libs/api-token/src/limits/failed-attempt-limiter.service';
import { FAILED_ATTEMPT_ERRORS } from '../libs/api-token/src/limits/rate-limit.errors';
import { windowIndex } from '../libs/api-token/src/limits/rate-limit.policy';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type request from 'supertest';
import { whoami } from './support/requests';
import { suiteFixture } from './support/suite-fixture';

const WINDOW_SECONDS = 60;
const CLIENT_HEADER = 'x-test-client';
/** Reconciliations only when a test flushes: the counts each instance knows are the test's to drive. */
const NEVER_ON_ITS_OWN_MS = 60_000;

/** `whoami` as the client `client` (the test's `clientKey` reads it from a header). */
const as = (app: INestApplication, client: string, token: string) => whoami(app, token).set(CLIENT_HEADER, client);
const flush = (...apps: INestApplication[]) => Promise.all(apps.map((app) => app.get(ApiTokenFailedAttemptLimiter).flush()));
const limitedCount = (app: INestApplication) => app.get(ApiTokenMetrics).snapshot().scopes.app?.failedAttemptsLimited ?? 0;
/**
 * Sends `send` and checks its Retry-After: the whole seconds from the answer to the window's end, read
 * on the driven clock before and after the request (which a loaded machine may stretch past a second).
 */
async function refusedUntilWindowEnd(send: () => PromiseLike<request.Response>, windowEnd: number): Promise<request.Response> {
  const before = Date.now();
  const answer = await send();
  const after = Date.now();
  expect(answer.status).toBe(429);
  const retryAfter = Number(answer.headers['retry-after']);
  expect(retryAfter).toBeGreaterThanOrEqual(Math.ceil((windowEnd - after) / 1000));
  expect(retryAfter).toBeLessThanOrEqual(Math.ceil((windowEnd - before) / 1000));
  return answer;
}
const databaseLookups = (app: INestApplication) => {
  const counts = app.get(ApiTokenMetrics).snapshot().scopes.app?.databaseLookups;
  return counts ? counts.found + counts.not_found + counts.error : 0;
};

describe('failed authentications per client (failedAttemptLimit)', () => {
  const suite = suiteFixture();
  let offset = 0;
  let windowStart = 0;

  // The clock is driven: a window well ahead of the real one, 30 s in, so no window ends during a test.
  beforeEach(() => {
    const realNow = Date.now.bind(Date);
    const windowMs = WINDOW_SECONDS * 1000;
    windowStart = (Math.floor(realNow() / windowMs) + 10) * windowMs;
    offset = windowStart + 30_000 - realNow();
    jest.spyOn(Date, 'now').mockImplementation(() => realNow() + offset);
  });
  afterEach(() => jest.restoreAllMocks());
  const windowEnd = () => windowStart + WINDOW_SECONDS * 1000;

  describe('two instances sharing Redis, the client named by a header', () => {
    let a: INestApplication;
    let b: INestApplication;
    const options: ApiTokenModuleOptions = {
      failedAttemptLimit: {
        limit: 4,
        windowSeconds: WINDOW_SECONDS,
        clientKey: (request) => {
          const value = request.headers[CLIENT_HEADER];
          return typeof value === 'string' ? value : undefined;
        },
      },
      rateLimitSyncIntervalMs: NEVER_ON_ITS_OWN_MS,
    };
    beforeAll(async () => {
      a = await suite.app({ apiToken: options });
      b = await suite.app({ apiToken: options });
    });

    it('failures on both instances reach the limit: 429 with Retry-After on both, before any lookup', async () => {
      // Unknown and malformed tokens both count, on either instance.
      expect((await as(a, 'c1', generateApiToken('app'))).status).toBe(401);
      expect((await as(a, 'c1', 'not a token!')).status).toBe(401);
      expect((await as(b, 'c1', generateApiToken('app'))).status).toBe(401);
      expect((await as(b, 'c1', `${generateApiToken('app')}*`)).status).toBe(401);
      // Each instance adds what it counted to Redis: a first (the total is 2), then b (4, the limit).
      await flush(a, b);
      expect(Number(await suite.redis.get(keyOf('c1')))).toBe(4);

      const lookups = databaseLookups(b);
      // Until the window ends: about 30 s on the driven clock.
      const refused = await refusedUntilWindowEnd(() => as(b, 'c1', generateApiToken('app')), windowEnd());
      expect(refused.body).toEqual({ statusCode: 429, message: FAILED_ATTEMPT_ERRORS.exceeded, error: 'Too Many Requests' });
      expect(databaseLookups(b)).toBe(lookups);
      expect(limitedCount(b)).toBe(1);

      // a learnt 2 when it sent its count: like an approximate rate limit, it lets failures through
      // until its next reconciliation tells it the total (here one), then refuses too.
      expect((await as(a, 'c1', generateApiToken('app'))).status).toBe(401);
      await flush(a);
      expect(Number(await suite.redis.get(keyOf('c1')))).toBe(5);
      await refusedUntilWindowEnd(() => as(a, 'c1', generateApiToken('app')), windowEnd());

      // Over its limit, the client's valid token not held in memory is refused too, without a lookup.
      const { token } = await a.get(ApiTokenService).create({ scope: 'app' });
      const before = databaseLookups(a);
      expect((await as(a, 'c1', token)).status).toBe(429);
      expect(databaseLookups(a)).toBe(before);

      // The next window starts from zero.
      offset += WINDOW_SECONDS * 1000;
      expect((await as(a, 'c1', token)).status).toBe(200);
      expect((await as(b, 'c1', generateApiToken('app'))).status).toBe(401);
    });

    it('never counts a success, and a client over its limit leaves the others alone', async () => {
      const tokens = a.get(ApiTokenService);
      const { token } = await tokens.create({ scope: 'app' });
      for (let i = 0; i < 3; i++) {
        expect((await as(a, 'c2', generateApiToken('app'))).status).toBe(401);
        // From the database, then Redis, then the in-process cache: none is counted.
        expect((await as(a, 'c2', token)).status).toBe(200);
        expect((await as(b, 'c2', token)).status).toBe(200);
      }
      await flush(a, b);
      expect(Number(await suite.redis.get(keyOf('c2')))).toBe(3);
      expect((await as(b, 'c2', generateApiToken('app'))).status).toBe(401);
      await flush(b);
      expect(Number(await suite.redis.get(keyOf('c2')))).toBe(4);
      expect((await as(b, 'c2', generateApiToken('app'))).status).toBe(429);

      // Another client, its valid token neither instance has seen: let in on both.
      const other = await tokens.create({ scope: 'app' });
      expect((await as(b, 'c3', other.token)).status).toBe(200);
      expect((await as(a, 'c3', other.token)).status).toBe(200);
      // And the limited client's token the instance holds in memory: a hit costs the limiter nothing.
      expect((await as(a, 'c2', token)).status).toBe(200);
      // A request without a client key is not counted (nor limited).
      expect((await whoami(b, generateApiToken('app'))).status).toBe(401);
      expect((await whoami(b, other.token)).status).toBe(200);
    });
  });

  describe('the key in Redis', () => {
    it('is a hash of the client key, never the key itself, whatever clientKey returns', async () => {
      // A careless clientKey that returns the Authorization header, token and all.
      const app = await suite.app({
        apiToken: {
          failedAttemptLimit: { limit: 2, windowSeconds: WINDOW_SECONDS, clientKey: (request) => String(request.headers.authorization) },
          rateLimitSyncIntervalMs: NEVER_ON_ITS_OWN_MS,
        },
      });
      const token = generateApiToken('app');
      expect((await whoami(app, token)).status).toBe(401);
      await flush(app);
      const keys = await suite.redis.keys(`${FAILED_ATTEMPT_KEY_PREFIX}:*`);
      expect(keys).toContain(keyOf(`Bearer ${token}`));
      for (const key of keys) expect(key).not.toContain(token.slice(4, 12));
    });
  });

  describe.each([
    ['express', 'nest'],
    ['fastify', 'dify'],
  ] as const)('the default client key on %s, %s refusals', (adapter, errorFormat) => {
    it("is the request's address; the refusal takes the errorFormat shape", async () => {
      const app = await suite.app({
        adapter,
        apiToken: { errorFormat, failedAttemptLimit: { limit: 2, windowSeconds: WINDOW_SECONDS }, rateLimitSyncIntervalMs: NEVER_ON_ITS_OWN_MS },
      });
      expect((await whoami(app, generateApiToken('app'))).status).toBe(401);
      expect((await whoami(app, generateApiToken('app'))).status).toBe(401);
      // Counted in this instance: its own count refuses the next attempt, before Redis has heard of it.
      const refused = await refusedUntilWindowEnd(() => whoami(app, generateApiToken('app')), windowEnd());
      expect(refused.body).toEqual(
        errorFormat === 'dify'
          ? { code: 'too_many_requests', message: FAILED_ATTEMPT_ERRORS.exceeded, status: 429 }
          : { statusCode: 429, message: FAILED_ATTEMPT_ERRORS.exceeded, error: 'Too Many Requests' },
      );
    });
  });

  /** The window's Redis key of a client, as the limiter names it. */
  function keyOf(client: string): string {
    const hash = createHash('sha256').update(client.length > 64 ? createHash('sha256').update(client).digest('hex') : client).digest('hex');
    return failedAttemptKey(hash.slice(0, 32), WINDOW_SECONDS, windowIndex(windowStart, WINDOW_SECONDS));
  }
});
