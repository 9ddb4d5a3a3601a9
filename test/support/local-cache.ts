import { ApiTokenCacheService } from '../../libs/api-token/src/cache/token-cache.service';
import type { INestApplicationContext } from '@nestjs/common';

/** What an application's in-process cache (L1) holds for a token, with no I/O. */
export function localCacheState(app: INestApplicationContext, token: string, scope: string | null = 'app'): 'hit' | 'negative' | 'miss' {
  const entry = app.get(ApiTokenCacheService).peekLocal(scope, token);
  return entry === undefined ? 'miss' : entry === null ? 'negative' : 'hit';
}
