import { ApiTokenGuard, type AuthenticatedApiToken, CurrentApiToken } from '../../libs/api-token/src';
import { Controller, Get, UseGuards } from '@nestjs/common';

/** Routes of the guard's extensions (several scopes, one field of the identity), for test/guard-extension.e2e-spec.ts. */
@Controller('extras')
export class GuardExtrasController {
  @Get('any/whoami')
  @UseGuards(ApiTokenGuard(['app', 'dataset']))
  any(@CurrentApiToken() token: AuthenticatedApiToken, @CurrentApiToken('tenantId') tenantId: string | null): object {
    return { ...token, tenant: tenantId };
  }
}
