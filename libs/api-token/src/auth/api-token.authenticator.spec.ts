import { ApiTokenAuthenticator } from './api-token.authenticator';
import { resolveApiTokenOptions } from '../api-token.options';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import type { ApiTokenCacheService, LocalHit } from '../cache/token-cache.service';
import type { ApiTokenUsageRecorder } from '../usage/usage.recorder';
import { toAuthenticated, type ApiTokenRecord } from '../store/api-token.record';

const TOKEN = 'app-aaaaaaaaaaaaaaaaaaaaaaaa';
const RECORD: ApiTokenRecord = { id: 'id-1', appId: null, tenantId: null, type: 'app', token: TOKEN, lastUsedAt: null, createdAt: null, expiresAtMs: null };
const HIT: LocalHit = { record: RECORD, identity: toAuthenticated(RECORD), usageKey: `api_token_active:app:${TOKEN}` };

/** An authenticator over an in-process cache that answers `entry`, with a token pattern that counts its tests. */
function setUp(entry: LocalHit | null | undefined, hashTokens = false) {
  const pattern = /^[A-Za-z0-9\-._~+/]+=*$/;
  const options = resolveApiTokenOptions({ tokenPattern: pattern, hashTokens });
  // Spied after the options are resolved: resolving tests the pattern once itself.
  const test = jest.spyOn(pattern, 'test');
  const peekLocal = jest.fn(() => entry);
  const recordKey = jest.fn();
  const metrics = new ApiTokenMetrics();
  const authenticator = new ApiTokenAuthenticator(
    { peekLocal } as unknown as ApiTokenCacheService,
    {} as never,
    { recordKey } as unknown as ApiTokenUsageRecorder,
    {} as never,
    options,
    metrics,
  );
  return { authenticator, test, peekLocal, recordKey, lookups: () => metrics.snapshot().scopes.app.lookups };
}

describe('ApiTokenAuthenticator.authenticateLocal', () => {
  it('answers an in-process hit without testing the token pattern again (L1 holds only tokens that passed it), and counts the use', () => {
    const { authenticator, test, recordKey, lookups } = setUp(HIT);
    expect(authenticator.authenticateLocal(TOKEN, 'app')).toBe(HIT);
    expect(test).not.toHaveBeenCalled();
    expect(recordKey).toHaveBeenCalledWith(HIT.usageKey);
    expect(lookups().local_hit).toBe(1);
  });

  it('tests the pattern when L1 misses: a malformed token is refused with no I/O and counted as malformed', () => {
    const { authenticator, test, lookups } = setUp(undefined);
    expect(authenticator.authenticateLocal('app-a*b', 'app')).toBeNull();
    expect(authenticator.authenticateLocal(TOKEN, 'app')).toBeUndefined();
    expect(test).toHaveBeenCalledTimes(2);
    expect(lookups().malformed).toBe(1);
  });

  it('refuses a token longer than the column before any cache read', () => {
    const { authenticator, peekLocal, lookups } = setUp(HIT);
    expect(authenticator.authenticateLocal(`app-${'a'.repeat(252)}`, 'app')).toBeNull();
    expect(peekLocal).not.toHaveBeenCalled();
    expect(lookups().malformed).toBe(1);
  });

  it('in hashed mode tests the pattern first, so a malformed token costs no SHA-256', () => {
    const { authenticator, peekLocal, lookups } = setUp(HIT, true);
    expect(authenticator.authenticateLocal('app-a*b', 'app')).toBeNull();
    expect(peekLocal).not.toHaveBeenCalled();
    expect(lookups().malformed).toBe(1);
  });
});
