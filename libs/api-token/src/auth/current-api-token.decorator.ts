import { ExecutionContext, createParamDecorator } from '@nestjs/common';
import type { ApiTokenRequest } from './api-token.guard';

/**
 * Hands a handler the token the guard accepted (id, appId, tenantId, scope):
 * `whoami(@CurrentApiToken() token: AuthenticatedApiToken)`.
 */
export const CurrentApiToken = createParamDecorator(
  // getArgByIndex(0) is the request, as switchToHttp().getRequest() has it, without the three closures
  // switchToHttp() assigns to the context on every call.
  (_data: unknown, context: ExecutionContext) => context.getArgByIndex<Partial<ApiTokenRequest>>(0).apiToken,
);
