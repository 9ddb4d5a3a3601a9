import { API_TOKEN_ERRORS, type ApiTokenRequest, parseAuthorization } from '../libs/api-token/src/auth/api-token.guard';
import { type CanActivate, type ExecutionContext, Injectable, UnauthorizedException } from '@nestjs/common';
import type { Pool } from 'pg';
import { DataSource } from 'typeorm';

/** What the naive guard reads: the same identity the library's guard attaches. */
const LOOKUP = 'SELECT id::text, app_id::text, tenant_id::text, type FROM api_tokens WHERE token = $1 AND type = $2 LIMIT 1';

/**
 * The design a user would write first, for comparison only: one PostgreSQL query per request,
 * no cache, no usage recording. Same header parsing and 401 answers as `ApiTokenGuard('app')`.
 */
@Injectable()
export class NaiveTokenGuard implements CanActivate {
  constructor(private readonly dataSource: DataSource) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = context.switchToHttp().getRequest<{ headers: Record<string, string | undefined> } & Partial<ApiTokenRequest>>();
    const parsed = parseAuthorization(request.headers.authorization);
    if ('error' in parsed) throw new UnauthorizedException(parsed.error);
    const pool = (this.dataSource.driver as unknown as { master: Pool }).master;
    const { rows } = await pool.query<{ id: string; app_id: string | null; tenant_id: string | null; type: string }>(LOOKUP, [parsed.token, 'app']);
    if (rows.length === 0) throw new UnauthorizedException(API_TOKEN_ERRORS.invalidToken);
    const [row] = rows;
    request.apiToken = { id: row.id, appId: row.app_id, tenantId: row.tenant_id, scope: row.type };
    return true;
  }
}
