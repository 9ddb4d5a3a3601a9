import { ApiTokenInputError } from '../api-token.errors';
import type * as Scope from './token.scope';

/**
 * The module loaded afresh inside the test: the scope pattern and the reserved names are module-level
 * values, evaluated while the test runs, so a change to them is seen here (and mutation testing counts
 * them as covered by these tests).
 */
function fresh(): typeof Scope {
  let loaded: typeof Scope | undefined;
  jest.isolateModules(() => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    loaded = require('./token.scope') as typeof Scope;
  });
  return loaded!;
}

describe('isScope', () => {
  it.each(['app', 'dataset', 'a', 'A-Z_0.9', 'x'.repeat(16), 'none', 'ANY'])('accepts %j', (value) => {
    expect(fresh().isScope(value)).toBe(true);
  });

  it.each([
    ['the empty string', ''],
    ['17 characters (the column holds 16)', 'x'.repeat(17)],
    ['a ":" (the key separator)', 'app:x'],
    ['a ":" before the scope', 'x:app'],
    ['a space', 'my app'],
    ['a "*" (a glob character)', 'app*'],
    ['a line break at the end', 'app\n'],
    ['"any" (no scope in key names)', 'any'],
    ['"None" (Dify\'s no scope)', 'None'],
    ['a number', 5],
    ['null', null],
  ])('refuses %s', (_name, value) => {
    expect(fresh().isScope(value)).toBe(false);
  });
});

describe('checkScope', () => {
  it('returns the scope', () => {
    expect(fresh().checkScope('app', 'scope')).toBe('app');
  });

  it('states the rule, naming what was checked and never quoting the value', () => {
    const { checkScope } = fresh();
    let error: unknown;
    try {
      checkScope('secret:value', 'the scope of a new token');
    } catch (e) {
      error = e;
    }
    // Loaded afresh, the module has its own copy of the error class: compare by name.
    expect((error as Error).constructor.name).toBe(ApiTokenInputError.name);
    expect((error as Error).message).toBe(
      'the scope of a new token must be 1 to 16 letters, digits, "_", "." or "-", and not "any" or "None"',
    );
  });

  it('exports the rule as error messages state it', () => {
    expect(fresh().SCOPE_RULE).toBe('1 to 16 letters, digits, "_", "." or "-", and not "any" or "None"');
  });
});
