import { ExecutionContext, createParamDecorator } from '@nestjs/common';
import type { ApiTokenRequest } from './api-token.guard';

/**
 * Hands a handler the token the guard accepted (id, appId, tenantId, type):
 * `whoami(@CurrentApiToken() token: AuthenticatedApiToken)`.
 */
export const CurrentApiToken = createParamDecorator(
  (_data: unknown, context: ExecutionContext) => context.switchToHttp().getRequest<Partial<ApiTokenRequest>>().apiToken,
);
