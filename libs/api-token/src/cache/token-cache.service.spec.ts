import { ApiTokenCacheService } from './token-cache.service';
import { resolveApiTokenOptions } from '../api-token.options';
import { UNCONFIRMED, type ApiTokenRedisService } from '../redis/redis-access.service';
import type { ApiTokenRecord } from '../store/api-token.record';

const record: ApiTokenRecord = {
  id: '00000000-0000-4000-8000-000000000001',
  appId: null,
  tenantId: null,
  type: 'app',
  token: 'app-abcdefghijklmnopqrstuvwx',
  lastUsedAt: null,
  createdAt: '2026-01-01T00:00:00',
};

/** A cache over a Redis that never confirms anything: what a fill leaves in L1 is all there is to see. */
function setup() {
  const redis = { attempt: async () => UNCONFIRMED, call: async () => undefined } as unknown as ApiTokenRedisService;
  return new ApiTokenCacheService(redis, resolveApiTokenOptions({ localCacheTtlMs: 1000 }));
}

describe('ApiTokenCacheService.fill (in-process part)', () => {
  it("counts an entry's life from before the read that produced it, not from the write", async () => {
    const cache = setup();
    const started = cache.localClock();
    expect(await cache.fill('app', record.token, record, UNCONFIRMED, cache.localEpoch, started)).toBe('unconfirmed');
    expect(cache.lookupLocal('app', record.token).status).toBe('hit');

    // A lookup that began more than localCacheTtlMs ago (it raced a revocation, its message lost) is already stale.
    await cache.fill('app', record.token, record, UNCONFIRMED, cache.localEpoch, cache.localClock() - 1001);
    expect(cache.lookupLocal('app', record.token).status).toBe('miss');
  });

  it('keeps out of L1 a fill that an eviction overlapped', async () => {
    const cache = setup();
    const epoch = cache.localEpoch;
    const started = cache.localClock();
    cache.evictLocal([`api_token:app:${record.token}`]);
    await cache.fill('app', record.token, record, UNCONFIRMED, epoch, started);
    expect(cache.lookupLocal('app', record.token).status).toBe('miss');
  });
});
