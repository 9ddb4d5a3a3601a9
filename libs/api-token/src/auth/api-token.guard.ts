import {
  CanActivate,
  ExecutionContext,
  HttpException,
  Inject,
  Injectable,
  Optional,
  Type,
  mixin,
} from '@nestjs/common';
import { ApiTokenAuthenticator } from './api-token.authenticator';
import { ApiTokenRefusals } from './refusal';
import { ApiTokenError, ApiTokenInputError, ApiTokenStoreError } from '../api-token.errors';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import type { ApiTokenValidation, ResolvedApiTokenOptions } from '../api-token.options';
import { checkScope } from '../tokens/token.scope';
import { BEARER_PREFIX, hasRepeatedAuthorization, startsUsualToken } from './authorization.header';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { ApiTokenRateLimiter } from '../limits/rate-limiter.service';
import { ApiTokenFailedAttemptLimiter } from '../limits/failed-attempt-limiter.service';
import { FAILED_ATTEMPT_ERRORS } from '../limits/rate-limit.errors';
import { type ApiTokenRecord, type AuthenticatedApiToken, toAuthenticated } from '../store/api-token.record';
import type { ApiTokenGuardRequest } from './guard.request';

export type { ApiTokenGuardRequest, ApiTokenRequest } from './guard.request';

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

/** A context {@link ApiTokenGuard} cannot read a request with headers from: override `getRequest(context)`. */
export class ApiTokenContextError extends ApiTokenError {}

/**
 * The request (an object with `headers`) of an HTTP, GraphQL (`GqlExecutionContext`'s `req`, read
 * without depending on `@nestjs/graphql`), WebSocket (socket.io's handshake request) or RPC context
 * (a context object with `headers`); throws {@link ApiTokenContextError} for any other.
 */
export function apiTokenRequestOf(context: ExecutionContext): ApiTokenGuardRequest {
  const type = context.getType<string>();
  // getArgByIndex, not switchToHttp(): that one assigns three new closures to the context on every call.
  let request: unknown;
  if (type === 'http') request = context.getArgByIndex(0);
  else if (type === 'graphql') {
    const gql = context.getArgByIndex<{ req?: unknown; request?: unknown } | undefined>(2);
    request = gql?.req ?? gql?.request;
  } else if (type === 'ws') {
    const client = context.getArgByIndex<{ request?: unknown; handshake?: unknown; upgradeReq?: unknown } | undefined>(0);
    request = client?.request ?? client?.handshake ?? client?.upgradeReq;
  } else if (type === 'rpc') request = context.getArgByIndex(1);
  if (typeof request !== 'object' || request === null || typeof (request as { headers?: unknown }).headers !== 'object' || (request as { headers?: unknown }).headers === null) {
    throw new ApiTokenContextError(
      `ApiTokenGuard: cannot find a request with headers in a "${type}" context; extend the guard and override getRequest(context)`,
    );
  }
  return request as ApiTokenGuardRequest;
}

/** Where refusal headers go when the context has no HTTP response (WebSocket, RPC): nowhere, on either platform. */
const NO_RESPONSE = Object.freeze({ set: () => undefined, header: () => undefined, setHeader: () => undefined });

/** The HTTP response of a context (GraphQL's `res` or `reply`), or a sink for headers when there is none. */
export function apiTokenResponseOf(context: ExecutionContext): unknown {
  const type = context.getType<string>();
  if (type === 'http') return context.getArgByIndex(1);
  if (type === 'graphql') {
    const gql = context.getArgByIndex<{ res?: unknown; reply?: unknown } | undefined>(2);
    return gql?.res ?? gql?.reply ?? NO_RESPONSE;
  }
  return NO_RESPONSE;
}

/**
 * The guard class `ApiTokenGuard(scope)` returns, to extend: override {@link getRequest} for a context
 * the module cannot read, {@link validate} for a check of your own (it runs after the `validate` option).
 */
export interface ApiTokenGuardInstance extends CanActivate {
  /** The object with the headers, where `apiToken` is set. Default: {@link apiTokenRequestOf}. */
  getRequest(context: ExecutionContext): ApiTokenGuardRequest;
  /** The response refusal headers are set on. Default: {@link apiTokenResponseOf}. */
  getResponse(context: ExecutionContext): unknown;
  /** A check after the token is found; same answers as the `validate` option. Default: the option's hook, or true. */
  validate(identity: AuthenticatedApiToken, context: ExecutionContext): ApiTokenValidation | Promise<ApiTokenValidation>;
}

/** The class of {@link ApiTokenGuard}: a Nest guard to put in `@UseGuards()` or to extend. */
export type ApiTokenGuardClass = Type<ApiTokenGuardInstance>;

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

const guards = new Map<string, ApiTokenGuardClass>();

/**
 * A guard that lets a request through only with a valid API token of `scope` (or of one of `scopes`,
 * tried in their order, one lookup each): `@UseGuards(ApiTokenGuard('app'))`. The token's identity is
 * then on `request.apiToken` (see {@link CurrentApiToken}). Refusals are 401 with `WWW-Authenticate:
 * Bearer`; when the token store cannot answer for an uncached token, 503 with `Retry-After`; a token
 * over its rate limit gets 429 (its rate limit). Bodies in the shape of the `errorFormat` option.
 * Works in HTTP, GraphQL, WebSocket and RPC contexts (see {@link apiTokenRequestOf}); extend it to read another.
 */
export function ApiTokenGuard(scope: string | readonly string[]): ApiTokenGuardClass {
  const scopes: unknown[] = Array.isArray(scope) ? [...(scope as readonly unknown[])] : [scope];
  if (scopes.length === 0) throw new ApiTokenInputError('ApiTokenGuard: at least one scope is needed');
  const name = JSON.stringify(scopes);
  let guard = guards.get(name);
  if (!guard) {
    guard = createApiTokenGuard(scopes.map((s) => checkScope(s, 'ApiTokenGuard: the scope')));
    guards.set(name, guard);
  }
  return guard;
}

function createApiTokenGuard(scopes: readonly string[]): ApiTokenGuardClass {
  const [scope] = scopes;
  @Injectable()
  class MixinApiTokenGuard implements ApiTokenGuardInstance {
    private readonly hook: ResolvedApiTokenOptions['validate'];
    /** The failed-attempt limiter when the option is set; undefined keeps the path as it is without it. */
    private readonly attempts: ApiTokenFailedAttemptLimiter | undefined;

    constructor(
      private readonly authenticator: ApiTokenAuthenticator,
      private readonly refusals: ApiTokenRefusals,
      private readonly limiter: ApiTokenRateLimiter,
      @Inject(API_TOKEN_OPTIONS) options: ResolvedApiTokenOptions,
      @Optional() private readonly metrics?: ApiTokenMetrics,
      @Optional() attempts?: ApiTokenFailedAttemptLimiter,
    ) {
      this.hook = options.validate;
      this.attempts = attempts?.enabled ? attempts : undefined;
      // The guard's scopes take their metrics labels first, and show at 0 before any request.
      for (const s of scopes) metrics?.scope(s);
    }

    getRequest(context: ExecutionContext): ApiTokenGuardRequest {
      return apiTokenRequestOf(context);
    }

    getResponse(context: ExecutionContext): unknown {
      return apiTokenResponseOf(context);
    }

    validate(identity: AuthenticatedApiToken, context: ExecutionContext): ApiTokenValidation | Promise<ApiTokenValidation> {
      return this.hook ? this.hook(identity, context) : true;
    }

    canActivate(context: ExecutionContext): boolean | Promise<boolean> {
      const request = this.getRequest(context);
      const header = request.headers.authorization;
      if (header !== undefined && hasRepeatedAuthorization(request.rawHeaders ?? request.raw?.rawHeaders)) {
        throw this.badHeader(context, API_TOKEN_ERRORS.repeatedHeader);
      }
      if (scopes.length === 1) {
        // A token the process holds is found by the header as it came: no parse, no slice.
        const known = typeof header === 'string' ? this.authenticator.authenticateLocalHeader(header, scope) : undefined;
        if (known) return this.admit(request, context, known.record, known.identity);
        if (known === null) throw this.invalid(context, this.attempts && this.clientWithin(this.attempts, request, context));
      }
      let token = usualBearerToken(header);
      if (token === undefined) {
        const parsed = parseAuthorization(Array.isArray(header) ? header[0] : header);
        if ('error' in parsed) throw this.badHeader(context, parsed.error);
        token = parsed.token;
      }
      // A client over its failed-attempt limit is refused here, before any lookup (and any hash).
      const client = this.attempts && this.clientWithin(this.attempts, request, context);
      if (scopes.length > 1) return this.findInScopes(request, context, token, client);
      // For a usual header in plain mode this reads L1 again, and finds only an entry whose name the key map
      // dropped at its bound (by its cache key); one more map read, on a path that otherwise goes to Redis.
      const local = this.authenticator.authenticateLocal(token, scope);
      if (local) return this.admit(request, context, local.record, local.identity);
      if (local === null) throw this.invalid(context, client);
      return this.authenticator.authenticateRemote(token, scope).then(
        (record) => {
          if (!record) throw this.invalid(context, client);
          return this.admit(request, context, record);
        },
        (error: unknown) => this.storeFailure(context, error),
      );
    }

    /** Several scopes: each is one lookup (the cache keys are per scope), first found wins. */
    private async findInScopes(request: ApiTokenGuardRequest, context: ExecutionContext, token: string, client: string | undefined): Promise<boolean> {
      for (const s of scopes) {
        const local = this.authenticator.authenticateLocal(token, s);
        if (local) return this.admit(request, context, local.record, local.identity);
        if (local === null) continue;
        let record: ApiTokenRecord | null;
        try {
          record = await this.authenticator.authenticateRemote(token, s);
        } catch (error) {
          return this.storeFailure(context, error);
        }
        if (record) return this.admit(request, context, record);
      }
      throw this.invalid(context, client);
    }

    /**
     * The request's client for the failed-attempt limit (undefined: not counted); throws 429 with
     * `Retry-After` when that client is over the limit.
     */
    private clientWithin(attempts: ApiTokenFailedAttemptLimiter, request: ApiTokenGuardRequest, context: ExecutionContext): string | undefined {
      const client = attempts.clientOf(request, context);
      if (client === undefined) return undefined;
      const wait = attempts.retryAfter(client, scope);
      if (wait > 0) throw this.refusals.refuse(this.getResponse(context), 429, FAILED_ATTEMPT_ERRORS.exceeded, { 'Retry-After': String(wait) });
      return client;
    }

    /** The 401 of a token that is not valid here (unknown, revoked, expired, malformed); a failed attempt of `client`. */
    private invalid(context: ExecutionContext, client: string | undefined): HttpException {
      if (client !== undefined) this.attempts?.fail(client);
      return this.unauthorized(this.getResponse(context), API_TOKEN_ERRORS.invalidToken);
    }

    private storeFailure(context: ExecutionContext, error: unknown): never {
      if (error instanceof ApiTokenStoreError) throw this.unavailable(this.getResponse(context));
      throw error;
    }

    private badHeader(context: ExecutionContext, message: string): HttpException {
      this.metrics?.lookup(scope, 'bad_header');
      return this.unauthorized(this.getResponse(context), message);
    }

    private admit(request: ApiTokenGuardRequest, context: ExecutionContext, record: ApiTokenRecord, identity?: AuthenticatedApiToken): boolean | Promise<boolean> {
      const accepted = identity ?? toAuthenticated(record);
      // A token without a limit (and no default) pays this one check and nothing else.
      const limited = record.rateLimit || this.limiter.defaultRateLimit ? this.limiter.enforce(record.type, record, this.getResponse(context)) : true;
      // Without a validate hook (the option or an override), the identity is set and the request let in at once.
      if (!this.hook && this.validate === MixinApiTokenGuard.prototype.validate) {
        // An in-process hit hands over the identity cached beside the record: nothing is built per request.
        request.apiToken = accepted;
        return limited;
      }
      return Promise.resolve(limited)
        .then(() => this.validate(accepted, context))
        .then((answer) => {
          if (answer === false) throw this.unauthorized(this.getResponse(context), API_TOKEN_ERRORS.invalidToken);
          if (answer && typeof answer === 'object') {
            const response = this.getResponse(context);
            throw answer.status === 403
              ? this.refusals.refuse(response, 403, answer.message)
              : this.unauthorized(response, answer.message);
          }
          request.apiToken = accepted;
          return true;
        });
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
