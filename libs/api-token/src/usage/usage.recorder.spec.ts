import { ApiTokenUsageRecorder } from './usage.recorder';
import { resolveApiTokenOptions } from '../api-token.options';
import { type ApiTokenRedisService, UNCONFIRMED } from '../redis/redis-access.service';

/** What the recorder hands the Redis stub: a write, given the client. */
type Write = (redis: unknown) => Promise<unknown>;

/** A recorder over a Redis stub that keeps the arguments of each write, with fake timers from `now`. */
function recordingAt(now: number) {
  jest.useFakeTimers({ now });
  const written: string[][] = [];
  // The recorder names each key in the flush's index too (the second key); the stub keeps key, time, TTL.
  const client = {
    apiTokenSetIfNewer: async (...args: unknown[]) => (written.push(args.map(String)), 1),
    apiTokenSetIfNewerIndexed: async (key: unknown, _index: unknown, ...rest: unknown[]) => (written.push([key, ...rest].map(String)), 1),
  };
  const redis = { backgroundCall: async (_op: string, write: Write) => write(client) };
  const recorder = new ApiTokenUsageRecorder(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({}));
  return { recorder, written, key: 'api_token_active:app:app-aaaaaaaaaaaaaaaaaaaaaaaa' };
}

describe('ApiTokenUsageRecorder', () => {
  afterEach(() => jest.useRealTimers());

  it('coalesces a burst of uses behind one timer, and starts no other (lru-cache clock timers cost every busy millisecond)', async () => {
    jest.useFakeTimers();
    const redis = { backgroundCall: async () => [] };
    const recorder = new ApiTokenUsageRecorder(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({}));
    for (let i = 0; i < 5; i++) recorder.record('app', 'app-aaaaaaaaaaaaaaaaaaaaaaaa');
    expect(jest.getTimerCount()).toBe(1);
    await recorder.flushPending();
    expect(jest.getTimerCount()).toBe(0);
  });

  it('flushPending() waits for a first use\'s write still under way, so a flush that follows finds it', async () => {
    let answer: (() => void) | undefined;
    const client = {
      apiTokenSetIfNewer: () => Promise.resolve(1),
      apiTokenSetIfNewerIndexed: () => new Promise<number>((resolve) => (answer = () => resolve(1))),
    };
    const redis = { backgroundCall: async (_op: string, write: Write) => write(client) };
    const recorder = new ApiTokenUsageRecorder(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({}));
    recorder.record('app', 'app-aaaaaaaaaaaaaaaaaaaaaaaa'); // written at once: the write is in flight
    let flushed = false;
    const flushing = recorder.flushPending().then(() => (flushed = true));
    await new Promise((resolve) => setImmediate(resolve));
    expect(flushed).toBe(false);
    answer!();
    await flushing;
    expect(flushed).toBe(true);
  });

  it('shutdown waits for a write the timer started (its uses are not pending any more while it runs)', async () => {
    jest.useFakeTimers();
    let answer: (() => void) | undefined;
    let calls = 0;
    const client = { apiTokenSetIfNewer: () => Promise.resolve(1), apiTokenSetIfNewerIndexed: () => Promise.resolve(1) };
    const redis = {
      // The first write (a first use) answers; the timer's write hangs until the test answers it.
      backgroundCall: (_op: string, write: Write) => (++calls === 1 ? write(client) : new Promise((resolve) => (answer = () => resolve(write(client))))),
    };
    const recorder = new ApiTokenUsageRecorder(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({}));
    const key = 'api_token_active:app:app-aaaaaaaaaaaaaaaaaaaaaaaa';
    recorder.recordKey(key, performance.now()); // written at once
    await recorder.flushPending();
    recorder.recordKey(key, performance.now()); // waits for the timer
    await jest.advanceTimersByTimeAsync(1000); // the timer's write starts, and hangs
    expect(answer).toBeDefined();
    let closed = false;
    const closing = recorder.beforeApplicationShutdown().then(() => (closed = true));
    await jest.advanceTimersByTimeAsync(0);
    expect(closed).toBe(false);
    answer!();
    await closing;
    expect(closed).toBe(true);
  });

  it('a token already waiting for the timer costs no LRU read per use, and the timer writes its newest time once', async () => {
    const { recorder, written, key } = recordingAt(Date.UTC(2026, 1, 3, 10, 0, 0));
    recorder.recordKey(key, performance.now()); // written at once
    recorder.recordKey(key, performance.now()); // now waits for the timer
    const recent = (recorder as unknown as { recent: { has: (key: string) => boolean } }).recent;
    const has = jest.spyOn(recent, 'has');
    jest.advanceTimersByTime(400);
    recorder.recordKey(key, performance.now());
    expect(has).not.toHaveBeenCalled();
    expect(jest.getTimerCount()).toBe(1);
    await recorder.flushPending();
    expect(written.at(-1)?.join(' ')).toContain('2026-02-03T10:00:00.400000');
  });

  it('dates a pending use by the wall clock of its time: a clock step (or a suspended host) before the write does not move it', async () => {
    const { recorder, written, key } = recordingAt(Date.UTC(2026, 1, 3, 10, 0, 0));
    recorder.recordKey(key, performance.now()); // written at once
    jest.advanceTimersByTime(200);
    recorder.recordKey(key, performance.now()); // waits for the timer: 10:00:00.200
    // The wall clock steps ten minutes ahead; the monotonic clock does not.
    jest.setSystemTime(Date.UTC(2026, 1, 3, 10, 10, 0, 200));
    await recorder.flushPending();
    expect(written.at(-1)?.join(' ')).toContain('2026-02-03T10:00:00.200000');
  });

  it('after a failed write, a newer use that came in meanwhile wins over the older time it retries', async () => {
    jest.useFakeTimers({ now: Date.UTC(2026, 1, 3, 10, 0, 0) });
    const written: string[] = [];
    let fail: (() => void) | undefined;
    // The recorder names each key in the flush's index too (the indexed script's second key).
    const client = {
      apiTokenSetIfNewer: async (_key: string, value: string) => (written.push(value), 1),
      apiTokenSetIfNewerIndexed: async (_key: string, _index: string, value: string) => (written.push(value), 1),
    };
    const redis = {
      // The first write (the first use, written at once) waits until the test lets it fail; later ones answer.
      backgroundCall: (_op: string, write: Write) =>
        fail === undefined && written.length === 0
          ? new Promise((resolve) => (fail = () => resolve(UNCONFIRMED)))
          : write(client),
    };
    const recorder = new ApiTokenUsageRecorder(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({}));
    const key = 'api_token_active:app:app-aaaaaaaaaaaaaaaaaaaaaaaa';
    recorder.recordKey(key, performance.now()); // 10:00:00.000, its write under way
    jest.advanceTimersByTime(300);
    recorder.recordKey(key, performance.now()); // 10:00:00.300, pending for the timer
    fail!(); // the write of 10:00:00.000 fails: it goes back to pending, where the newer use already is
    await Promise.resolve();
    await Promise.resolve();
    await recorder.flushPending();
    expect(written).toEqual(['2026-02-03T10:00:00.300000']);
  });

  it('after a failed write, the retried time wins over an older pending one', async () => {
    jest.useFakeTimers({ now: Date.UTC(2026, 1, 3, 10, 0, 0) });
    const written: string[] = [];
    // The recorder names each key in the flush's index too (the indexed script's second key).
    const client = {
      apiTokenSetIfNewer: async (_key: string, value: string) => (written.push(value), 1),
      apiTokenSetIfNewerIndexed: async (_key: string, _index: string, value: string) => (written.push(value), 1),
    };
    let down = true;
    const redis = { backgroundCall: async (_op: string, write: Write) => (down ? UNCONFIRMED : write(client)) };
    const recorder = new ApiTokenUsageRecorder(redis as unknown as ApiTokenRedisService, resolveApiTokenOptions({}));
    const key = 'api_token_active:app:app-aaaaaaaaaaaaaaaaaaaaaaaa';
    recorder.recordKey(key, performance.now()); // written at once, refused: pending at 10:00:00.000
    await Promise.resolve();
    jest.advanceTimersByTime(250);
    recorder.recordKey(key, performance.now()); // moves the pending use to 10:00:00.250
    await recorder.flushPending(); // refused again: 10:00:00.250 stays pending
    down = false;
    await recorder.flushPending();
    expect(written).toEqual(['2026-02-03T10:00:00.250000']);
  });
});
