/** Messages of the rate limit's refusals (429, and 503 while Redis is down with `rateLimitWhenRedisDown: 'closed'`), built by `refusalException` in the `errorFormat` shape. */
export const RATE_LIMIT_ERRORS = {
  exceeded: 'Rate limit exceeded for this API token, retry after the time in Retry-After',
  unavailable: 'Rate limit store unavailable, try again later',
} as const;

/** The message of the `failedAttemptLimit` option's 429, built by `refusalException` in the `errorFormat` shape. */
export const FAILED_ATTEMPT_ERRORS = {
  exceeded: 'Too many failed authentication attempts, retry after the time in Retry-After',
} as const;
