import { Injectable } from '@nestjs/common';
import { ApiTokenService, type ApiTokenSummary, type ListApiTokensInput } from '../tokens/api-token.service';

/**
 * The `api_tokens` table, read-only, for an application: find a token by its value or id, list with
 * pagination. Tokens come back masked ({@link ApiTokenSummary}); to make, revoke or rotate one use
 * {@link ApiTokenService}.
 */
@Injectable()
export class ApiTokenRepository {
  /** @internal Nest's injection: inject the class, never construct it. */
  constructor(private readonly tokens: ApiTokenService) {}

  /** The row of `token` in `scope`, straight from the database (no cache), or null. */
  findByToken(token: string, scope: string): Promise<ApiTokenSummary | null> {
    return this.tokens.findByToken(token, scope);
  }

  /** The row with this id (uuid), or null. */
  findById(id: string): Promise<ApiTokenSummary | null> {
    return this.tokens.findById(id);
  }

  /** Tokens matching every filter, newest first; `limit` and `offset` page through them. */
  list(filter: ListApiTokensInput = {}): Promise<ApiTokenSummary[]> {
    return this.tokens.list(filter);
  }
}
