import { Body, Delete, Get, HttpCode, Inject, NotFoundException, Param, Post, Put, Query, Req } from '@nestjs/common';
import { ApiTokenService, type ApiTokenSummary, type ApiTokenRotation, type CreatedApiToken } from '../tokens/api-token.service';
import { ApiTokenAdminAudit } from './admin.audit';
import { encodeCursor, parseCreateBody, parseIdParam, parseListQuery, parseRateLimitBody, parseRotateBody } from './admin.input';
import {
  CreateTokenBodySchema,
  CreatedTokenSchema,
  InputRefusalSchema,
  RateLimitSchema,
  RevocationSchema,
  RotateBodySchema,
  RotationSchema,
  TokenPageSchema,
  TokenSummarySchema,
} from './admin.schemas';
import { swagger } from './swagger.optional';

/** One page of `GET <path>/tokens`. */
export interface AdminTokenPage {
  /** The page's tokens, newest first, masked. */
  items: ApiTokenSummary[];
  /** The `cursor` of the next page; null on the last page. */
  nextCursor: string | null;
}

const ID_PARAM = swagger.ApiParam({ name: 'id', description: "The token's id (uuid)", schema: { type: 'string', format: 'uuid' } });
const REFUSED = swagger.ApiBadRequestResponse({ type: InputRefusalSchema, description: 'Bad input: names the field, never quotes its value' });
const NOT_FOUND = swagger.ApiNotFoundResponse({ description: 'No token has this id' });

/**
 * The routes of `<path>/tokens`. {@link adminControllers} mounts them under the application's path,
 * behind its guards (a subclass per registration, so two applications in one process can differ).
 * @internal
 */
export class ApiTokenAdminTokensHandlers {
  constructor(
    @Inject(ApiTokenService) private readonly tokens: ApiTokenService,
    @Inject(ApiTokenAdminAudit) private readonly audit: ApiTokenAdminAudit,
  ) {}

  @Post()
  @swagger.ApiOperation({ summary: 'Create a token', description: 'Answers the token itself: the only time it is shown.' })
  @swagger.ApiBody({ type: CreateTokenBodySchema })
  @swagger.ApiCreatedResponse({ type: CreatedTokenSchema })
  @REFUSED
  create(@Req() request: object, @Body() body: unknown): Promise<CreatedApiToken> {
    return this.audit.record(request, 'create', async (entry) => {
      const created = await this.tokens.create(parseCreateBody(body));
      entry.token = created.id;
      entry.detail = `scope=${created.scope}`;
      return created;
    });
  }

  @Get()
  @swagger.ApiOperation({ summary: 'List tokens, newest first, masked' })
  @swagger.ApiQuery({ name: 'scope', required: false, type: String })
  @swagger.ApiQuery({ name: 'appId', required: false, type: String, format: 'uuid' })
  @swagger.ApiQuery({ name: 'tenantId', required: false, type: String, format: 'uuid' })
  @swagger.ApiQuery({ name: 'limit', required: false, type: Number, description: 'Tokens per page, 1 to 500 (default 50)' })
  @swagger.ApiQuery({ name: 'cursor', required: false, type: String, description: 'The nextCursor of the previous page' })
  @swagger.ApiOkResponse({ type: TokenPageSchema })
  @REFUSED
  list(@Req() request: object, @Query() query: unknown): Promise<AdminTokenPage> {
    return this.audit.record(request, 'list', async (entry) => {
      const { filter, limit, offset } = parseListQuery(query);
      const rows = await this.tokens.list({ ...filter, limit: limit + 1, offset });
      entry.detail = `count=${Math.min(rows.length, limit)}`;
      return { items: rows.slice(0, limit), nextCursor: rows.length > limit ? encodeCursor(offset + limit) : null };
    });
  }

  @Get(':id')
  @swagger.ApiOperation({ summary: 'Show a token, masked' })
  @ID_PARAM
  @swagger.ApiOkResponse({ type: TokenSummarySchema })
  @REFUSED
  @NOT_FOUND
  show(@Req() request: object, @Param('id') id: string): Promise<ApiTokenSummary> {
    return this.audit.record(request, 'show', async (entry) => {
      entry.token = parseIdParam(id, 'id');
      return (await this.tokens.findById(entry.token)) ?? notFound();
    });
  }

  @Delete(':id')
  @swagger.ApiOperation({ summary: 'Revoke a token', description: 'Every instance refuses it at once.' })
  @ID_PARAM
  @swagger.ApiOkResponse({ type: RevocationSchema })
  @REFUSED
  @NOT_FOUND
  revoke(@Req() request: object, @Param('id') id: string): Promise<{ revoked: ApiTokenSummary; cacheCleared: boolean }> {
    return this.audit.record(request, 'revoke', async (entry) => {
      entry.token = parseIdParam(id, 'id');
      const { revoked, cacheCleared } = await this.tokens.revokeById(entry.token);
      if (!revoked[0]) notFound();
      entry.detail = `cacheCleared=${cacheCleared}`;
      return { revoked: revoked[0], cacheCleared };
    });
  }

  @Post(':id/rotate')
  @swagger.ApiOperation({ summary: 'Rotate a token', description: 'Answers the successor (shown this once); the old token works for graceSeconds more.' })
  @ID_PARAM
  @swagger.ApiBody({ type: RotateBodySchema, required: false })
  @swagger.ApiCreatedResponse({ type: RotationSchema })
  @REFUSED
  @swagger.ApiNotFoundResponse({ description: 'No valid token has this id' })
  rotate(@Req() request: object, @Param('id') id: string, @Body() body: unknown): Promise<ApiTokenRotation> {
    return this.audit.record(request, 'rotate', async (entry) => {
      entry.token = parseIdParam(id, 'id');
      const options = parseRotateBody(body);
      const rotation = (await this.tokens.rotateById(entry.token, options)) ?? notFound();
      entry.detail = `successor=${rotation.successor.id} graceSeconds=${options.graceSeconds} cacheCleared=${rotation.cacheCleared}`;
      return rotation;
    });
  }

  @Put(':id/rate-limit')
  @swagger.ApiOperation({ summary: "Set a token's rate limit", description: 'Every instance applies it from its next request.' })
  @ID_PARAM
  @swagger.ApiBody({ type: RateLimitSchema })
  @swagger.ApiOkResponse({ type: TokenSummarySchema })
  @REFUSED
  @NOT_FOUND
  setRateLimit(@Req() request: object, @Param('id') id: string, @Body() body: unknown): Promise<ApiTokenSummary> {
    return this.audit.record(request, 'set-rate-limit', async (entry) => {
      entry.token = parseIdParam(id, 'id');
      const policy = parseRateLimitBody(body);
      entry.detail = `limit=${policy.limit} windowSeconds=${policy.windowSeconds}`;
      return this.changeRateLimit(entry.token, policy);
    });
  }

  @Delete(':id/rate-limit')
  @HttpCode(200)
  @swagger.ApiOperation({ summary: "Remove a token's rate limit", description: "The module's defaultRateLimit, if any, then applies." })
  @ID_PARAM
  @swagger.ApiOkResponse({ type: TokenSummarySchema })
  @REFUSED
  @NOT_FOUND
  clearRateLimit(@Req() request: object, @Param('id') id: string): Promise<ApiTokenSummary> {
    return this.audit.record(request, 'clear-rate-limit', async (entry) => {
      entry.token = parseIdParam(id, 'id');
      return this.changeRateLimit(entry.token, null);
    });
  }

  private async changeRateLimit(id: string, policy: { limit: number; windowSeconds: number } | null): Promise<ApiTokenSummary> {
    const { updated } = await this.tokens.setRateLimit({ id }, policy);
    if (!updated) notFound();
    // Read again for the effective last use (uses not flushed yet), as every summary of this API shows it.
    return (await this.tokens.findById(id)) ?? updated;
  }
}

function notFound(): never {
  throw new NotFoundException({ statusCode: 404, error: 'Not Found', message: 'No token has this id' });
}
