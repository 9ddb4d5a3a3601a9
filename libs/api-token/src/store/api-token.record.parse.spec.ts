import type * as RecordModule from './api-token.record';
import { type ApiTokenRecord, formatNaiveUtc, parseRecord, serializeRecord, toNaiveUtc } from './api-token.record';

/**
 * The module loaded afresh inside the test: its module-level values (the datetime pattern, the arrow
 * functions) are then evaluated while the test runs, so a change to them is seen by this test (and
 * mutation testing counts them as covered by it, not only by whichever test happened to load the module).
 */
function fresh(): typeof RecordModule {
  let loaded: typeof RecordModule | undefined;
  jest.isolateModules(() => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    loaded = require('./api-token.record') as typeof RecordModule;
  });
  return loaded!;
}

const record: ApiTokenRecord = {
  id: '11111111-2222-4333-8444-555555555555',
  appId: 'app-1',
  tenantId: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
  type: 'app',
  token: 'app-abc',
  lastUsedAt: '2026-02-03T10:00:00.123000',
  createdAt: '2026-01-01T00:00:00',
  expiresAt: '2026-03-01T00:00:00',
  rateLimit: { limit: 100, windowSeconds: 60 },
  expiresAtMs: Date.UTC(2026, 2, 1),
};

/** The cached JSON of `record` with some fields replaced (undefined: removed). */
const entry = (changes: Record<string, unknown>): string => {
  const fields = { ...(JSON.parse(serializeRecord(record)) as Record<string, unknown>), ...changes };
  for (const [name, value] of Object.entries(changes)) if (value === undefined) delete fields[name];
  return JSON.stringify(fields);
};

describe('datetimes read as naive UTC (module loaded afresh)', () => {
  it.each([
    ['2026-02-03T10:00:00', '2026-02-03T10:00:00'],
    ['2026-02-03 10:00:00', '2026-02-03T10:00:00'],
    ['2026-12-31T23:59:59.999999', '2026-12-31T23:59:59.999999'],
    ['2026-02-03T10:00:00.000005', '2026-02-03T10:00:00.000005'],
    ['2026-02-03T10:00:00.001', '2026-02-03T10:00:00.001000'],
    ['2026-02-03T10:00:00.123456789', '2026-02-03T10:00:00.123456'],
    ['2026-02-03T10:00:00Z', '2026-02-03T10:00:00'],
    ['2026-02-03T11:30:00+01:30', '2026-02-03T10:00:00'],
    ['2026-02-03T11:30:00+0130', '2026-02-03T10:00:00'],
    ['2026-02-03T08:00:00-02:00', '2026-02-03T10:00:00'],
    // An offset that moves the datetime to another UTC day is valid.
    ['2026-02-04T00:30:00+01:00', '2026-02-03T23:30:00'],
    ['2026-02-03T23:30:00-01:00', '2026-02-04T00:30:00'],
  ])('reads %s as %s', (input, output) => {
    expect(fresh().toNaiveUtc(input)).toBe(output);
  });

  it.each([
    ['text before the date', 'x2026-02-03T10:00:00'],
    ['text after the date', '2026-02-03T10:00:00x'],
    ['text after the offset', '2026-02-03T10:00:00+01:00x'],
    ['a two-digit year', '26-02-03T10:00:00'],
    ['a one-digit month', '2026-2-03T10:00:00'],
    ['a one-digit day', '2026-02-3T10:00:00'],
    ['a one-digit hour', '2026-02-03T9:00:00'],
    ['a one-digit minute', '2026-02-03T10:0:00'],
    ['a one-digit second', '2026-02-03T10:00:0'],
    ['another separator', '2026-02-03X10:00:00'],
    ['a letter in the year', '2O26-02-03T10:00:00'],
    ['a letter in the month', '2026-O2-03T10:00:00'],
    ['a letter in the day', '2026-02-O3T10:00:00'],
    ['a letter in the hour', '2026-02-03T1O:00:00'],
    ['a letter in the minute', '2026-02-03T10:O0:00'],
    ['a letter in the second', '2026-02-03T10:00:O0'],
    ['a letter in the fraction', '2026-02-03T10:00:00.5x'],
    ['an empty fraction', '2026-02-03T10:00:00.'],
    ['a ten-digit fraction', '2026-02-03T10:00:00.1234567890'],
    ['an offset without a sign', '2026-02-03T10:00:00 01:00'],
    ['a one-digit offset hour', '2026-02-03T10:00:00+1:00'],
    ['a one-digit offset minute', '2026-02-03T10:00:00+01:0'],
    ['the 30th of February', '2026-02-30T10:00:00'],
    ['a 13th month', '2026-13-05T10:00:00'],
    ['a day 0', '2026-02-00T10:00:00'],
  ])('refuses %s', (_name, input) => {
    expect(fresh().toNaiveUtc(input)).toBeNull();
  });

  it('pads microseconds to six digits and writes none when they are zero', () => {
    expect(formatNaiveUtc(new Date(Date.UTC(2026, 1, 3, 10)), 5)).toBe('2026-02-03T10:00:00.000005');
    expect(formatNaiveUtc(new Date(Date.UTC(2026, 1, 3, 10)), 0)).toBe('2026-02-03T10:00:00');
    expect(formatNaiveUtc(new Date(Date.UTC(2026, 1, 3, 10, 0, 0, 7)))).toBe('2026-02-03T10:00:00.007000');
  });

  it('reads naive UTC as Unix milliseconds, microseconds cut', () => {
    const { naiveUtcToMs } = fresh();
    expect(naiveUtcToMs('2026-02-03T10:00:00')).toBe(Date.UTC(2026, 1, 3, 10));
    expect(naiveUtcToMs('2026-02-03T10:00:00.250999')).toBe(Date.UTC(2026, 1, 3, 10, 0, 0, 250));
  });

  it('gives the identity of a record, frozen, its scope the type', () => {
    const identity = fresh().toAuthenticated(record);
    expect(identity).toEqual({ id: record.id, appId: 'app-1', tenantId: record.tenantId, scope: 'app' });
    expect(Object.isFrozen(identity)).toBe(true);
  });
});

describe('cached JSON: each field checked', () => {
  it('round-trips a record with an app, a policy and every date', () => {
    expect(fresh().parseRecord(serializeRecord(record))).toEqual(record);
  });

  it.each([
    ['no app, no tenant, never used, no creation date', { app_id: null, tenant_id: null, last_used_at: null, created_at: null }],
    ['the optional fields absent', { app_id: undefined, tenant_id: undefined, last_used_at: undefined, created_at: undefined }],
  ])('reads an entry with %s', (_name, changes) => {
    expect(fresh().parseRecord(entry(changes))).toEqual({ ...record, appId: null, tenantId: null, lastUsedAt: null, createdAt: null });
  });

  it('reads an entry without expiry', () => {
    expect(parseRecord(entry({ expires_at: null }))).toEqual({ ...record, expiresAt: null, expiresAtMs: null });
  });

  it.each([
    ['JSON null spelled with a space', ' null'],
    ['a number', '5'],
    ['an array', '[]'],
    ['not JSON', '{"id"'],
  ])('takes %s for unreadable, without throwing', (_name, raw) => {
    expect(fresh().parseRecord(raw)).toBeUndefined();
  });

  it.each([
    ['no id', { id: undefined }],
    ['a numeric id', { id: 5 }],
    ['no type', { type: undefined }],
    ['a numeric type', { type: 5 }],
    ['no token', { token: undefined }],
    ['a numeric token', { token: 5 }],
    ['a numeric app', { app_id: 5 }],
    ['a numeric tenant', { tenant_id: 5 }],
    ['a numeric last use', { last_used_at: 5 }],
    ['a numeric creation date', { created_at: 5 }],
    ['an unreadable last use', { last_used_at: 'soon' }],
    ['an unreadable creation date', { created_at: 'soon' }],
    ['an unreadable expiry', { expires_at: '2026-02-30T00:00:00' }],
    ['a fractional limit', { rate_limit: { limit: 1.5, window_seconds: 60 } }],
    ['a fractional window', { rate_limit: { limit: 5, window_seconds: 0.5 } }],
    ['a limit in a string', { rate_limit: { limit: '5', window_seconds: 60 } }],
    ['a negative window', { rate_limit: { limit: 5, window_seconds: -60 } }],
  ])('takes an otherwise complete entry with %s for a miss', (_name, changes) => {
    expect(fresh().parseRecord(entry(changes))).toBeUndefined();
  });

  it('still reads the complete entry those are made from', () => {
    expect(parseRecord(entry({}))).toEqual(record);
    expect(toNaiveUtc(record.lastUsedAt!)).toBe(record.lastUsedAt);
  });
});
