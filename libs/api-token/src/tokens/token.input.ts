import { toNaiveUtc } from '../store/api-token.record';

/**
 * The rules of what an operator types (the token command line) or posts (the admin HTTP API), stated
 * once: both front ends and {@link ApiTokenService} check a value with these, so the three cannot
 * drift apart. Each is a predicate or a parser that answers null: the caller names the field in its
 * own words (`--expires-at`, `"expiresAt"`) and never quotes the value.
 */

/** The longest expiry or grace accepted: 100 years (a date past year 9999 has no naive ISO-8601 form). */
export const MAX_EXPIRY_SECONDS = 100 * 365 * 24 * 3600;

/** Whether a value is a whole number of seconds from `min` to {@link MAX_EXPIRY_SECONDS}. */
export const isWholeSeconds = (value: unknown, min: number): value is number =>
  typeof value === 'number' && Number.isSafeInteger(value) && value >= min && value <= MAX_EXPIRY_SECONDS;

/** How error messages state {@link isWholeSeconds}. */
export const wholeSecondsRule = (min: number): string => `a whole number of seconds from ${min} to ${MAX_EXPIRY_SECONDS}`;

/** How error messages state the form {@link parseUtcDate} reads. */
export const UTC_DATE_RULE = 'an ISO-8601 date and time (UTC unless it has an offset), e.g. 2027-01-31T00:00:00Z';

/** An ISO-8601 date and time as a Date; one without an offset is UTC, like every time in the table. Null when unreadable. */
export function parseUtcDate(value: unknown): Date | null {
  if (typeof value !== 'string' || value.length > 64) return null;
  const naive = toNaiveUtc(value);
  return naive ? new Date(`${naive.slice(0, 23)}Z`) : null;
}
