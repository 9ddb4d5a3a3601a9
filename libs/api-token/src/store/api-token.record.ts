/**
 * A row of `api_tokens`, as the cache and the repository hand it around (internal). Datetimes are
 * naive UTC ISO-8601 strings. Its `type` mirrors the column and the cached JSON; the public API
 * ({@link AuthenticatedApiToken}, summaries) names it `scope`.
 */
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
  /**
   * When the token stops being valid (naive UTC ISO-8601), or null for never. Not Dify's: it lives in
   * the library's own `api_token_policies` table and travels after Dify's fields in the cached JSON.
   */
  expiresAt?: string | null;
  /** The token's own rate limit, or null for none (also `api_token_policies`). */
  rateLimit?: RateLimitPolicy | null;
  /**
   * `expiresAt` in Unix milliseconds, computed once when the record is made (read from the database
   * or a cache entry), so the request path compares two numbers and never parses a date; null for never.
   */
  expiresAtMs?: number | null;
}

/** A per-token rate limit: at most `limit` requests per `windowSeconds`. */
export interface RateLimitPolicy {
  /** Requests accepted per window, on all instances together. */
  limit: number;
  /** The window's length in seconds (1 s to 1 day); windows are aligned on the Unix epoch. */
  windowSeconds: number;
}

/** What the guard attaches to the request: the token's identity, never its secret. */
export interface AuthenticatedApiToken {
  /** The token's row id (uuid). */
  id: string;
  /** The app the token belongs to, or null. */
  appId: string | null;
  /** The tenant the token belongs to, or null. */
  tenantId: string | null;
  /** The token's scope (the `type` column): `app`, `dataset`, or another scope. */
  scope: string;
}

/** The identity of a record, frozen: the in-process cache hands one object to every request of the token. */
export const toAuthenticated = (record: ApiTokenRecord): AuthenticatedApiToken =>
  Object.freeze({
    id: record.id,
    appId: record.appId,
    tenantId: record.tenantId,
    scope: record.type,
  });

/** Unix milliseconds of a naive UTC ISO-8601 datetime (as {@link toNaiveUtc} writes it); microseconds are cut to milliseconds. */
// Stryker disable next-line MethodExpression: V8's Date.parse reads any number of fraction digits as milliseconds; the cut keeps the input within ECMAScript's date format.
export const naiveUtcToMs = (naive: string): number => Date.parse(`${naive.slice(0, 23)}Z`);

/**
 * Whether the token has expired at `now` (Unix ms, default this instance's clock). A token without an
 * expiry costs one property read: the clock is read only for a token that has one.
 */
export function isExpired(record: ApiTokenRecord, now?: number): boolean {
  return record.expiresAtMs != null && record.expiresAtMs <= (now ?? Date.now());
}

const ISO = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:Z|([+-])(\d{2}):?(\d{2}))?$/;

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
  // The offset's sign, hours and minutes; none for `Z` or no offset.
  const offsetMinutes = m[8] ? (m[8] === '-' ? -1 : 1) * (Number(m[9]) * 60 + Number(m[10])) : 0;
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

/**
 * Serializes a record to Dify's cached JSON: compact, snake_case, Dify's seven fields in Dify's order,
 * then the library's own, `expires_at` and `rate_limit`, always (null when the token has none). Dify's
 * reader ignores extra fields, so it reads the entry; this library reads an entry that lacks either
 * field as one it did not write ({@link parseRecord}), whose policy it cannot know.
 */
export function serializeRecord(record: ApiTokenRecord): string {
  const { rateLimit } = record;
  return JSON.stringify({
    id: record.id,
    app_id: record.appId,
    tenant_id: record.tenantId,
    type: record.type,
    token: record.token,
    last_used_at: record.lastUsedAt,
    created_at: record.createdAt,
    expires_at: record.expiresAt ?? null,
    rate_limit: rateLimit ? { limit: rateLimit.limit, window_seconds: rateLimit.windowSeconds } : null,
  });
}

const isPositiveInteger = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0;

/** The `rate_limit` field of a cached entry: a policy, null when absent, undefined when unreadable. */
function parseRateLimit(value: unknown): RateLimitPolicy | null | undefined {
  if (value == null) return null;
  const v = value as { limit?: unknown; window_seconds?: unknown };
  return isPositiveInteger(v.limit) && isPositiveInteger(v.window_seconds) ? { limit: v.limit, windowSeconds: v.window_seconds } : undefined;
}

const isNullableString = (v: unknown): v is string | null | undefined => v == null || typeof v === 'string';

/**
 * Parses a cached entry: a record, `null` for "no such token", or `undefined` when unreadable (a miss).
 * An entry without both `expires_at` and `rate_limit` (null or not) is unreadable too: Dify writes its
 * seven fields only, and "no expiry, no limit" must never be inferred from an entry that cannot say
 * so. The lookup then reads the row from PostgreSQL once and rewrites the entry in this library's form,
 * which Dify still reads.
 */
export function parseRecord(raw: string): ApiTokenRecord | null | undefined {
  if (raw === 'null') return null;
  let value: unknown;
  try {
    value = JSON.parse(raw);
  // Stryker disable next-line BlockStatement: without the return, `value` stays undefined, which the next check refuses too.
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
  if (!('expires_at' in v) || !('rate_limit' in v) || !isNullableString(v.expires_at)) return undefined;
  const expiresAt = v.expires_at == null ? null : toNaiveUtc(v.expires_at);
  const rateLimit = parseRateLimit(v.rate_limit);
  if ((v.expires_at != null && expiresAt === null) || rateLimit === undefined) return undefined;
  return {
    id: v.id,
    appId: v.app_id ?? null,
    tenantId: v.tenant_id ?? null,
    type: v.type,
    token: v.token,
    lastUsedAt,
    createdAt,
    expiresAt,
    rateLimit,
    expiresAtMs: expiresAt === null ? null : naiveUtcToMs(expiresAt),
  };
}
