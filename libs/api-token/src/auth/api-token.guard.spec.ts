import { API_TOKEN_ERRORS, ApiTokenGuard, parseAuthorization } from './api-token.guard';
import { hasRepeatedAuthorization } from './authorization.header';

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

  it.each(['', 'x'.repeat(17), 5 as unknown as string, 'any', 'None', 'a:b', 'a*'])('refuses the scope %p, as create() does', (scope) => {
    expect(() => ApiTokenGuard(scope)).toThrow(/ApiTokenGuard: the scope must be 1 to 16 letters/);
  });
});

describe('hasRepeatedAuthorization', () => {
  it.each([
    [undefined, false],
    [[], false],
    [['Host', 'x', 'Authorization', 'Bearer a'], false],
    [['authorization', 'Bearer a', 'Accept', '*/*'], false],
    [['Authorization', 'Bearer a', 'authorization', 'Bearer b'], true],
    [['AUTHORIZATION', 'Bearer a', 'Authorization', 'Bearer a'], true],
    [['Authorizatio', 'x', 'Authorization', 'Bearer a', 'Authorizationn', 'y'], false],
  ])('%j: %p', (raw, expected) => expect(hasRepeatedAuthorization(raw)).toBe(expected));
});
