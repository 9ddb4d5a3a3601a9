import type { AuthenticatedApiToken } from '../store/api-token.record';

/**
 * A request the guard has let through: `request.apiToken` is the token's identity. Type a handler's
 * request with it (`@Req() req: Request & ApiTokenRequest`) or use {@link CurrentApiToken}.
 */
export interface ApiTokenRequest {
  /** The accepted token's identity (never the token itself). */
  apiToken: AuthenticatedApiToken;
}

/**
 * What the guard reads of a request: its headers (Express's is Node's request, Fastify's holds the raw
 * one in `raw`). `apiToken` is set on it when the token is accepted, where {@link CurrentApiToken} reads it.
 */
export interface ApiTokenGuardRequest extends Partial<ApiTokenRequest> {
  /** The request's headers, names in lower case. */
  headers: Record<string, string | string[] | undefined>;
  /** Node's raw header list (Express), read to tell a repeated `Authorization` header. */
  rawHeaders?: string[];
  /** Fastify's raw Node request. */
  raw?: {
    /** Node's raw header list. */
    rawHeaders?: string[];
  };
  /**
   * The client's address as Express or Fastify sees it (their `trustProxy` settings decide whether a
   * proxy's `X-Forwarded-For` is believed): the default client key of the `failedAttemptLimit` option.
   */
  ip?: string;
  /** The connection (Node's request), whose peer address is the client key when `ip` is missing. */
  socket?: {
    /** The peer's address. */
    remoteAddress?: string;
  };
}

/**
 * The default client key of the `failedAttemptLimit` option: the request's `ip` (Express, Fastify),
 * else its connection's peer address; undefined (the request is not counted) when it has neither.
 */
export function clientAddressOf(request: ApiTokenGuardRequest): string | undefined {
  const ip = request.ip ?? request.socket?.remoteAddress;
  return typeof ip === 'string' && ip !== '' ? ip : undefined;
}
