import { ApiTokenUsageRecorder } from './usage.recorder';
import { resolveApiTokenOptions } from '../api-token.options';
import type { ApiTokenRedisService } from '../redis/redis-access.service';

describe('ApiTokenUsageRecorder', () => {
  afterEach(() => jest.useRealTimers());

  it('coalesces a burst of uses behind one timer, and starts no other (lru-cache clock timers cost every busy millisecond)', async () => {
    jest.useFakeTimers();
    const redis = { call: async () => [] };
    const recorder = new ApiTokenUsageRecorder(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({}));
    for (let i = 0; i < 5; i++) recorder.record('app', 'app-aaaaaaaaaaaaaaaaaaaaaaaa');
    expect(jest.getTimerCount()).toBe(1);
    await recorder.flushPending();
    expect(jest.getTimerCount()).toBe(0);
  });
});
