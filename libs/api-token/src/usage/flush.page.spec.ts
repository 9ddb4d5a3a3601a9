import { parseActiveEntry, takePage, usesOf } from './flush.page';

describe('parseActiveEntry', () => {
  const T = '2026-02-03T10:00:00.123000';

  it('reads scope, token and time like Dify', () => {
    expect(parseActiveEntry('api_token_active:app:app-abc', T)).toEqual({ key: 'api_token_active:app:app-abc', value: T, scope: 'app', token: 'app-abc', lastUsedAt: T });
    expect(parseActiveEntry('api_token_active:None:app-abc', T)?.scope).toBeNull();
    expect(parseActiveEntry('api_token_active:any:app-abc', T)?.scope).toBeNull();
    expect(parseActiveEntry('api_token_active:app:a:b', T)?.token).toBe('a:b');
  });

  it('normalizes the time to naive UTC', () => {
    expect(parseActiveEntry('api_token_active:app:t', '2026-02-03T11:00:00+01:00')?.lastUsedAt).toBe('2026-02-03T10:00:00');
    expect(parseActiveEntry('api_token_active:app:t', '2026-02-03 10:00:00.5Z')?.lastUsedAt).toBe('2026-02-03T10:00:00.500000');
  });

  it.each([
    ['api_token_active:app', T],
    ['api_token_active:app:', T],
    ['api_token_active::tok', T],
    ['api_token:app:tok', T],
    ['api_token_active:app:to\u0000k', T],
    ['api_token_active:app:tok', 'yesterday'],
    ['api_token_active:app:tok', '2026-02-30T10:00:00'],
    ['api_token_active:app:tok', ''],
  ])('drops %p = %p', (key, value) => {
    expect(parseActiveEntry(key, value)).toBeNull();
  });

  it('drops a time too far in the future (it would stick: updates only move forward), keeps clock skew', () => {
    const now = Date.parse('2026-02-03T10:00:00Z');
    expect(parseActiveEntry('api_token_active:app:t', '2026-02-03T10:04:59', now)?.lastUsedAt).toBe('2026-02-03T10:04:59');
    expect(parseActiveEntry('api_token_active:app:t', '2026-02-03T10:05:00', now)?.lastUsedAt).toBe('2026-02-03T10:05:00');
    expect(parseActiveEntry('api_token_active:app:t', '2026-02-03T10:05:01', now)).toBeNull();
    expect(parseActiveEntry('api_token_active:app:t', '2099-01-01T00:00:00', now)).toBeNull();
  });
});

describe('takePage', () => {
  const at = (index: string, size: number) => ({ index, cursor: '0', size });

  it('fills a page from several indexes, in order, by their sizes', () => {
    const pending = [at('a', 3), at('b', 1), at('c', 5), at('d', 2)];
    expect(takePage(pending, 6).map((s: { index: string }) => s.index)).toEqual(['a', 'b', 'c']);
    expect(pending).toEqual([at('d', 2)]);
    expect(takePage(pending, 6)).toEqual([at('d', 2)]);
    expect(pending).toEqual([]);
  });

  it('stops at a page exactly filled', () => {
    const pending = [at('a', 3), at('b', 3), at('c', 1)];
    expect(takePage(pending, 6).map((s: { index: string }) => s.index)).toEqual(['a', 'b']);
    expect(pending).toEqual([at('c', 1)]);
  });

  it('takes one large index alone', () => {
    const pending = [at('a', 2500), at('b', 1)];
    expect(takePage(pending, 1000)).toEqual([at('a', 2500)]);
    expect(pending).toEqual([at('b', 1)]);
  });
});

describe('usesOf', () => {
  const NOW = Date.parse('2026-02-03T10:00:00Z');
  const T = '2026-02-03T09:59:00.123000';

  it('counts a value read as taken, reads it as a use, and leaves a key answered with an error alone', () => {
    const stats = { taken: 0, dropped: 0 };
    const keys = ['api_token_active:app:app-a', 'api_token_active:app:app-b', 'api_token_active:app:app-c'];
    const { uses, discard } = usesOf(keys, [[null, T], [new Error('MOVED 1 127.0.0.1:7002'), null], [null, T]], stats, NOW);
    expect(uses.map((u) => u.token)).toEqual(['app-a', 'app-c']);
    expect(uses[0]).toMatchObject({ key: keys[0], value: T, scope: 'app', lastUsedAt: T });
    expect(discard).toEqual([]);
    expect(stats).toEqual({ taken: 2, dropped: 0 });
  });

  it('discards a key read as missing (only its index names it) with an empty value, not counted as taken', () => {
    const stats = { taken: 0, dropped: 0 };
    const { uses, discard } = usesOf(['api_token_active:app:app-gone'], [[null, null]], stats, NOW);
    expect(uses).toEqual([]);
    expect(discard).toEqual([{ key: 'api_token_active:app:app-gone', value: '' }]);
    expect(stats).toEqual({ taken: 0, dropped: 0 });
  });

  it('discards an unusable use with the value read, counted as taken and dropped', () => {
    const stats = { taken: 0, dropped: 0 };
    const replies: [Error | null, unknown][] = [[null, 'yesterday'], [null, '2099-01-01T00:00:00']];
    const keys = ['api_token_active:app:app-x', 'api_token_active:app:app-y'];
    const { uses, discard } = usesOf(keys, replies, stats, NOW);
    expect(uses).toEqual([]);
    expect(discard).toEqual([{ key: keys[0], value: 'yesterday' }, { key: keys[1], value: '2099-01-01T00:00:00' }]);
    expect(stats).toEqual({ taken: 2, dropped: 2 });
  });

  it('reads a Buffer or number reply as its text', () => {
    const stats = { taken: 0, dropped: 0 };
    const { uses } = usesOf(['api_token_active:app:app-a'], [[null, Buffer.from(T)]], stats, NOW);
    expect(uses[0]?.lastUsedAt).toBe(T);
  });
});
