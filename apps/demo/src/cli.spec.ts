import { withoutValues } from './cli';

describe('withoutValues', () => {
  const secret = 'app-AbCdEfGhIjKlMnOpQrStUvWx';
  it.each([
    [`error: option '--app-id <uuid>' argument '${secret}' is invalid. must be a UUID.`, "error: option '--app-id <uuid>' is invalid: must be a UUID."],
    [`error: command-argument value '${secret}' is invalid for argument 'tenant-id'. must be a UUID.`, "error: argument 'tenant-id' is invalid: must be a UUID."],
    [`error: unknown command '${secret}'`, 'error: unknown command'],
    [`error: unknown option '--token=${secret}'`, "error: unknown option '--token'"],
    [`error: unknown option '-${secret}'`, 'error: unknown option'],
    ["error: unknown option '--bogus'\n(Did you mean --scope?)", "error: unknown option '--bogus'\n(Did you mean --scope?)"],
  ])('%s', (message, expected) => {
    expect(withoutValues(message)).toBe(expected);
    expect(withoutValues(message)).not.toContain(secret.slice(4));
  });
});
