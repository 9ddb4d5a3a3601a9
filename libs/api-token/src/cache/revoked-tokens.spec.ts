import { ApiTokenRevokedTokens } from './revoked-tokens';

describe('ApiTokenRevokedTokens', () => {
  let now = 1000;
  beforeEach(() => {
    now = 1000;
    jest.spyOn(performance, 'now').mockImplementation(() => now);
  });
  afterEach(() => jest.restoreAllMocks());

  it('lists a token for the time given, then forgets it', () => {
    const revoked = new ApiTokenRevokedTokens();
    revoked.add('app-a', 500);
    expect(revoked.has('app-a')).toBe(true);
    expect(revoked.has('app-b')).toBe(false);
    now += 499;
    expect(revoked.has('app-a')).toBe(true);
    now += 1;
    expect(revoked.has('app-a')).toBe(false);
    expect(revoked.size).toBe(0);
  });

  it('keeps the longer of two listings', () => {
    const revoked = new ApiTokenRevokedTokens();
    revoked.add('app-a', 1000);
    revoked.add('app-a', 10);
    now += 500;
    expect(revoked.has('app-a')).toBe(true);
  });

  it('prunes the tokens past their time', () => {
    const revoked = new ApiTokenRevokedTokens();
    revoked.add('app-a', 100);
    revoked.add('app-b', 1000);
    now += 200;
    expect(revoked.prune()).toBe(1);
    expect(revoked.has('app-b')).toBe(true);
  });
});
