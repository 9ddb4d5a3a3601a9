import { ACTIVE_KEY_PREFIX, parseScopedKey } from '../api-token.keys';
import type { LastUsedUpdate } from '../store/api-token.repository';
import { toNaiveUtc } from '../store/api-token.record';

/**
 * The usage flush's page logic, pure: what a page of replies holds, and which index sets fill a page.
 * Kept apart from the service (which talks to Redis and PostgreSQL) so unit tests and mutation testing
 * (`npm run mutate`) reach every branch of it.
 */

/** A use read from Redis: the row to update, and the key and value it came from. */
export interface TakenUse extends LastUsedUpdate {
  key: string;
  /** The value read, exactly: the key is deleted only while it still holds it. */
  value: string;
}

/**
 * The usable uses of a page of GET replies, counted in `stats`, and the keys to delete now: missing
 * ('' : only the index names them) or unusable (counted as dropped). A key answered with an error
 * (a slot that moved, a key of another type) is left alone.
 */
export function usesOf(keys: string[], replies: [Error | null, unknown][], stats: { taken: number; dropped: number }, now: number) {
  const uses: TakenUse[] = [];
  const discard: { key: string; value: string }[] = [];
  replies.forEach(([error, value], i) => {
    if (error) return;
    if (value == null) {
      discard.push({ key: keys[i], value: '' });
      return;
    }
    stats.taken++;
    const use = parseActiveEntry(keys[i], String(value), now);
    if (use) uses.push(use);
    else {
      stats.dropped++;
      discard.push({ key: keys[i], value: String(value) });
    }
  });
  return { uses, discard };
}

/** How far ahead of Redis's clock a use time may be (clock skew between hosts); later ones are dropped. */
export const MAX_FUTURE_SKEW_MS = 5 * 60_000;

/**
 * Reads one taken `api_token_active:{scope}:{token}` entry (scope `None` or `any`: every scope), or
 * null when the key or its time is unusable: a token PostgreSQL text cannot hold, or a time more than
 * {@link MAX_FUTURE_SKEW_MS} ahead of `now` (updates only move forward, so it would stick).
 */
export function parseActiveEntry(key: string, value: string, now = Date.now()): TakenUse | null {
  const parsed = parseScopedKey(ACTIVE_KEY_PREFIX, key);
  const lastUsedAt = toNaiveUtc(value);
  if (!parsed || !lastUsedAt || key.includes('\u0000')) return null;
  if (Date.parse(`${lastUsedAt}Z`) > now + MAX_FUTURE_SKEW_MS) return null;
  return { key, value, token: parsed.token, scope: parsed.scope, lastUsedAt };
}

/** Where the flush is in one index set: its SSCAN cursor, and about how many names are left. */
export interface IndexScan {
  index: string;
  cursor: string;
  size: number;
}

/**
 * Takes from the front of `pending` the indexes that fill one page (by their sizes); an index the
 * page does not finish comes back with its cursor (see the caller).
 */
export function takePage(pending: IndexScan[], pageSize: number): IndexScan[] {
  const page: IndexScan[] = [];
  let total = 0;
  while (pending.length && total < pageSize) {
    const next = pending.shift()!;
    page.push(next);
    total += next.size;
  }
  return page;
}
