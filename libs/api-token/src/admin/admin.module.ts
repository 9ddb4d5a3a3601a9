import { Controller, type DynamicModule, Module, type Type, UseGuards, applyDecorators } from '@nestjs/common';
import { ApiTokenAdminAudit } from './admin.audit';
import { API_TOKEN_ADMIN_OPTIONS, type ApiTokenAdminOptions, type ResolvedAdminOptions, resolveAdminOptions } from './admin.options';
import { ApiTokenAdminTenantsHandlers } from './admin-tenants.controller';
import { ApiTokenAdminTokensHandlers } from './admin-tokens.controller';
import {
  CreatedTokenSchema,
  InputRefusalSchema,
  RateLimitSchema,
  RevocationSchema,
  RotationSchema,
  TenantInvalidationSchema,
  TokenPageSchema,
  TokenSummarySchema,
} from './admin.schemas';
import { swagger } from './swagger.optional';

/** The OpenAPI tag of every admin route. */
const TAG = 'api-token admin';

/**
 * The controllers of one registration: subclasses of the handlers carrying this registration's path
 * and guards. Decorating the handler classes themselves would make every application in the process
 * (tests run several) share the last registration's path and guards.
 */
function adminControllers(options: ResolvedAdminOptions): Type[] {
  const at = (tail: string) => (options.path ? `${options.path}/${tail}` : tail);

  // What both controllers carry: this registration's path and guards, and their OpenAPI tag and answers.
  const admin = (tail: string) =>
    applyDecorators(
      Controller(at(tail)),
      UseGuards(...options.guards),
      swagger.ApiTags(TAG),
      swagger.ApiBearerAuth(),
      swagger.ApiUnauthorizedResponse({ description: 'No token, or not one the guards accept' }),
      swagger.ApiForbiddenResponse({ description: 'A guard refused the token' }),
    );

  @admin('tokens')
  @swagger.ApiExtraModels(TokenSummarySchema, CreatedTokenSchema, TokenPageSchema, RevocationSchema, RotationSchema, RateLimitSchema, InputRefusalSchema)
  class ApiTokenAdminTokensController extends ApiTokenAdminTokensHandlers {}

  @admin('tenants')
  @swagger.ApiExtraModels(TenantInvalidationSchema)
  class ApiTokenAdminTenantsController extends ApiTokenAdminTenantsHandlers {}

  return [ApiTokenAdminTokensController, ApiTokenAdminTenantsController];
}

/**
 * The admin HTTP API (`nestjs-api-token/admin`): create, list, show, revoke and rotate tokens, set
 * or remove their rate limit, invalidate a tenant's cache, JSON in and out, each action written to
 * an audit log line (context `ApiTokenAdmin`). Mounted under the path the application chooses,
 * behind the guards it chooses; with `@nestjs/swagger` installed, the routes carry OpenAPI metadata.
 * Needs `ApiTokenModule` registered globally (its default).
 *
 * ```ts
 * imports: [ApiTokenModule.forRoot({}), ApiTokenAdminModule.register({ path: 'admin', guards: [ApiTokenGuard('admin')] })]
 * ```
 */
@Module({})
export class ApiTokenAdminModule {
  /** The admin API under `options.path` (default `admin`), behind `options.guards`; throws ApiTokenInputError on bad options. */
  static register(options: ApiTokenAdminOptions): DynamicModule {
    const resolved = resolveAdminOptions(options);
    return {
      module: ApiTokenAdminModule,
      controllers: adminControllers(resolved),
      providers: [{ provide: API_TOKEN_ADMIN_OPTIONS, useValue: resolved }, ApiTokenAdminAudit],
    };
  }
}
