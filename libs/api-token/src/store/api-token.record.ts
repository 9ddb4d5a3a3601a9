/** A row of `api_tokens`, as the cache and the repository hand it around. Datetimes are naive UTC ISO-8601 strings. */
export interface ApiTokenRecord {
  id: string;
  appId: string | null;
  tenantId: string | null;
  /** The scope: `app`, `dataset`, or any scope string. */
  type: string;
  /** The token itself (its SHA-256 in hashed mode). */
  token: string;
  lastUsedAt: string | null;
  createdAt: string | null;
}

/** What the guard attaches to the request: the token's identity, never its secret. */
export interface AuthenticatedApiToken {
  id: string;
  appId: string | null;
  tenantId: string | null;
  type: string;
}

/** The identity of a record, frozen: the in-process cache hands one object to every request of the token. */
export const toAuthenticated = (record: ApiTokenRecord): AuthenticatedApiToken =>
  Object.freeze({
    id: record.id,
    appId: record.appId,
    tenantId: record.tenantId,
    type: record.type,
  });

const ISO = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$/;

/**
 * Reads an ISO-8601 datetime (fraction, `Z` or offset allowed) as naive UTC in Python's
 * `isoformat()` style: `2026-02-03T10:00:00.123000`, no fraction when it is zero.
 * Returns null when the text is not a valid datetime.
 */
export function toNaiveUtc(value: string): string | null {
  const m = ISO.exec(value);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number);
  const micros = Number((m[7] ?? '').slice(0, 6).padEnd(6, '0'));
  let offsetMinutes = 0;
  if (m[8] && m[8] !== 'Z') {
    const sign = m[8][0] === '-' ? -1 : 1;
    const digits = m[8].slice(1).replace(':', '');
    offsetMinutes = sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2)));
  }
  const ms = Date.UTC(y, mo - 1, d, h, mi, s) - offsetMinutes * 60_000;
  const date = new Date(ms);
  if (Number.isNaN(ms) || (offsetMinutes === 0 && (date.getUTCDate() !== d || date.getUTCMonth() !== mo - 1))) return null;
  return formatNaiveUtc(date, micros);
}

/** Formats a Date (plus microseconds within its second) as naive UTC, Python's `isoformat()` of a naive datetime. */
export function formatNaiveUtc(date: Date, micros = date.getUTCMilliseconds() * 1000): string {
  const base = date.toISOString().slice(0, 19);
  return micros === 0 ? base : `${base}.${String(micros).padStart(6, '0')}`;
}

/** Serializes a record to Dify's cached JSON: compact, snake_case, fields in Dify's order. */
export function serializeRecord(record: ApiTokenRecord): string {
  return JSON.stringify({
    id: record.id,
    app_id: record.appId,
    tenant_id: record.tenantId,
    type: record.type,
    token: record.token,
    last_used_at: record.lastUsedAt,
    created_at: record.createdAt,
  });
}

const isNullableString = (v: unknown): v is string | null | undefined => v == null || typeof v === 'string';

/** Parses a cached entry: a record, `null` for "no such token", or `undefined` when unreadable (a miss). */
export function parseRecord(raw: string): ApiTokenRecord | null | undefined {
  if (raw === 'null') return null;
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const v = value as Record<string, unknown>;
  if (typeof v.id !== 'string' || typeof v.type !== 'string' || typeof v.token !== 'string') return undefined;
  if (!isNullableString(v.app_id) || !isNullableString(v.tenant_id)) return undefined;
  if (!isNullableString(v.last_used_at) || !isNullableString(v.created_at)) return undefined;
  const lastUsedAt = v.last_used_at == null ? null : toNaiveUtc(v.last_used_at);
  const createdAt = v.created_at == null ? null : toNaiveUtc(v.created_at);
  if ((v.last_used_at != null && lastUsedAt === null) || (v.created_at != null && createdAt === null)) return undefined;
  return {
    id: v.id,
    appId: v.app_id ?? null,
    tenantId: v.tenant_id ?? null,
    type: v.type,
    token: v.token,
    lastUsedAt,
    createdAt,
  };
}
