import type { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ApiTokenInputError } from '../api-token.errors';
import { EXIT, main, withoutValues } from './token.cli';

// RedisModule.forRoot connects at once: no stores here, the application context below is a stand-in.
jest.mock('../env/stores.modules', () => ({ storeModules: () => [] }));

/** The exit code a failing `create` ends with, the library's services replaced by one that throws `error`. */
async function exitCodeWhenCreateThrows(error: Error): Promise<{ code: number; stderr: string }> {
  const app = { get: () => ({ create: () => Promise.reject(error) }), close: async () => undefined };
  jest.spyOn(NestFactory, 'createApplicationContext').mockResolvedValue(app as unknown as INestApplicationContext);
  let stderr = '';
  jest.spyOn(process.stderr, 'write').mockImplementation((chunk) => ((stderr += String(chunk)), true));
  const code = await main(['create', '--scope', 'app']);
  return { code, stderr };
}

describe('token command line: exit codes', () => {
  afterEach(() => jest.restoreAllMocks());

  it('bad input refused by the library is a usage error (2), with its message', async () => {
    const result = await exitCodeWhenCreateThrows(new ApiTokenInputError('ApiTokenService.create: "scope" must be 1 to 16 characters'));
    expect(result).toEqual({ code: EXIT.usage, stderr: 'error: ApiTokenService.create: "scope" must be 1 to 16 characters\n' });
  });

  it('any other error, a TypeError from a bug included, is a failure (1)', async () => {
    const result = await exitCodeWhenCreateThrows(new TypeError("Cannot read properties of undefined (reading 'id')"));
    expect(result.code).toBe(EXIT.failed);
  });
});

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

describe('token command: bad arguments', () => {
  const secret = 'app-AbCdEfGhIjKlMnOpQrStUvWx';
  afterEach(() => jest.restoreAllMocks());

  // Every one of these fails before the stores are reached.
  it.each([
    [[secret], /^error: unknown command\n/],
    [['list', `--token=${secret}`], /^error: unknown option '--token'\n/],
    [['list', '--app-id', secret], /^error: option '--app-id <uuid>' is invalid: must be a UUID/],
    [['list', '--scope', 'any'], /^error: option '--scope <scope>' is invalid: must be 1 to 16 letters/],
    [['create', '--scope', 'None'], /^error: option '--scope <scope>' is invalid: must be 1 to 16 letters/],
    [['revoke', '--id', secret], /^error: option '--id <uuid>' is invalid: must be a UUID/],
    [['invalidate-tenant', secret], /^error: argument 'tenant-id' is invalid: must be a UUID/],
    [['create'], /^error: required option '--scope <scope>' not specified/],
    [['create', '--scope', 'a:b'], /^error: option '--scope <scope>' is invalid: must be 1 to 16/],
    [['list', '--tenant-id', '42'], /must be a UUID/],
    [['revoke'], /^error: give a token \(or "-" to read it from stdin\) or --id/],
    [['revoke', secret, '--id', '6f1c2f5e-1111-4a2b-8c3d-000000000001'], /^error: give a token or --id, not both/],
    [['invalidate-tenant'], /^error: missing required argument 'tenant-id'/],
    [['invalidate-tenant', 'x'], /must be a UUID/],
  ])('%j: exit 2, a message naming what is wrong, never the value', async (args, message) => {
    const written: string[] = [];
    jest.spyOn(process.stderr, 'write').mockImplementation((chunk) => written.push(String(chunk)) > 0);
    jest.spyOn(process.stdout, 'write').mockImplementation((chunk) => written.push(String(chunk)) > 0);
    expect(await main(args)).toBe(2);
    const text = written.join('');
    expect(text).toMatch(message);
    expect(text).not.toContain(secret.slice(4, 12));
  });
});
