import {
  ForbiddenException,
  HttpException,
  Inject,
  Injectable,
  ServiceUnavailableException,
  UnauthorizedException,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import type { ApiTokenErrorFormat, ResolvedApiTokenOptions } from '../api-token.options';

/** The statuses the module refuses a request with (403 only when a `validate` hook asks for it). */
export type RefusalStatus = 401 | 403 | 429 | 503;

/**
 * The 401 the module answers with (missing or bad header, unknown, revoked or expired token, a
 * `validate` hook's refusal): an `UnauthorizedException`, so a filter catching that still sees it,
 * and a class of its own for a filter that wants only the module's refusals.
 */
export class ApiTokenUnauthorizedException extends UnauthorizedException {}

/** Every 429 of the module (a token over its rate limit, a client over `failedAttemptLimit`); its body in the `errorFormat` shape, `Retry-After` already set on the response. */
export class ApiTokenRateLimitException extends HttpException {
  constructor(response: string | object) {
    super(response, 429);
  }
}

/**
 * Dify's `code` for each status. Its error handler (`libs/external_api.py`) derives the code from the
 * werkzeug exception's class name: `Unauthorized`, `TooManyRequests` (also its explicit code for rate
 * limits) and `ServiceUnavailable`, the class a Dify view raises for 503.
 */
export const DIFY_ERROR_CODES: Record<RefusalStatus, string> = {
  401: 'unauthorized',
  403: 'forbidden',
  429: 'too_many_requests',
  503: 'service_unavailable',
};

/** `WWW-Authenticate` of a 401, per format: Dify names its realm. */
const CHALLENGES: Record<ApiTokenErrorFormat, string> = { nest: 'Bearer', dify: 'Bearer realm="api"' };

/**
 * The exception for a refusal, its body in `format`'s shape: Nest's `{message, error, statusCode}`
 * or Dify's `{code, message, status}`. 401 and 503 keep Nest's exception classes, so an application's
 * exception filters see the same classes in both formats. Sets no header (see {@link ApiTokenRefusals}).
 */
export function refusalException(format: ApiTokenErrorFormat, status: RefusalStatus, message: string): HttpException {
  const body = format === 'dify' ? { code: DIFY_ERROR_CODES[status], message, status } : undefined;
  switch (status) {
    case 401:
      return new ApiTokenUnauthorizedException(body ?? message);
    case 403:
      return new ForbiddenException(body ?? message);
    case 503:
      return new ServiceUnavailableException(body ?? message);
    default:
      return new ApiTokenRateLimitException(body ?? HttpException.createBody(message, 'Too Many Requests', status));
  }
}

/**
 * Builds every refusal of the module in one place, in the shape the `errorFormat` option asks for,
 * on Express and Fastify alike. Only refusals come here: the guard's success path never does.
 */
@Injectable()
export class ApiTokenRefusals {
  private readonly format: ApiTokenErrorFormat;

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    @Inject(API_TOKEN_OPTIONS) options: ResolvedApiTokenOptions,
  ) {
    this.format = options.errorFormat;
  }

  /**
   * Sets `headers` on `response` (the platform's response object), plus `WWW-Authenticate` on a
   * 401, and returns the exception to throw. `message` is sent to the client as it is: it must not
   * quote the token.
   */
  refuse(response: unknown, status: RefusalStatus, message: string, headers: Readonly<Record<string, string>> = {}): HttpException {
    const adapter = this.adapterHost.httpAdapter;
    if (status === 401) adapter.setHeader(response, 'WWW-Authenticate', CHALLENGES[this.format]);
    for (const [name, value] of Object.entries(headers)) adapter.setHeader(response, name, value);
    return refusalException(this.format, status, message);
  }
}
