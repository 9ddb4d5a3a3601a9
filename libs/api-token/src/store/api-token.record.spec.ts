import { type ApiTokenRecord, formatNaiveUtc, isExpired, naiveUtcToMs, parseRecord, serializeRecord, toNaiveUtc } from './api-token.record';

const record: ApiTokenRecord = {
  id: '11111111-2222-4333-8444-555555555555',
  appId: null,
  tenantId: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
  type: 'app',
  token: 'app-abc',
  lastUsedAt: '2026-02-03T10:00:00.123000',
  createdAt: '2026-01-01T00:00:00',
  expiresAt: null,
  rateLimit: null,
  expiresAtMs: null,
};

describe('naive UTC datetimes', () => {
  it.each([
    ['2026-02-03T10:00:00', '2026-02-03T10:00:00'],
    ['2026-02-03 10:00:00', '2026-02-03T10:00:00'],
    ['2026-02-03T10:00:00.123456', '2026-02-03T10:00:00.123456'],
    ['2026-02-03T10:00:00.1', '2026-02-03T10:00:00.100000'],
    ['2026-02-03T10:00:00.000000', '2026-02-03T10:00:00'],
    ['2026-02-03T10:00:00.1234567', '2026-02-03T10:00:00.123456'],
    ['2026-02-03T10:00:00Z', '2026-02-03T10:00:00'],
    ['2026-02-03T10:00:00.5+00:00', '2026-02-03T10:00:00.500000'],
    ['2026-02-03T19:00:00+09:00', '2026-02-03T10:00:00'],
    ['2026-02-03T05:30:00.25-0430', '2026-02-03T10:00:00.250000'],
  ])('reads %s as %s', (input, output) => expect(toNaiveUtc(input)).toBe(output));

  it.each(['', 'yesterday', '2026-02-30T10:00:00', '2026-02-03', '2026-02-03T10:00', '2026-02-03T10:00:00+9'])('refuses %j', (input) =>
    expect(toNaiveUtc(input)).toBeNull(),
  );

  it('formats like Python isoformat()', () => {
    expect(formatNaiveUtc(new Date(Date.UTC(2026, 1, 3, 10, 0, 0, 123)))).toBe('2026-02-03T10:00:00.123000');
    expect(formatNaiveUtc(new Date(Date.UTC(2026, 1, 3, 10, 0, 0, 0)))).toBe('2026-02-03T10:00:00');
  });
});

describe('cached JSON', () => {
  it('serializes compactly with Dify field names in order, then the library fields, null when unset', () => {
    expect(serializeRecord(record)).toBe(
      '{"id":"11111111-2222-4333-8444-555555555555","app_id":null,"tenant_id":"aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",' +
        '"type":"app","token":"app-abc","last_used_at":"2026-02-03T10:00:00.123000","created_at":"2026-01-01T00:00:00",' +
        '"expires_at":null,"rate_limit":null}',
    );
  });

  // Dify's fill writes its seven fields only: such an entry cannot say "no expiry, no limit", so it is a miss
  // (re-read from PostgreSQL), never a token without a policy.
  it.each([
    ['written by Dify (seven fields)', ['expires_at', 'rate_limit']],
    ['without expires_at', ['expires_at']],
    ['without rate_limit', ['rate_limit']],
  ])('takes an entry %s for a miss', (_name, dropped) => {
    const fields = JSON.parse(serializeRecord(record)) as Record<string, unknown>;
    for (const name of dropped) delete fields[name];
    expect(parseRecord(JSON.stringify(fields))).toBeUndefined();
  });

  it('round-trips', () => expect(parseRecord(serializeRecord(record))).toEqual(record));

  it('reads null as "no such token"', () => expect(parseRecord('null')).toBeNull());

  it('ignores unknown fields and accepts offsets', () => {
    const raw = JSON.stringify({ ...JSON.parse(serializeRecord(record)), created_at: '2026-01-01T09:00:00+09:00', extra: [1] });
    expect(parseRecord(raw)).toEqual({ ...record, createdAt: '2026-01-01T00:00:00' });
  });

  it.each([
    ['not JSON', '{"id":'],
    ['an array', '[]'],
    ['a string', '"app"'],
    ['no id', JSON.stringify({ type: 'app', token: 't' })],
    ['a numeric tenant', JSON.stringify({ id: 'x', type: 'app', token: 't', tenant_id: 5 })],
    ['a bad date', JSON.stringify({ id: 'x', type: 'app', token: 't', created_at: 'soon' })],
  ])('treats %s as unreadable', (_name, raw) => expect(parseRecord(raw)).toBeUndefined());
});

describe('cached JSON with a policy', () => {
  const withPolicy: ApiTokenRecord = {
    ...record,
    expiresAt: '2026-03-01T00:00:00',
    rateLimit: { limit: 100, windowSeconds: 60 },
    expiresAtMs: Date.UTC(2026, 2, 1),
  };

  it('keeps Dify fields first, in order, and adds the library fields after them', () => {
    const json = serializeRecord(withPolicy);
    expect(Object.keys(JSON.parse(json))).toEqual([
      'id', 'app_id', 'tenant_id', 'type', 'token', 'last_used_at', 'created_at', 'expires_at', 'rate_limit',
    ]);
    expect(json).toContain('"expires_at":"2026-03-01T00:00:00","rate_limit":{"limit":100,"window_seconds":60}}');
  });

  it('writes both library fields, null, for a token without a policy', () => {
    expect(JSON.parse(serializeRecord(record))).toMatchObject({ expires_at: null, rate_limit: null });
  });

  it('round-trips', () => expect(parseRecord(serializeRecord(withPolicy))).toEqual(withPolicy));

  it('carries the expiry as a number, so the request path parses no date', () => {
    const parsed = parseRecord(serializeRecord({ ...withPolicy, expiresAt: '2026-03-01T00:00:00.250999' }))!;
    expect(parsed.expiresAtMs).toBe(Date.UTC(2026, 2, 1) + 250);
    expect(isExpired(parsed, parsed.expiresAtMs! - 1)).toBe(false);
    expect(isExpired(parsed, parsed.expiresAtMs!)).toBe(true);
    expect(parseRecord(serializeRecord(record))!.expiresAtMs).toBeNull();
  });

  it('reads the clock only for a token that expires', () => {
    const now = jest.spyOn(Date, 'now');
    expect(isExpired(record)).toBe(false);
    expect(isExpired({ ...record, expiresAtMs: undefined })).toBe(false);
    expect(now).not.toHaveBeenCalled();
    expect(isExpired(withPolicy)).toBe(true);
    expect(now).toHaveBeenCalledTimes(1);
    now.mockRestore();
  });

  it.each([
    ['an unreadable expiry', { expires_at: 'soon' }],
    ['a non-string expiry', { expires_at: 5 }],
    ['a rate limit without a window', { rate_limit: { limit: 5 } }],
    ['a zero rate limit', { rate_limit: { limit: 0, window_seconds: 60 } }],
  ])('takes an entry with %s for a miss', (_, extra) => {
    expect(parseRecord(JSON.stringify({ ...JSON.parse(serializeRecord(record)), ...extra }))).toBeUndefined();
  });
});

/**
 * The stored expiry is naive UTC whatever the process's time zone: read in local time, an expired token
 * would stay valid for hours west of Greenwich. In UTC (CI's zone) that bug is invisible: `npm run test:tz`
 * (in .ci/run) runs the unit project again under TZ=America/Los_Angeles, where these fail on it.
 */
describe('expiry whatever the time zone', () => {
  it('runs in the zone test:tz asks for (jest cannot switch a running process\'s zone)', () => {
    const offset = new Date(Date.UTC(2026, 1, 3, 10)).getTimezoneOffset();
    expect(offset).toBe(process.env.TZ === 'America/Los_Angeles' ? 480 : offset);
  });

  it('reads a stored naive-UTC expiry as UTC, not as local time', () => {
    expect(naiveUtcToMs('2026-02-03T10:00:00')).toBe(Date.UTC(2026, 1, 3, 10));
    expect(naiveUtcToMs('2026-07-03T10:00:00.250000')).toBe(Date.UTC(2026, 6, 3, 10, 0, 0, 250));
    expect(toNaiveUtc('2026-02-03T10:00:00')).toBe('2026-02-03T10:00:00');
    expect(formatNaiveUtc(new Date(Date.UTC(2026, 1, 3, 10)))).toBe('2026-02-03T10:00:00');
  });

  it('refuses a cached token from the moment of its expiry, not eight hours later', () => {
    const parsed = parseRecord(serializeRecord({ ...record, expiresAt: '2026-02-03T10:00:00', expiresAtMs: null }))!;
    expect(parsed.expiresAtMs).toBe(Date.UTC(2026, 1, 3, 10));
    expect(isExpired(parsed, Date.UTC(2026, 1, 3, 9, 59, 59, 999))).toBe(false);
    expect(isExpired(parsed, Date.UTC(2026, 1, 3, 10))).toBe(true);
    expect(isExpired(parsed, Date.UTC(2026, 1, 3, 11))).toBe(true);
  });
});
