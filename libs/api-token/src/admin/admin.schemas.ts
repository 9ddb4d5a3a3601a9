import { swagger } from './swagger.optional';

/*
 * The OpenAPI description of what the admin API takes and answers. Documentation only: requests are
 * checked by admin.input.ts (the rules the CLI and the service share), answers are the service's own
 * summaries. Every type is given explicitly: `string | null` reflects as Object.
 */

const UUID = { type: String, format: 'uuid' } as const;
const NAIVE_UTC = { type: String, description: 'Naive UTC ISO-8601, e.g. 2026-02-03T10:00:00.123000', example: '2026-02-03T10:00:00' } as const;

/** A rate limit: at most `limit` requests per `windowSeconds`. */
export class RateLimitSchema {
  @swagger.ApiProperty({ type: Number, minimum: 1, maximum: 2_147_483_647, example: 100 })
  limit!: number;

  @swagger.ApiProperty({ type: Number, minimum: 1, maximum: 86_400, example: 60 })
  windowSeconds!: number;
}

/** A token as the admin API shows it: never the secret. */
export class TokenSummarySchema {
  @swagger.ApiProperty({ ...UUID })
  id!: string;

  @swagger.ApiProperty({ ...UUID, nullable: true })
  appId!: string | null;

  @swagger.ApiProperty({ ...UUID, nullable: true })
  tenantId!: string | null;

  @swagger.ApiProperty({ type: String, example: 'app' })
  scope!: string;

  @swagger.ApiProperty({ type: String, description: 'The prefix (clear-text mode, generated shape) followed by asterisks', example: 'app-************************' })
  maskedToken!: string;

  @swagger.ApiProperty({ ...NAIVE_UTC, nullable: true, description: 'The effective last use: the stored one, or a newer use not flushed yet' })
  lastUsedAt!: string | null;

  @swagger.ApiProperty({ ...NAIVE_UTC, nullable: true })
  createdAt!: string | null;

  @swagger.ApiProperty({ type: () => RateLimitSchema, nullable: true, description: "The token's own limit; null: the module's defaultRateLimit, if any" })
  rateLimit!: RateLimitSchema | null;

  @swagger.ApiProperty({ ...NAIVE_UTC, nullable: true, description: 'null: never' })
  expiresAt!: string | null;
}

/** A new token: the only answer that holds the token itself. */
export class CreatedTokenSchema extends TokenSummarySchema {
  @swagger.ApiProperty({ type: String, description: 'The token: shown this once, never again', example: 'app-Xk3pQ9vLm2RtY7wZa8Nc4Hd6' })
  token!: string;
}

/** One page of the list. */
export class TokenPageSchema {
  @swagger.ApiProperty({ type: () => [TokenSummarySchema] })
  items!: TokenSummarySchema[];

  @swagger.ApiProperty({ type: String, nullable: true, description: 'Give it as `cursor` for the next page; null on the last page' })
  nextCursor!: string | null;
}

/** The outcome of a revocation. */
export class RevocationSchema {
  @swagger.ApiProperty({ type: () => TokenSummarySchema, description: 'The token as it was' })
  revoked!: TokenSummarySchema;

  @swagger.ApiProperty({ type: Boolean, description: 'false: Redis did not confirm; the server retries, cached entries may live until they expire' })
  cacheCleared!: boolean;
}

/** The outcome of a rotation. */
export class RotationSchema {
  @swagger.ApiProperty({ type: () => CreatedTokenSchema, description: 'The new token (shown this once)' })
  successor!: CreatedTokenSchema;

  @swagger.ApiProperty({ type: () => TokenSummarySchema, description: 'The old token, with its new expiry (or as revoked, for a grace of 0)' })
  previous!: TokenSummarySchema;

  @swagger.ApiProperty({ type: Boolean })
  cacheCleared!: boolean;
}

/** The outcome of a tenant invalidation. */
export class TenantInvalidationSchema {
  @swagger.ApiProperty({ type: Number, description: 'Cache entries dropped' })
  dropped!: number;

  @swagger.ApiProperty({ type: Boolean })
  cacheCleared!: boolean;
}

/** A refusal of bad input: names the field, never quotes its value. */
export class InputRefusalSchema {
  @swagger.ApiProperty({ type: Number, example: 400 })
  statusCode!: number;

  @swagger.ApiProperty({ type: String, example: 'Bad Request' })
  error!: string;

  @swagger.ApiProperty({ type: String, example: '"appId" must be a UUID' })
  message!: string;

  @swagger.ApiProperty({ type: String, example: 'appId' })
  field!: string;
}

/** The body of `POST /tokens`. */
export class CreateTokenBodySchema {
  @swagger.ApiProperty({ type: String, description: '1 to 16 letters, digits, "_", "." or "-"; not "any" or "None"', example: 'app' })
  scope!: string;

  @swagger.ApiPropertyOptional({ ...UUID, nullable: true })
  appId?: string | null;

  @swagger.ApiPropertyOptional({ ...UUID, nullable: true })
  tenantId?: string | null;

  @swagger.ApiPropertyOptional({ type: String, description: 'Text before the "-" (default: app, dataset, or the scope)' })
  prefix?: string;

  @swagger.ApiPropertyOptional({ type: Number, minimum: 1, description: 'Seconds until the token stops working; not with expiresAt' })
  expiresInSeconds?: number;

  @swagger.ApiPropertyOptional({ type: String, format: 'date-time', description: 'When the token stops working (UTC unless it has an offset); not with expiresInSeconds' })
  expiresAt?: string;

  @swagger.ApiPropertyOptional({ type: () => RateLimitSchema, nullable: true })
  rateLimit?: RateLimitSchema | null;
}

/** The body of `POST /tokens/:id/rotate`. */
export class RotateBodySchema {
  @swagger.ApiPropertyOptional({ type: Number, minimum: 0, default: 0, description: 'Seconds the old token keeps working; 0 revokes it at once' })
  graceSeconds?: number;
}
