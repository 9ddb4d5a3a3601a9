import { HttpException, HttpStatus, ServiceUnavailableException } from '@nestjs/common';

/** Messages of the rate limit's refusals. */
export const RATE_LIMIT_ERRORS = {
  exceeded: 'Rate limit exceeded for this API token, retry after the time in Retry-After',
  unavailable: 'Rate limit store unavailable, try again later',
} as const;

/**
 * The 429 answer to a request over its token's rate limit, in Nest's shape
 * (`{ message, error, statusCode }`). The one place that builds it, so another body format has one
 * place to change.
 */
export function tooManyRequests(): HttpException {
  return new HttpException(HttpException.createBody(RATE_LIMIT_ERRORS.exceeded, 'Too Many Requests', HttpStatus.TOO_MANY_REQUESTS), HttpStatus.TOO_MANY_REQUESTS);
}

/** The 503 answer to a rate-limited token while Redis does not answer and `rateLimitWhenRedisDown` is `closed`. */
export function rateLimitUnavailable(): HttpException {
  return new ServiceUnavailableException(RATE_LIMIT_ERRORS.unavailable);
}
