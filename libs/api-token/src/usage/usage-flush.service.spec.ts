import { resolveApiTokenOptions } from '../api-token.options';
import { DEFAULT_FLUSH_CRON, longestCronGapSeconds, MAX_FLUSH_GAP_SECONDS } from './flush.schedule';
import { parseActiveEntry, takePage } from './usage-flush.service';

describe('longestCronGapSeconds', () => {
  it.each([
    ['* * * * * *', 1],
    [DEFAULT_FLUSH_CRON, 60],
    ['*/30 * * * * *', 30],
    ['0 */15 * * * *', 900],
    ['0 0,50 * * * *', 50 * 60],
    ['10,20 * * * * *', 50],
    ['*/5 * * * *', 300],
    ['0 0 * * * *', 3600],
    ['0 * 9-17 * * *', Infinity],
    ['0 * * * * 1-5', Infinity],
    ['*/10 * * 1 * *', Infinity],
  ])('%s → %p s', (expression, gap) => {
    expect(longestCronGapSeconds(expression)).toBe(gap);
  });

  it('throws on an invalid expression', () => {
    expect(() => longestCronGapSeconds('every minute')).toThrow();
  });
});

describe('option flushCron', () => {
  it('defaults to every minute and accepts false and frequent schedules', () => {
    expect(resolveApiTokenOptions().flushCron).toBe(DEFAULT_FLUSH_CRON);
    expect(resolveApiTokenOptions({ flushCron: false }).flushCron).toBe(false);
    expect(resolveApiTokenOptions({ flushCron: '*/5 * * * * *' }).flushCron).toBe('*/5 * * * * *');
    expect(resolveApiTokenOptions({ flushCron: '0 */15 * * * *' }).flushCron).toBe('0 */15 * * * *');
  });

  it.each([
    ['0 */20 * * * *', /flushCron.*1200 s between flushes.*every 900 s.*3600 s/],
    ['0 0 * * * *', /flushCron.*3600 s between flushes/],
    ['0 * 9-17 * * *', /flushCron.*whole hours or days/],
    ['not a cron', /flushCron.*not a valid cron expression/],
    ['', /flushCron.*must be a cron expression or false/],
    [true, /flushCron.*must be a cron expression or false/],
  ])('refuses %p, naming the option', (flushCron, message) => {
    expect(() => resolveApiTokenOptions({ flushCron: flushCron as string })).toThrow(message);
  });

  it('keeps the limit well under the active key life', () => {
    expect(MAX_FLUSH_GAP_SECONDS).toBe(900);
  });
});

describe('option flushPageSize', () => {
  it.each([0, 1.5, -1])('refuses %p', (flushPageSize) => {
    expect(() => resolveApiTokenOptions({ flushPageSize })).toThrow(/flushPageSize.*>= 1/);
  });
});

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
    expect(parseActiveEntry('api_token_active:app:t', '2026-02-03T10:05:01', now)).toBeNull();
    expect(parseActiveEntry('api_token_active:app:t', '2099-01-01T00:00:00', now)).toBeNull();
  });
});

describe('takePage', () => {
  const at = (index: string, size: number) => ({ index, cursor: '0', size });

  it('fills a page from several indexes, in order, by their sizes', () => {
    const pending = [at('a', 3), at('b', 1), at('c', 5), at('d', 2)];
    expect(takePage(pending, 6).map((s) => s.index)).toEqual(['a', 'b', 'c']);
    expect(pending).toEqual([at('d', 2)]);
    expect(takePage(pending, 6)).toEqual([at('d', 2)]);
    expect(pending).toEqual([]);
  });

  it('takes one large index alone', () => {
    const pending = [at('a', 2500), at('b', 1)];
    expect(takePage(pending, 1000)).toEqual([at('a', 2500)]);
    expect(pending).toEqual([at('b', 1)]);
  });
});
