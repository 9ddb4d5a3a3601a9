import { ApiTokenScopeSweep } from './scope.sweep';
import type { ApiTokenCacheService } from './token-cache.service';

/** A sweep over a cache stub whose every slice walks the whole keyspace at once; `walks` keeps each walk's tokens. */
function sweepOverStub() {
  const walks: string[][] = [];
  const cache = { sweepSlice: async (tokens: ReadonlyMap<string, unknown>) => (walks.push([...tokens.keys()]), true) };
  return { sweep: new ApiTokenScopeSweep(cache as unknown as ApiTokenCacheService), walks };
}

describe('ApiTokenScopeSweep', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('sweeps a burst of revocations in one walk, once they have paused for 250 ms', async () => {
    const { sweep, walks } = sweepOverStub();
    for (const token of ['a', 'b', 'c']) {
      sweep.enqueue(token, ['app']);
      await jest.advanceTimersByTimeAsync(200);
    }
    expect(walks).toEqual([]);
    await jest.advanceTimersByTimeAsync(50);
    expect(walks).toEqual([['a', 'b', 'c']]);
  });

  it('starts the walk 5 s after the first token however long the revocations go on', async () => {
    const { sweep, walks } = sweepOverStub();
    for (let i = 0; i < 24; i++) {
      sweep.enqueue(`t${i}`, ['app']);
      await jest.advanceTimersByTimeAsync(200);
    }
    expect(walks).toEqual([]); // 4.8 s
    sweep.enqueue('t24', ['app']);
    await jest.advanceTimersByTimeAsync(200);
    expect(walks).toHaveLength(1);
    expect(walks[0]).toHaveLength(25);
    sweep.onApplicationShutdown();
  });
});
