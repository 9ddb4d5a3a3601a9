import { ApiTokenCacheService } from '../../libs/api-token/src/cache/token-cache.service';
import type { INestApplicationContext } from '@nestjs/common';
import { until } from './until';

/** What an application's in-process cache (L1) holds for a token, with no I/O. */
export function localCacheState(app: INestApplicationContext, token: string, scope: string | null = 'app'): 'hit' | 'negative' | 'miss' {
  const entry = app.get(ApiTokenCacheService).peekLocal(scope, token);
  return entry === undefined ? 'miss' : entry === null ? 'negative' : 'hit';
}

/**
 * Sends `request` until the application's L1 holds the token. A fill that overlaps any eviction stays
 * out of L1 by design, and on a Cluster the message of a create made on another instance can reach
 * this one while its first fill is in flight (PUBLISH crosses the cluster bus after it is answered).
 */
export async function untilCachedLocally(
  app: INestApplicationContext,
  token: string,
  scope: string | null,
  request: () => PromiseLike<unknown>,
): Promise<void> {
  await until(`the token is in the in-process cache`, async () => {
    await request();
    return localCacheState(app, token, scope) === 'hit';
  });
}
