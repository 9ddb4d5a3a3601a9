import { API_TOKEN_ERRORS, ApiTokenGuard, parseAuthorization } from './api-token.guard';

describe('parseAuthorization', () => {
  it.each([
    [undefined, { error: API_TOKEN_ERRORS.missingHeader }],
    ['', { error: API_TOKEN_ERRORS.missingHeader }],
    ['Bearer', { error: API_TOKEN_ERRORS.missingHeader }],
    ['Bearer\tapp-x', { error: API_TOKEN_ERRORS.missingHeader }],
    ['Bearer ', { error: API_TOKEN_ERRORS.missingHeader }],
    ['Bearer   ', { error: API_TOKEN_ERRORS.missingHeader }],
    ['Basic abc', { error: API_TOKEN_ERRORS.wrongScheme }],
    ['Bearerx abc', { error: API_TOKEN_ERRORS.wrongScheme }],
    ['Bearer app-x', { token: 'app-x' }],
    ['bearer app-x', { token: 'app-x' }],
    ['  BEARER   app-x', { token: 'app-x' }],
    ['Bearer app-x trailing', { token: 'app-x trailing' }],
  ])('%j', (header, expected) => expect(parseAuthorization(header)).toEqual(expected));
});

describe('ApiTokenGuard', () => {
  it('returns one class per scope', () => {
    expect(ApiTokenGuard('app')).toBe(ApiTokenGuard('app'));
    expect(ApiTokenGuard('app')).not.toBe(ApiTokenGuard('dataset'));
  });

  it.each(['', 'x'.repeat(17), 5 as unknown as string])('refuses the scope %p', (scope) => {
    expect(() => ApiTokenGuard(scope)).toThrow(/scope/);
  });
});
