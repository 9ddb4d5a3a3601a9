import { BadRequestException } from '@nestjs/common';
import { isRateLimitPolicy } from '../limits/rate-limit.policy';
import type { RateLimitPolicy } from '../store/api-token.record';
import { type CreateApiTokenInput, isUuid, type ListApiTokensInput } from '../tokens/api-token.service';
import { UTC_DATE_RULE, isWholeSeconds, parseUtcDate, wholeSecondsRule } from '../tokens/token.input';
import { SCOPE_RULE, isScope } from '../tokens/token.scope';

/*
 * What the admin API reads from a request, checked by hand rather than with class-validator (which
 * would be a new hard dependency of the package, and whose messages quote values): each rule is the one
 * the CLI and ApiTokenService apply (tokens/token.input.ts, token.scope.ts, the rate-limit policy), so
 * the three front doors accept the same values. A refusal is a 400 naming the field, never its value:
 * a token pasted into the wrong field must not come back in the answer or the logs.
 */

/** The body of a 400: Nest's shape, plus the field at fault. */
export interface AdminInputRefusal {
  /** Always 400. */
  statusCode: 400;
  /** Always `Bad Request`. */
  error: 'Bad Request';
  /** What the field must be, e.g. `"appId" must be a UUID`; never the value given. */
  message: string;
  /** The field at fault (`body` for the body as a whole, or a field whose name cannot be repeated). */
  field: string;
}

/** A 400 naming `field`; `rule` says what the field must be and never quotes its value. */
export function refuseField(field: string, rule: string): BadRequestException {
  const body: AdminInputRefusal = { statusCode: 400, error: 'Bad Request', message: `"${field}" must be ${rule}`, field };
  return new BadRequestException(body);
}

/** A field name safe to repeat in an answer (the name of a field we do not know could be anything, a token too). */
const PRINTABLE_NAME = /^[A-Za-z][A-Za-z0-9_]{0,31}$/;

/** The body as a plain object holding only `allowed` fields ({} for no body, as Fastify has it). */
function fieldsOf(body: unknown, allowed: readonly string[]): Record<string, unknown> {
  if (body === undefined || body === null || body === '') return {};
  if (typeof body !== 'object' || Array.isArray(body)) throw refuseField('body', 'a JSON object');
  const fields = body as Record<string, unknown>;
  for (const name of Object.keys(fields)) {
    if (!allowed.includes(name)) {
      const shown = PRINTABLE_NAME.test(name) ? name : 'body';
      throw refuseField(shown, `one of the known fields (${allowed.join(', ')}); unknown fields are refused`);
    }
  }
  return fields;
}

const optionalUuid = (fields: Record<string, unknown>, name: string): string | null | undefined => {
  const value = fields[name];
  if (value === undefined || value === null) return value as undefined | null;
  if (!isUuid(value)) throw refuseField(name, 'a UUID');
  return value;
};

/** `{ limit, windowSeconds }`, the policy's own bounds. */
const RATE_LIMIT_RULE = 'null or { limit, windowSeconds }: integers, limit 1 to 2147483647, windowSeconds 1 to 86400';

function rateLimitOf(value: unknown, field: string): RateLimitPolicy | null | undefined {
  if (value === undefined || value === null) return value as undefined | null;
  if (!isRateLimitPolicy(value) || Object.keys(value).some((k) => k !== 'limit' && k !== 'windowSeconds')) throw refuseField(field, RATE_LIMIT_RULE);
  return { limit: value.limit, windowSeconds: value.windowSeconds };
}

/** `POST /tokens`: `{ scope, appId?, tenantId?, prefix?, expiresInSeconds? | expiresAt?, rateLimit? }`. */
export function parseCreateBody(body: unknown): CreateApiTokenInput {
  const fields = fieldsOf(body, ['scope', 'appId', 'tenantId', 'prefix', 'expiresInSeconds', 'expiresAt', 'rateLimit']);
  if (!isScope(fields.scope)) throw refuseField('scope', SCOPE_RULE);
  const input: CreateApiTokenInput = {
    scope: fields.scope,
    appId: optionalUuid(fields, 'appId'),
    tenantId: optionalUuid(fields, 'tenantId'),
    rateLimit: rateLimitOf(fields.rateLimit, 'rateLimit'),
  };
  // The prefix's own rules (and the hint that it looks like a pasted token) are the service's.
  if (fields.prefix !== undefined) {
    if (typeof fields.prefix !== 'string') throw refuseField('prefix', 'a string');
    input.prefix = fields.prefix;
  }
  if (fields.expiresInSeconds != null && fields.expiresAt != null) throw refuseField('expiresAt', 'absent when "expiresInSeconds" is given (one or the other)');
  if (fields.expiresInSeconds != null) {
    if (!isWholeSeconds(fields.expiresInSeconds, 1)) throw refuseField('expiresInSeconds', wholeSecondsRule(1));
    input.expiresInSeconds = fields.expiresInSeconds;
  }
  if (fields.expiresAt != null) {
    const date = parseUtcDate(fields.expiresAt);
    if (!date) throw refuseField('expiresAt', UTC_DATE_RULE);
    if (date.getTime() <= Date.now()) throw refuseField('expiresAt', 'in the future');
    input.expiresAt = date;
  }
  return input;
}

/** Tokens per page when the query names no `limit`. */
export const DEFAULT_PAGE_SIZE = 50;
/** The largest `limit` of a page. */
export const MAX_PAGE_SIZE = 500;

/** A list query, as the service takes it (`limit` + 1 rows: the extra one says whether a next page exists). */
export interface AdminListQuery {
  filter: ListApiTokensInput;
  limit: number;
  offset: number;
}

function queryString(query: Record<string, unknown>, name: string): string | undefined {
  const value = query[name];
  if (value === undefined || value === '') return undefined;
  // A repeated parameter arrives as an array (Express) or the last value (Fastify): refused either way it is seen.
  if (typeof value !== 'string') throw refuseField(name, 'given once');
  return value;
}

/** `GET /tokens?scope=&appId=&tenantId=&limit=&cursor=`. */
export function parseListQuery(query: unknown): AdminListQuery {
  const fields = fieldsOf(query ?? {}, ['scope', 'appId', 'tenantId', 'limit', 'cursor']);
  const scope = queryString(fields, 'scope');
  if (scope !== undefined && !isScope(scope)) throw refuseField('scope', SCOPE_RULE);
  const appId = queryString(fields, 'appId');
  if (appId !== undefined && !isUuid(appId)) throw refuseField('appId', 'a UUID');
  const tenantId = queryString(fields, 'tenantId');
  if (tenantId !== undefined && !isUuid(tenantId)) throw refuseField('tenantId', 'a UUID');
  const limitText = queryString(fields, 'limit');
  const limit = limitText === undefined ? DEFAULT_PAGE_SIZE : /^\d{1,4}$/.test(limitText) ? Number(limitText) : NaN;
  if (!(limit >= 1 && limit <= MAX_PAGE_SIZE)) throw refuseField('limit', `an integer from 1 to ${MAX_PAGE_SIZE}`);
  const cursor = queryString(fields, 'cursor');
  const offset = cursor === undefined ? 0 : decodeCursor(cursor);
  return { filter: { scope, appId, tenantId }, limit, offset };
}

/**
 * A cursor is opaque to clients: the position of the next page in the list's order (newest first),
 * encoded. A token created between two pages shifts the rest by one (one summary is seen twice); one
 * revoked meanwhile makes the next page skip one.
 */
export function encodeCursor(offset: number): string {
  return Buffer.from(`o:${offset}`, 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): number {
  const match = /^[A-Za-z0-9_-]{1,24}$/.test(cursor) ? /^o:(\d{1,12})$/.exec(Buffer.from(cursor, 'base64url').toString('utf8')) : null;
  if (!match) throw refuseField('cursor', 'a cursor this API answered (nextCursor)');
  return Number(match[1]);
}

/** A token or tenant id in the path. */
export function parseIdParam(value: unknown, field: 'id' | 'tenantId'): string {
  if (!isUuid(value)) throw refuseField(field, 'a UUID');
  return value;
}

/** `POST /tokens/:id/rotate`: `{ graceSeconds? }` (default 0: the old token is revoked at once). */
export function parseRotateBody(body: unknown): { graceSeconds: number } {
  const fields = fieldsOf(body, ['graceSeconds']);
  if (fields.graceSeconds == null) return { graceSeconds: 0 };
  if (!isWholeSeconds(fields.graceSeconds, 0)) throw refuseField('graceSeconds', wholeSecondsRule(0));
  return { graceSeconds: fields.graceSeconds };
}

/** `PUT /tokens/:id/rate-limit`: `{ limit, windowSeconds }`. */
export function parseRateLimitBody(body: unknown): RateLimitPolicy {
  const fields = fieldsOf(body, ['limit', 'windowSeconds']);
  const policy = { limit: fields.limit, windowSeconds: fields.windowSeconds };
  if (!isRateLimitPolicy(policy)) {
    throw refuseField(isRateLimitPolicy({ limit: policy.limit, windowSeconds: 1 }) ? 'windowSeconds' : 'limit', 'an integer: limit 1 to 2147483647, windowSeconds 1 to 86400');
  }
  return policy;
}
