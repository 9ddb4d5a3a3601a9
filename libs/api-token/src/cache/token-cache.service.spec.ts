import { ApiTokenCacheService } from './token-cache.service';
import { resolveApiTokenOptions } from '../api-token.options';
import { cacheKey } from '../api-token.keys';
import { type ApiTokenRecord, serializeRecord } from '../store/api-token.record';
import { UNCONFIRMED, type ApiTokenRedisService } from '../redis/redis-access.service';

const record: ApiTokenRecord = {
  id: '00000000-0000-4000-8000-000000000001',
  appId: null,
  tenantId: null,
  type: 'app',
  token: 'app-aaaaaaaaaaaaaaaaaaaaaaaa',
  lastUsedAt: null,
  createdAt: '2026-01-01T00:00:00',
};

/** The cache in front of a Redis stub that holds `record` (pure L1 logic: no connection needed). */
function withRecordInRedis() {
  const redis = { call: async (_op: string, run: (r: unknown) => unknown) => run({ get: async () => serializeRecord(record) }) };
  return new ApiTokenCacheService(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({}));
}

describe('ApiTokenCacheService in-process hits', () => {
  afterEach(() => jest.useRealTimers());

  it('hand every hit the same frozen identity, built when the entry is written; an eviction drops it', async () => {
    const cache = withRecordInRedis();
    await cache.lookupRedis('app', record.token);
    const first = cache.peekLocal('app', record.token);
    const second = cache.peekLocal('app', record.token);
    expect(first?.identity).toEqual({ id: record.id, appId: null, tenantId: null, scope: 'app' });
    expect(second?.identity).toBe(first?.identity);
    expect(Object.isFrozen(first?.identity)).toBe(true);

    cache.evictLocal([cacheKey('app', record.token)]);
    expect(cache.peekLocal('app', record.token)).toBeUndefined();
    await cache.lookupRedis('app', record.token);
    expect(cache.peekLocal('app', record.token)?.identity).not.toBe(first?.identity);
  });

  it('read L1 by the keys kept when entries were written, per scope, and keep at most localCacheMax of them', async () => {
    const tokens = ['app-aaaaaaaaaaaaaaaaaaaaaaa1', 'app-aaaaaaaaaaaaaaaaaaaaaaa2', 'app-aaaaaaaaaaaaaaaaaaaaaaa3'];
    const redis = { call: async (_op: string, run: (r: unknown) => unknown) => run({ get: async (key: string) => serializeRecord({ ...record, token: key.slice('api_token:app:'.length) }) }) };
    const cache = new ApiTokenCacheService(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({ localCacheMax: 2 }));
    const kept = cache as unknown as { localKeyCount: number };
    for (const token of tokens) {
      await cache.lookupRedis('app', token);
      expect(cache.peekLocal('app', token)?.record.token).toBe(token);
      expect(kept.localKeyCount).toBeLessThanOrEqual(2);
    }
    // Another scope never reads this scope's entry, kept key or not.
    expect(cache.peekLocal('dataset', tokens[2])).toBeUndefined();
    expect(cache.peekLocal(null, tokens[2])).toBeUndefined();
    // A kept key whose entry was evicted is a miss.
    cache.evictLocal([cacheKey('app', tokens[2])]);
    expect(cache.peekLocal('app', tokens[2])).toBeUndefined();
  });

  it('know a token by its usual header in plain mode, and only by that; never in hashed mode', async () => {
    const cache = withRecordInRedis();
    await cache.lookupRedis('app', record.token);
    const now = cache.localClock();
    expect(cache.peekLocalHeader('app', `Bearer ${record.token}`, now)).toBe(cache.peekLocal('app', record.token, now));
    expect(cache.peekLocalHeader('app', `Bearer ${record.token}`, now)?.record).toMatchObject({ id: record.id });
    for (const header of [record.token, `bearer ${record.token}`, `Bearer  ${record.token}`, `Bearer ${record.token} `]) {
      expect(cache.peekLocalHeader('app', header, now)).toBeUndefined();
    }
    expect(cache.peekLocalHeader('dataset', `Bearer ${record.token}`, now)).toBeUndefined();
    // Past the entry's life, the header finds nothing either.
    expect(cache.peekLocalHeader('app', `Bearer ${record.token}`, now + 10 * 60_000)).toBeUndefined();

    const hashed = new ApiTokenCacheService(
      { call: async (_op: string, run: (r: unknown) => unknown) => run({ get: async () => serializeRecord(record) }) } as unknown as ApiTokenRedisService,
      resolveApiTokenOptions({ hashTokens: true }),
    );
    await hashed.lookupRedis('app', record.token);
    expect(hashed.peekLocal('app', record.token)?.record).toMatchObject({ id: record.id });
    expect(hashed.peekLocalHeader('app', `Bearer ${record.token}`, hashed.localClock())).toBeUndefined();
  });

  it('name no token by a header the guard would not read back as it (a custom pattern may allow a leading space)', async () => {
    const odd = ' app-aaaaaaaaaaaaaaaaaaaaaaaa';
    const redis = { call: async (_op: string, run: (r: unknown) => unknown) => run({ get: async () => serializeRecord({ ...record, token: odd }) }) };
    const cache = new ApiTokenCacheService(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({}));
    await cache.lookupRedis('app', odd);
    const now = cache.localClock();
    expect(cache.peekLocal('app', odd, now)?.record.token).toBe(odd);
    for (const header of [`Bearer ${odd}`, odd]) expect(cache.peekLocalHeader('app', header, now)).toBeUndefined();
  });

  it('start no timer when read (lru-cache would cache its clock behind a 1 ms timer per busy millisecond)', async () => {
    jest.useFakeTimers();
    const cache = withRecordInRedis();
    await cache.lookupRedis('app', record.token);
    for (let i = 0; i < 3; i++) cache.peekLocal('app', record.token);
    expect(jest.getTimerCount()).toBe(0);
  });
});

/** A cache over a Redis that never confirms anything: what a fill leaves in L1 is all there is to see. */
function withUnconfirmedRedis() {
  const redis = { attempt: async () => UNCONFIRMED, call: async () => undefined } as unknown as ApiTokenRedisService;
  return new ApiTokenCacheService(redis, resolveApiTokenOptions({ localCacheTtlMs: 1000 }));
}

describe('ApiTokenCacheService.fill (in-process part)', () => {
  it("counts an entry's life from before the read that produced it, not from the write", async () => {
    const cache = withUnconfirmedRedis();
    const started = cache.localClock();
    expect(await cache.fill('app', record.token, record, UNCONFIRMED, cache.localEpoch, started)).toBe('unconfirmed');
    expect(cache.peekLocal('app', record.token)?.record).toBe(record);

    // A lookup that began more than localCacheTtlMs ago (it raced a revocation, its message lost) is already stale.
    await cache.fill('app', record.token, record, UNCONFIRMED, cache.localEpoch, cache.localClock() - 1001);
    expect(cache.peekLocal('app', record.token)).toBeUndefined();
  });

  it('keeps out of L1 a fill that an eviction overlapped', async () => {
    const cache = withUnconfirmedRedis();
    const epoch = cache.localEpoch;
    const started = cache.localClock();
    cache.evictLocal([`api_token:app:${record.token}`]);
    await cache.fill('app', record.token, record, UNCONFIRMED, epoch, started);
    expect(cache.peekLocal('app', record.token)).toBeUndefined();
  });
});
