import { ApiTokenInputError } from '../api-token.errors';
import type { RateLimitPolicy } from '../store/api-token.record';

/** The name of the library's quota policy in the `RateLimit-Policy` and `RateLimit` header fields. */
export const RATE_LIMIT_POLICY_NAME = 'token';

/** Longest window a limit may have: one day (a window is a Redis key that lives at least that long). */
export const MAX_RATE_WINDOW_SECONDS = 86_400;
/** The `rate_limit` column is a PostgreSQL integer. */
const MAX_RATE_LIMIT = 2_147_483_647;

const isInteger = (v: unknown, min: number, max: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;

/** Whether a value is a usable policy: a limit of 1 to 2^31-1 requests per 1 s to 1 day. */
export function isRateLimitPolicy(value: unknown): value is RateLimitPolicy {
  const v = value as Partial<RateLimitPolicy> | null;
  return typeof v === 'object' && v !== null && isInteger(v.limit, 1, MAX_RATE_LIMIT) && isInteger(v.windowSeconds, 1, MAX_RATE_WINDOW_SECONDS);
}

/** The policy as a fresh object, or null; throws an ApiTokenInputError naming `name` (never echoing the value) otherwise. */
export function checkRateLimitPolicy(value: unknown, name: string): RateLimitPolicy | null {
  if (value === null || value === undefined) return null;
  if (!isRateLimitPolicy(value)) {
    throw new ApiTokenInputError(
      `${name} must be null or { limit, windowSeconds }: integers, limit 1 to ${MAX_RATE_LIMIT}, windowSeconds 1 to ${MAX_RATE_WINDOW_SECONDS}`,
    );
  }
  return { limit: value.limit, windowSeconds: value.windowSeconds };
}

/**
 * The fixed window a moment falls in: windows are aligned to their length on the Unix epoch (a 60 s
 * window starts at every whole minute), the same on every instance whose clock is right.
 */
export function windowIndex(nowMs: number, windowSeconds: number): number {
  return Math.floor(nowMs / (windowSeconds * 1000));
}

/** Whole seconds (at least 1) from `nowMs` until the window `index` ends: the `t` parameter and `Retry-After`. */
export function secondsUntilWindowEnd(nowMs: number, index: number, windowSeconds: number): number {
  return Math.max(1, Math.ceil(((index + 1) * windowSeconds * 1000 - nowMs) / 1000));
}

/** `RateLimit-Policy` field value (draft-ietf-httpapi-ratelimit-headers: a List of one String Item with `q` and `w`). */
export function rateLimitPolicyField(policy: RateLimitPolicy): string {
  return `"${RATE_LIMIT_POLICY_NAME}";q=${policy.limit};w=${policy.windowSeconds}`;
}

/** `RateLimit` field value: the remaining quota `r` and the seconds `t` until quota is made available again. */
export function rateLimitField(remaining: number, resetSeconds: number): string {
  return `"${RATE_LIMIT_POLICY_NAME}";r=${Math.max(0, remaining)};t=${resetSeconds}`;
}
