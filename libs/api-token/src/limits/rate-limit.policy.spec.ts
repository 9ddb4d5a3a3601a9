import { checkRateLimitPolicy, rateLimitField, rateLimitPolicyField, secondsUntilWindowEnd, windowIndex } from './rate-limit.policy';
import { rateKey } from '../api-token.keys';

describe('rate limit policy', () => {
  it.each([
    [{ limit: 0, windowSeconds: 60 }],
    [{ limit: 1.5, windowSeconds: 60 }],
    [{ limit: 10, windowSeconds: 86_401 }],
    [{ limit: 2 ** 31, windowSeconds: 60 }],
    [{ limit: 10 }],
    ['100/1m'],
  ])('refuses %p, naming the argument and not its value', (value) => {
    expect(() => checkRateLimitPolicy(value, 'the limit')).toThrow(/^the limit must be null or \{ limit, windowSeconds \}/);
    expect(() => checkRateLimitPolicy(value, 'the limit')).not.toThrow(/100\/1m|86401|2147483648/);
  });

  it('takes null, undefined and a policy (copied, extra fields dropped)', () => {
    expect(checkRateLimitPolicy(null, 'x')).toBeNull();
    expect(checkRateLimitPolicy(undefined, 'x')).toBeNull();
    expect(checkRateLimitPolicy({ limit: 5, windowSeconds: 1, other: 1 }, 'x')).toEqual({ limit: 5, windowSeconds: 1 });
  });
});

describe('fixed windows', () => {
  it('are aligned to their length on the Unix epoch', () => {
    expect(windowIndex(59_999, 60)).toBe(0);
    expect(windowIndex(60_000, 60)).toBe(1);
    expect(windowIndex(Date.UTC(2026, 0, 1, 10, 0, 30), 3600)).toBe(Date.UTC(2026, 0, 1, 10) / 3_600_000);
  });

  it('end in whole seconds, at least 1', () => {
    expect(secondsUntilWindowEnd(60_000, 1, 60)).toBe(60);
    expect(secondsUntilWindowEnd(119_001, 1, 60)).toBe(1);
    expect(secondsUntilWindowEnd(119_999, 1, 60)).toBe(1);
    expect(secondsUntilWindowEnd(100_500, 1, 60)).toBe(20);
  });

  it('have a key per token id, window length and window', () => {
    expect(rateKey('app', '0b1c', 60, 29_000_000)).toBe('api_token_rate:app:0b1c:60:29000000');
    expect(rateKey(null, '0b1c', 60, 1)).toBe('api_token_rate:any:0b1c:60:1');
  });
});

describe('header fields (draft-ietf-httpapi-ratelimit-headers)', () => {
  it('RateLimit-Policy: one String Item with q and w', () => {
    expect(rateLimitPolicyField({ limit: 100, windowSeconds: 60 })).toBe('"token";q=100;w=60');
  });

  it('RateLimit: r never negative, t in seconds', () => {
    expect(rateLimitField(42, 17)).toBe('"token";r=42;t=17');
    expect(rateLimitField(-3, 5)).toBe('"token";r=0;t=5');
  });
});
