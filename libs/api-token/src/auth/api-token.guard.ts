import {
  CanActivate,
  ExecutionContext,
  HttpException,
  Injectable,
  Optional,
  ServiceUnavailableException,
  Type,
  UnauthorizedException,
  mixin,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { ApiTokenAuthenticator } from './api-token.authenticator';
import { ApiTokenStoreError } from '../api-token.errors';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { type AuthenticatedApiToken, toAuthenticated } from '../store/api-token.record';

/** Messages of the 401 answers, word for word Dify's. */
export const API_TOKEN_ERRORS = {
  missingHeader: "Authorization header must be provided and start with 'Bearer'",
  wrongScheme: "Authorization scheme must be 'Bearer'",
  invalidToken: 'Access token is invalid',
  unavailable: 'Token store unavailable, try again later',
} as const;

/** Seconds a client is told to wait (`Retry-After`) when the token store is down. */
export const RETRY_AFTER_SECONDS = 5;

/** A request the guard has let through. */
export interface ApiTokenRequest {
  apiToken: AuthenticatedApiToken;
}

/** Parses `Authorization` like Dify: the token, or the 401 message to answer with. */
export function parseAuthorization(header: string | undefined): { token: string } | { error: string } {
  // The usual header, `Bearer ` then a printable ASCII character, needs no regular expression (and no
  // match array per request): the expression below would answer the same.
  if (header !== undefined && header.startsWith('Bearer ')) {
    const first = header.charCodeAt(7);
    if (first > 0x20 && first < 0x7f) return { token: header.slice(7) };
  }
  if (header === undefined || !header.includes(' ')) return { error: API_TOKEN_ERRORS.missingHeader };
  const match = /^\s*(\S+)\s+(\S[\s\S]*)$/.exec(header);
  if (!match) return { error: API_TOKEN_ERRORS.missingHeader };
  if (match[1].toLowerCase() !== 'bearer') return { error: API_TOKEN_ERRORS.wrongScheme };
  return { token: match[2] };
}

const guards = new Map<string, Type<CanActivate>>();

/**
 * A guard that lets a request through only with a valid API token of `scope`:
 * `@UseGuards(ApiTokenGuard('app'))`. The token's identity is then on `request.apiToken`
 * (see {@link CurrentApiToken}). Refusals are 401 with `WWW-Authenticate: Bearer`; when the token
 * store cannot answer for an uncached token, 503 with `Retry-After`.
 */
export function ApiTokenGuard(scope: string): Type<CanActivate> {
  if (typeof scope !== 'string' || scope.length === 0 || scope.length > 16) {
    throw new TypeError('ApiTokenGuard: scope must be a string of 1 to 16 characters (the size of api_tokens.type)');
  }
  let guard = guards.get(scope);
  if (!guard) {
    guard = createApiTokenGuard(scope);
    guards.set(scope, guard);
  }
  return guard;
}

function createApiTokenGuard(scope: string): Type<CanActivate> {
  @Injectable()
  class MixinApiTokenGuard implements CanActivate {
    constructor(
      private readonly authenticator: ApiTokenAuthenticator,
      private readonly adapterHost: HttpAdapterHost,
      @Optional() private readonly metrics?: ApiTokenMetrics,
    ) {
      // The guard's scope takes its metrics label first, and shows at 0 before any request.
      metrics?.scope(scope);
    }

    canActivate(context: ExecutionContext): boolean | Promise<boolean> {
      const http = context.switchToHttp();
      const request = http.getRequest<{ headers: Record<string, string | string[] | undefined> } & Partial<ApiTokenRequest>>();
      const header = request.headers.authorization;
      const parsed = parseAuthorization(Array.isArray(header) ? header[0] : header);
      if ('error' in parsed) {
        this.metrics?.lookup(scope, 'bad_header');
        throw this.unauthorized(http.getResponse(), parsed.error);
      }
      const local = this.authenticator.authenticateLocal(parsed.token, scope);
      if (local !== undefined) return this.admit(request, http.getResponse(), local && local.identity);
      return this.authenticator.authenticateRemote(parsed.token, scope).then(
        (record) => this.admit(request, http.getResponse(), record && toAuthenticated(record)),
        (error: unknown) => {
          if (error instanceof ApiTokenStoreError) throw this.unavailable(http.getResponse());
          throw error;
        },
      );
    }

    private admit(request: Partial<ApiTokenRequest>, response: unknown, identity: AuthenticatedApiToken | null): true {
      if (!identity) throw this.unauthorized(response, API_TOKEN_ERRORS.invalidToken);
      request.apiToken = identity;
      return true;
    }

    private unauthorized(response: unknown, message: string): HttpException {
      this.adapterHost.httpAdapter.setHeader(response, 'WWW-Authenticate', 'Bearer');
      return new UnauthorizedException(message);
    }

    private unavailable(response: unknown): HttpException {
      this.adapterHost.httpAdapter.setHeader(response, 'Retry-After', String(RETRY_AFTER_SECONDS));
      return new ServiceUnavailableException(API_TOKEN_ERRORS.unavailable);
    }
  }
  return mixin(MixinApiTokenGuard);
}
