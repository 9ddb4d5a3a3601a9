import {
  CanActivate,
  ExecutionContext,
  HttpException,
  Injectable,
  Optional,
  Type,
  mixin,
} from '@nestjs/common';
import { ApiTokenAuthenticator } from './api-token.authenticator';
import { ApiTokenRefusals } from './refusal';
import { ApiTokenStoreError } from '../api-token.errors';
import { checkScope } from '../tokens/token.scope';
import { BEARER_PREFIX, hasRepeatedAuthorization, startsUsualToken } from './authorization.header';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { ApiTokenRateLimiter } from '../limits/rate-limiter.service';
import { type ApiTokenRecord, type AuthenticatedApiToken, toAuthenticated } from '../store/api-token.record';

/** Messages of the 401 answers, word for word Dify's. */
export const API_TOKEN_ERRORS = {
  missingHeader: "Authorization header must be provided and start with 'Bearer'",
  wrongScheme: "Authorization scheme must be 'Bearer'",
  invalidToken: 'Access token is invalid',
  /** Not Dify's: more than one Authorization header. */
  repeatedHeader: 'Authorization header must be sent only once',
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
  const usual = usualBearerToken(header);
  if (usual !== undefined) return { token: usual };
  if (header === undefined || !header.includes(' ')) return { error: API_TOKEN_ERRORS.missingHeader };
  const match = /^\s*(\S+)\s+(\S[\s\S]*)$/.exec(header);
  if (!match) return { error: API_TOKEN_ERRORS.missingHeader };
  if (match[1].toLowerCase() !== 'bearer') return { error: API_TOKEN_ERRORS.wrongScheme };
  return { token: match[2] };
}

/**
 * The token of the usual header, `Bearer ` then a printable ASCII character other than space, read
 * with no regular expression and no answer object (what {@link parseAuthorization} would take from
 * it); undefined for any other header, which `parseAuthorization` then reads.
 */
function usualBearerToken(header: unknown): string | undefined {
  if (typeof header !== 'string' || !header.startsWith(BEARER_PREFIX)) return undefined;
  return startsUsualToken(header, BEARER_PREFIX.length) ? header.slice(BEARER_PREFIX.length) : undefined;
}

/** What the guard reads of a request: Express's is Node's request, Fastify's holds it in `raw`. */
interface RawRequest {
  headers: Record<string, string | string[] | undefined>;
  rawHeaders?: string[];
  raw?: { rawHeaders?: string[] };
}

const guards = new Map<string, Type<CanActivate>>();

/**
 * A guard that lets a request through only with a valid API token of `scope`:
 * `@UseGuards(ApiTokenGuard('app'))`. The token's identity is then on `request.apiToken`
 * (see {@link CurrentApiToken}). Refusals are 401 with `WWW-Authenticate: Bearer`; when the token
 * store cannot answer for an uncached token, 503 with `Retry-After`; a token over its rate limit
 * gets 429 (its rate limit). Bodies in the shape of the `errorFormat` option.
 */
export function ApiTokenGuard(scope: string): Type<CanActivate> {
  let guard = guards.get(scope);
  if (!guard) {
    guard = createApiTokenGuard(checkScope(scope, 'ApiTokenGuard: the scope'));
    guards.set(scope, guard);
  }
  return guard;
}

function createApiTokenGuard(scope: string): Type<CanActivate> {
  @Injectable()
  class MixinApiTokenGuard implements CanActivate {
    constructor(
      private readonly authenticator: ApiTokenAuthenticator,
      private readonly refusals: ApiTokenRefusals,
      private readonly limiter: ApiTokenRateLimiter,
      @Optional() private readonly metrics?: ApiTokenMetrics,
    ) {
      // The guard's scope takes its metrics label first, and shows at 0 before any request.
      metrics?.scope(scope);
    }

    canActivate(context: ExecutionContext): boolean | Promise<boolean> {
      // getArgByIndex, not switchToHttp(): that one assigns three new closures to the context on every call.
      const request = context.getArgByIndex<RawRequest & Partial<ApiTokenRequest>>(0);
      const header = request.headers.authorization;
      if (header !== undefined && hasRepeatedAuthorization(request.rawHeaders ?? request.raw?.rawHeaders)) {
        throw this.badHeader(context, API_TOKEN_ERRORS.repeatedHeader);
      }
      // A token the process holds is found by the header as it came: no parse, no slice.
      const known = typeof header === 'string' ? this.authenticator.authenticateLocalHeader(header, scope) : undefined;
      if (known !== undefined) return this.admit(request, context, known && known.record, known?.identity);
      let token = usualBearerToken(header);
      if (token === undefined) {
        const parsed = parseAuthorization(Array.isArray(header) ? header[0] : header);
        if ('error' in parsed) throw this.badHeader(context, parsed.error);
        token = parsed.token;
      }
      // For a usual header in plain mode this reads L1 again, and finds only an entry whose name the key map
      // dropped at its bound (by its cache key); one more map read, on a path that otherwise goes to Redis.
      const local = this.authenticator.authenticateLocal(token, scope);
      if (local !== undefined) return this.admit(request, context, local && local.record, local?.identity);
      return this.authenticator.authenticateRemote(token, scope).then(
        (record) => this.admit(request, context, record),
        (error: unknown) => {
          if (error instanceof ApiTokenStoreError) throw this.unavailable(context.getArgByIndex(1));
          throw error;
        },
      );
    }

    private badHeader(context: ExecutionContext, message: string): HttpException {
      this.metrics?.lookup(scope, 'bad_header');
      return this.unauthorized(context.getArgByIndex(1), message);
    }

    private admit(request: Partial<ApiTokenRequest>, context: ExecutionContext, record: ApiTokenRecord | null, identity?: AuthenticatedApiToken): true | Promise<true> {
      if (!record) throw this.unauthorized(context.getArgByIndex(1), API_TOKEN_ERRORS.invalidToken);
      // An in-process hit hands over the identity cached beside the record: nothing is built per request.
      request.apiToken = identity ?? toAuthenticated(record);
      // A token without a limit (and no default) pays this one check and nothing else.
      if (record.rateLimit || this.limiter.defaultRateLimit) return this.limiter.enforce(scope, record, context.getArgByIndex(1));
      return true;
    }

    private unauthorized(response: unknown, message: string): HttpException {
      return this.refusals.refuse(response, 401, message);
    }

    private unavailable(response: unknown): HttpException {
      return this.refusals.refuse(response, 503, API_TOKEN_ERRORS.unavailable, { 'Retry-After': String(RETRY_AFTER_SECONDS) });
    }
  }
  return mixin(MixinApiTokenGuard);
}
