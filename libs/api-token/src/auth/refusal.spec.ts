import { HttpException, ServiceUnavailableException, UnauthorizedException } from '@nestjs/common';
import { refusalException } from './refusal';

describe('refusalException', () => {
  it.each([
    [401, UnauthorizedException, { message: 'm', error: 'Unauthorized', statusCode: 401 }, { code: 'unauthorized', message: 'm', status: 401 }],
    [429, HttpException, { message: 'm', error: 'Too Many Requests', statusCode: 429 }, { code: 'too_many_requests', message: 'm', status: 429 }],
    [503, ServiceUnavailableException, { message: 'm', error: 'Service Unavailable', statusCode: 503 }, { code: 'service_unavailable', message: 'm', status: 503 }],
  ] as const)('%i: Nest or Dify shape, same exception class', (status, type, nest, dify) => {
    for (const [format, body] of [['nest', nest], ['dify', dify]] as const) {
      const exception = refusalException(format, status, 'm');
      expect(exception).toBeInstanceOf(type);
      expect(exception.getStatus()).toBe(status);
      expect(exception.getResponse()).toEqual(body);
    }
  });
});
