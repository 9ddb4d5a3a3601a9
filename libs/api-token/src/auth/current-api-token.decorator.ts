import { ExecutionContext, createParamDecorator } from '@nestjs/common';
import { apiTokenRequestOf } from './api-token.guard';
import type { AuthenticatedApiToken } from '../store/api-token.record';

/**
 * Hands a handler the token the guard accepted (id, appId, tenantId, scope), or one of its fields:
 * `whoami(@CurrentApiToken() token: AuthenticatedApiToken)`, `list(@CurrentApiToken('tenantId') tenantId: string | null)`.
 * Reads the request the way the guard does, in HTTP, GraphQL, WebSocket and RPC contexts.
 */
export const CurrentApiToken = createParamDecorator(
  (field: keyof AuthenticatedApiToken | undefined, context: ExecutionContext) => {
    // getArgByIndex(0) in HTTP, as switchToHttp().getRequest() has it, without the three closures
    // switchToHttp() assigns to the context on every call.
    const request = context.getType() === 'http' ? context.getArgByIndex<{ apiToken?: AuthenticatedApiToken }>(0) : apiTokenRequestOf(context);
    const token = request.apiToken;
    return field === undefined ? token : token?.[field];
  },
);
