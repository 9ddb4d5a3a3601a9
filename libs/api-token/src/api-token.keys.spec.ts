import { activeKey, cacheKey, escapeGlob, parseScopedKey } from './api-token.keys';

describe('key names', () => {
  it('uses Dify names, with "any" for no scope', () => {
    expect(cacheKey('app', 'app-x')).toBe('api_token:app:app-x');
    expect(cacheKey(null, 'app-x')).toBe('api_token:any:app-x');
    expect(activeKey('dataset', 't')).toBe('api_token_active:dataset:t');
  });

  it('escapes every glob character so a token matches only itself', () => {
    expect(escapeGlob('a*b?c[d]e\\f')).toBe('a\\*b\\?c\\[d\\]e\\\\f');
    expect(escapeGlob('app-plain')).toBe('app-plain');
  });

  it.each([
    ['api_token_active:app:app-x', { scope: 'app', token: 'app-x' }],
    ['api_token_active:None:app-x', { scope: null, token: 'app-x' }],
    ['api_token_active:any:app-x', { scope: null, token: 'app-x' }],
    ['api_token_active:app:a:b', { scope: 'app', token: 'a:b' }],
  ])('parses %s', (key, parsed) => {
    expect(parseScopedKey('api_token_active', key)).toEqual(parsed);
  });

  it.each(['api_token_active:app', 'api_token_active::x', 'api_token_active:app:', 'other:app:x', 'api_token_activeX:app:x'])(
    'refuses %s',
    (key) => expect(parseScopedKey('api_token_active', key)).toBeNull(),
  );
});
