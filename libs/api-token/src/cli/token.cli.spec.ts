import type { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ApiTokenInputError } from '../api-token.errors';
import { EXIT, main } from './token.cli';

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
