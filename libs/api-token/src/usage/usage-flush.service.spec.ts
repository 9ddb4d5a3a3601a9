import { resolveApiTokenOptions } from '../api-token.options';
import { DEFAULT_FLUSH_CRON, longestCronGapSeconds, MAX_FLUSH_GAP_SECONDS } from './flush.schedule';

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
