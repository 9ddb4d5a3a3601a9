import { DEFAULT_API_TOKEN_OPTIONS, resolveApiTokenOptions } from './api-token.options';

describe('resolveApiTokenOptions', () => {
  it('applies Dify defaults', () => {
    const options = resolveApiTokenOptions();
    expect(options).toEqual(DEFAULT_API_TOKEN_OPTIONS);
    expect([options.cacheTtlSeconds, options.negativeTtlSeconds, options.lockTtlMs, options.lockWaitMs]).toEqual([600, 60, 10_000, 5_000]);
  });

  it('keeps defaults for options given as undefined', () => {
    expect(resolveApiTokenOptions({ cacheTtlSeconds: undefined }).cacheTtlSeconds).toBe(600);
  });

  it.each([
    [{ cacheTtlSeconds: 0 }, /cacheTtlSeconds.*>= 1/],
    [{ negativeTtlSeconds: 1.5 }, /negativeTtlSeconds/],
    [{ localCacheMax: -1 }, /localCacheMax.*>= 0/],
    [{ usageWriteIntervalMs: Number.NaN }, /usageWriteIntervalMs/],
    [{ tokenPattern: '^a$' as unknown as RegExp }, /tokenPattern.*RegExp/],
    [{ tokenPattern: /a/g }, /tokenPattern.*g or y/],
    [{ hashTokens: 'yes' as unknown as boolean }, /hashTokens/],
    [{ revocationPollIntervalMs: -1 }, /revocationPollIntervalMs.*>= 0/],
  ])('refuses %p, naming the option', (options, message) => {
    expect(() => resolveApiTokenOptions(options)).toThrow(message);
  });

  it('accepts the shapes Dify generates and refuses what cannot be a token', () => {
    const { tokenPattern } = DEFAULT_API_TOKEN_OPTIONS;
    for (const ok of ['app-AbCdEfGhIjKlMnOpQrStUvWx', 'dataset-123', 'a.b~c+d/e_f', 'abc==']) expect(tokenPattern.test(ok)).toBe(true);
    for (const bad of ['', '*', 'app-*', 'a b', 'a\tb', 'tökén', 'a=b', 'x'.repeat(256), 'a:b', '[a-z]']) {
      expect(tokenPattern.test(bad)).toBe(false);
    }
  });
});
