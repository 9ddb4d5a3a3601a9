import { HttpCode, Inject, Param, Post, Req } from '@nestjs/common';
import { ApiTokenService, type TenantInvalidation } from '../tokens/api-token.service';
import { ApiTokenAdminAudit } from './admin.audit';
import { parseIdParam } from './admin.input';
import { InputRefusalSchema, TenantInvalidationSchema } from './admin.schemas';
import { swagger } from './swagger.optional';

/** The routes of `<path>/tenants`, mounted like {@link ApiTokenAdminTokensHandlers}. @internal */
export class ApiTokenAdminTenantsHandlers {
  constructor(
    @Inject(ApiTokenService) private readonly tokens: ApiTokenService,
    @Inject(ApiTokenAdminAudit) private readonly audit: ApiTokenAdminAudit,
  ) {}

  @Post(':tenantId/invalidate')
  @HttpCode(200)
  @swagger.ApiOperation({ summary: "Drop every cached entry of a tenant", description: 'On every instance; the tokens stay valid.' })
  @swagger.ApiParam({ name: 'tenantId', description: 'The tenant (uuid)', schema: { type: 'string', format: 'uuid' } })
  @swagger.ApiOkResponse({ type: TenantInvalidationSchema })
  @swagger.ApiBadRequestResponse({ type: InputRefusalSchema })
  invalidate(@Req() request: object, @Param('tenantId') tenantId: string): Promise<TenantInvalidation> {
    return this.audit.record(request, 'invalidate-tenant', async (entry) => {
      entry.tenant = parseIdParam(tenantId, 'tenantId');
      const result = await this.tokens.invalidateTenant(entry.tenant);
      entry.detail = `dropped=${result.dropped} cacheCleared=${result.cacheCleared}`;
      return result;
    });
  }
}
