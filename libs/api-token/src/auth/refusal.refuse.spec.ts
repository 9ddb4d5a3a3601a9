import type { HttpException } from '@nestjs/common';
import type { HttpAdapterHost } from '@nestjs/core';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import type * as Refusal from './refusal';

/**
 * The module loaded afresh inside the test: Dify's codes and the challenges are module-level values,
 * evaluated while the test runs, so a change to them is seen here (and mutation testing counts them as
 * covered by these tests).
 */
function fresh(): typeof Refusal {
  let loaded: typeof Refusal | undefined;
  jest.isolateModules(() => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    loaded = require('./refusal') as typeof Refusal;
  });
  return loaded!;
}

/** An ApiTokenRefusals on a fake platform adapter that records the headers set, in order. */
function refusals(format: 'nest' | 'dify'): { refuse: InstanceType<typeof Refusal.ApiTokenRefusals>['refuse']; headers: [unknown, string, string][] } {
  const headers: [unknown, string, string][] = [];
  const adapterHost = { httpAdapter: { setHeader: (response: unknown, name: string, value: string) => headers.push([response, name, value]) } };
  const instance = new (fresh().ApiTokenRefusals)(adapterHost as unknown as HttpAdapterHost, { errorFormat: format } as ResolvedApiTokenOptions);
  return { refuse: instance.refuse.bind(instance), headers };
}

describe("Dify's error codes", () => {
  it('names each status like Dify\'s error handler', () => {
    expect(fresh().DIFY_ERROR_CODES).toEqual({ 401: 'unauthorized', 403: 'forbidden', 429: 'too_many_requests', 503: 'service_unavailable' });
  });
});

describe('ApiTokenRefusals.refuse', () => {
  const response = { platform: 'response' };

  it.each([
    ['nest', 'Bearer'],
    ['dify', 'Bearer realm="api"'],
  ] as const)('challenges a 401 in the %s format with %s, then sets the given headers', (format, challenge) => {
    const { refuse, headers } = refusals(format);
    const exception: HttpException = refuse(response, 401, 'Invalid token', { 'X-Extra': '1' });
    expect(headers).toEqual([
      [response, 'WWW-Authenticate', challenge],
      [response, 'X-Extra', '1'],
    ]);
    expect(exception.getStatus()).toBe(401);
  });

  it.each([429, 503] as const)('sends no challenge with a %i, only the given headers', (status) => {
    const { refuse, headers } = refusals('nest');
    refuse(response, status, 'Later', { 'Retry-After': '7' });
    expect(headers).toEqual([[response, 'Retry-After', '7']]);
  });

  it('sets no header at all for a 429 without headers', () => {
    const { refuse, headers } = refusals('dify');
    refuse(response, 429, 'Slow down');
    expect(headers).toEqual([]);
  });

  it('returns the exception in the configured format', () => {
    const nest = refusals('nest').refuse(response, 503, 'Down');
    expect(nest.getResponse()).toEqual({ message: 'Down', error: 'Service Unavailable', statusCode: 503 });
    const dify = refusals('dify').refuse(response, 429, 'Slow down', { 'Retry-After': '1' });
    expect(dify.getStatus()).toBe(429);
    expect(dify.getResponse()).toEqual({ code: 'too_many_requests', message: 'Slow down', status: 429 });
    const unauthorized = refusals('dify').refuse(response, 401, 'No token');
    expect(unauthorized.getResponse()).toEqual({ code: 'unauthorized', message: 'No token', status: 401 });
  });
});
