import type { CanActivate, Type } from '@nestjs/common';
import { ApiTokenInputError } from '../api-token.errors';

/** Options of {@link ApiTokenAdminModule.register}. */
export interface ApiTokenAdminOptions {
  /**
   * Where the admin API is mounted: `admin` (the default) serves `/admin/tokens` and
   * `/admin/tenants/:tenantId/invalidate`. Letters, digits, `-`, `_`, `.` and `/`; leading and trailing
   * `/` are ignored. Composes with the application's global prefix and its `RouterModule`.
   */
  path?: string;
  /**
   * The guards every admin route runs, in order; at least one (the admin API never goes unprotected
   * by mistake). E.g. `[ApiTokenGuard('admin')]`: admin tokens are tokens of scope `admin`, created
   * with `create --scope admin`.
   */
  guards: (Type<CanActivate> | CanActivate)[];
  /**
   * Who the audit log names for a request: a string the application derives from the request its
   * guards let through. Default: the `ApiTokenGuard`'s token, `token:<id>(scope=<scope>)`, else `unknown`.
   */
  actor?: (request: unknown) => string | null | undefined;
}

/** The options once checked. @internal */
export interface ResolvedAdminOptions {
  path: string;
  guards: (Type<CanActivate> | CanActivate)[];
  actor?: (request: unknown) => string | null | undefined;
}

/** Injection token of the resolved options. @internal */
export const API_TOKEN_ADMIN_OPTIONS = Symbol('API_TOKEN_ADMIN_OPTIONS');

const PATH = /^[A-Za-z0-9._~/-]{0,200}$/;

/** Checks the options at registration, naming the option at fault. @internal */
export function resolveAdminOptions(options: ApiTokenAdminOptions): ResolvedAdminOptions {
  const { path = 'admin', guards, actor } = options ?? ({} as ApiTokenAdminOptions);
  if (typeof path !== 'string' || !PATH.test(path) || path.includes('//')) {
    throw new ApiTokenInputError('ApiTokenAdminModule: "path" must be letters, digits, "-", "_", ".", "~" and single "/"');
  }
  const isGuard = (g: unknown) => typeof g === 'function' || (typeof g === 'object' && g !== null && typeof (g as CanActivate).canActivate === 'function');
  if (!Array.isArray(guards) || guards.length === 0 || !guards.every(isGuard)) {
    throw new ApiTokenInputError('ApiTokenAdminModule: "guards" must be a non-empty array of guards (classes or instances), e.g. [ApiTokenGuard(\'admin\')]');
  }
  if (actor !== undefined && typeof actor !== 'function') throw new ApiTokenInputError('ApiTokenAdminModule: "actor" must be a function');
  return { path: path.replace(/^\/+|\/+$/g, ''), guards: [...guards], actor };
}
