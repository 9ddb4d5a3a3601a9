import { ApiTokenAuthenticator } from './api-token.authenticator';
import { resolveApiTokenOptions } from '../api-token.options';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import type { ApiTokenCacheService, LocalHit } from '../cache/token-cache.service';
import type { ApiTokenUsageRecorder } from '../usage/usage.recorder';
import { toAuthenticated, type ApiTokenRecord } from '../store/api-token.record';

const TOKEN = 'app-aaaaaaaaaaaaaaaaaaaaaaaa';
const RECORD: ApiTokenRecord = { id: 'id-1', appId: null, tenantId: null, type: 'app', token: TOKEN, lastUsedAt: null, createdAt: null, expiresAtMs: null };
const HIT: LocalHit = { record: RECORD, identity: toAuthenticated(RECORD), usageKey: `api_token_active:app:${TOKEN}`, expiresAt: Infinity };
/** The in-process cache's clock reading, as the stub gives it. */
const NOW = 42;

/** An authenticator over an in-process cache that answers `entry`, with a token pattern that counts its tests. */
function setUp(entry: LocalHit | null | undefined, hashTokens = false) {
  const pattern = /^[A-Za-z0-9\-._~+/]+=*$/;
  const options = resolveApiTokenOptions({ tokenPattern: pattern, hashTokens });
  // Spied after the options are resolved: resolving tests the pattern once itself.
  const test = jest.spyOn(pattern, 'test');
  const peekLocal = jest.fn(() => entry);
  const peekLocalHeader = jest.fn(() => entry);
  const recordKey = jest.fn();
  const metrics = new ApiTokenMetrics();
  const authenticator = new ApiTokenAuthenticator(
    { peekLocal, peekLocalHeader, localClock: () => NOW } as unknown as ApiTokenCacheService,
    {} as never,
    { recordKey } as unknown as ApiTokenUsageRecorder,
    {} as never,
    options,
    {} as never,
    metrics,
  );
  return { authenticator, test, peekLocal, peekLocalHeader, recordKey, lookups: () => metrics.snapshot().scopes.app.lookups };
}

describe('ApiTokenAuthenticator.authenticateLocal', () => {
  it('answers a hit by the header as sent, with no parse and no pattern test (L1 holds only tokens that passed it), and counts the use', () => {
    const { authenticator, test, peekLocalHeader, recordKey, lookups } = setUp(HIT);
    expect(authenticator.authenticateLocalHeader(`Bearer ${TOKEN}`, 'app')).toBe(HIT);
    expect(test).not.toHaveBeenCalled();
    // One clock reading checks the entry's life and dates the use.
    expect(peekLocalHeader).toHaveBeenCalledWith('app', `Bearer ${TOKEN}`, NOW);
    expect(recordKey).toHaveBeenCalledWith(HIT.usageKey, NOW);
    expect(lookups().local_hit).toBe(1);
  });

  it('by token, tests the shape before L1: a malformed token is refused with no I/O and counted as malformed', () => {
    const { authenticator, test, peekLocal, recordKey, lookups } = setUp(HIT);
    expect(authenticator.authenticateLocal('app-a*b', 'app')).toBeNull();
    expect(peekLocal).not.toHaveBeenCalled();
    expect(authenticator.authenticateLocal(TOKEN, 'app')).toBe(HIT);
    expect(peekLocal).toHaveBeenCalledWith('app', TOKEN, NOW);
    expect(recordKey).toHaveBeenCalledWith(HIT.usageKey, NOW);
    expect(test).toHaveBeenCalledTimes(2);
    expect(lookups()).toMatchObject({ malformed: 1, local_hit: 1 });
  });

  it('does not hash a header too long to hold a token for a map read', () => {
    const { authenticator, peekLocalHeader } = setUp(HIT);
    expect(authenticator.authenticateLocalHeader(`Bearer ${'a'.repeat(256)}`, 'app')).toBeUndefined();
    expect(authenticator.authenticateLocalHeader(`Bearer ${'a'.repeat(255)}`, 'app')).toBe(HIT);
    expect(peekLocalHeader).toHaveBeenCalledTimes(1);
  });

  it('in hashed mode does not look L1 up by the header (L1 keeps no token in the clear there)', () => {
    const { authenticator, peekLocalHeader } = setUp(HIT, true);
    expect(authenticator.authenticateLocalHeader(`Bearer ${TOKEN}`, 'app')).toBeUndefined();
    expect(peekLocalHeader).not.toHaveBeenCalled();
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
