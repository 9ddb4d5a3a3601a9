// nestjs-api-token/admin: the admin HTTP API. Kept out of the main entry: an application that never
// serves it loads none of it, and its OpenAPI metadata needs the optional peer @nestjs/swagger (the API
// works without it).

export { ApiTokenAdminModule } from './admin/admin.module';
export type { ApiTokenAdminOptions } from './admin/admin.options';
export type { AdminInputRefusal } from './admin/admin.input';
export type { AdminTokenPage } from './admin/admin-tokens.controller';
// The shapes of the answers, also exported by the main entry: named here so a client needs one import.
export type { ApiTokenSummary } from './tokens/api-token.service';
export type { RateLimitPolicy } from './store/api-token.record';
