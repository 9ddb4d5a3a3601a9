import { BadRequestException } from '@nestjs/common';
import { encodeCursor, parseCreateBody, parseListQuery, parseRateLimitBody, parseRotateBody, refuseField } from './admin.input';
import { resolveAdminOptions } from './admin.options';
import { MAX_EXPIRY_SECONDS } from '../tokens/token.input';

const HOSTILE = 'app-Zq8Zq8Zq8Zq8Zq8Zq8Zq8Zq8';
const UUID = '6f1c2a4e-0d3b-4c5a-8e6f-7a8b9c0d1e2f';

/** The field a parser refused, checking on the way that the answer does not quote the hostile value. */
function refusedField(parse: () => unknown): string | undefined {
  try {
    parse();
  } catch (error) {
    expect(error).toBeInstanceOf(BadRequestException);
    const body = (error as BadRequestException).getResponse() as { field: string; message: string; statusCode: number };
    expect(body.statusCode).toBe(400);
    expect(body.message).not.toContain('Zq8Zq8');
    expect(body.message).toContain(`"${body.field}"`);
    return body.field;
  }
  return undefined;
}

describe('admin input', () => {
  it('parseCreateBody takes the contract\'s fields and converts expiresAt to a Date', () => {
    expect(parseCreateBody({ scope: 'app' })).toEqual({ scope: 'app', appId: undefined, tenantId: undefined, rateLimit: undefined });
    const input = parseCreateBody({ scope: 'app', appId: UUID, tenantId: null, expiresAt: '2099-01-31T01:00:00+01:00', rateLimit: { limit: 5, windowSeconds: 60 } });
    expect(input).toEqual({ scope: 'app', appId: UUID, tenantId: null, expiresAt: new Date('2099-01-31T00:00:00Z'), rateLimit: { limit: 5, windowSeconds: 60 } });
    expect(parseCreateBody({ scope: 'ci', expiresInSeconds: MAX_EXPIRY_SECONDS, prefix: 'ci' })).toMatchObject({ expiresInSeconds: MAX_EXPIRY_SECONDS, prefix: 'ci' });
  });

  it.each([
    [undefined, 'scope'],
    ['x', 'body'],
    [[], 'body'],
    [{ scope: HOSTILE }, 'scope'],
    [{ scope: 'any' }, 'scope'],
    [{ scope: 'app', appId: HOSTILE }, 'appId'],
    [{ scope: 'app', tenantId: 7 }, 'tenantId'],
    [{ scope: 'app', prefix: 7 }, 'prefix'],
    [{ scope: 'app', expiresInSeconds: MAX_EXPIRY_SECONDS + 1 }, 'expiresInSeconds'],
    [{ scope: 'app', expiresInSeconds: '60' }, 'expiresInSeconds'],
    [{ scope: 'app', expiresAt: HOSTILE }, 'expiresAt'],
    [{ scope: 'app', expiresAt: 1e12 }, 'expiresAt'],
    [{ scope: 'app', expiresAt: '2000-01-01T00:00:00Z' }, 'expiresAt'],
    [{ scope: 'app', expiresAt: '2099-01-01T00:00:00Z', expiresInSeconds: 1 }, 'expiresAt'],
    [{ scope: 'app', rateLimit: { limit: 1, windowSeconds: 1, extra: 1 } }, 'rateLimit'],
    [{ scope: 'app', rateLimit: 5 }, 'rateLimit'],
    [{ scope: 'app', token: HOSTILE }, 'token'],
    [{ scope: 'app', [HOSTILE]: 1 }, 'body'],
  ])('parseCreateBody(%j) refuses %s', (body, field) => {
    expect(refusedField(() => parseCreateBody(body))).toBe(field);
  });

  it('parseListQuery reads filters, the page size and the cursor', () => {
    expect(parseListQuery({})).toEqual({ filter: { scope: undefined, appId: undefined, tenantId: undefined }, limit: 50, offset: 0 });
    expect(parseListQuery({ scope: 'app', appId: UUID, limit: '10', cursor: encodeCursor(30) })).toEqual({
      filter: { scope: 'app', appId: UUID, tenantId: undefined },
      limit: 10,
      offset: 30,
    });
  });

  it.each([
    [{ limit: '501' }, 'limit'],
    [{ limit: '1.5' }, 'limit'],
    [{ limit: '-1' }, 'limit'],
    [{ cursor: Buffer.from('o:-1').toString('base64url') }, 'cursor'],
    [{ cursor: HOSTILE }, 'cursor'],
    [{ tenantId: [UUID, UUID] }, 'tenantId'],
    [{ scope: 'a:b' }, 'scope'],
    [{ offset: '3' }, 'offset'],
  ])('parseListQuery(%j) refuses %s', (query, field) => {
    expect(refusedField(() => parseListQuery(query))).toBe(field);
  });

  it('parseRotateBody defaults to a grace of 0; parseRateLimitBody names the bound that is wrong', () => {
    expect(parseRotateBody(undefined)).toEqual({ graceSeconds: 0 });
    expect(parseRotateBody({ graceSeconds: 30 })).toEqual({ graceSeconds: 30 });
    expect(refusedField(() => parseRotateBody({ graceSeconds: 1.5 }))).toBe('graceSeconds');
    expect(parseRateLimitBody({ limit: 3, windowSeconds: 60 })).toEqual({ limit: 3, windowSeconds: 60 });
    expect(refusedField(() => parseRateLimitBody({ limit: 0, windowSeconds: 60 }))).toBe('limit');
    expect(refusedField(() => parseRateLimitBody({ limit: 3, windowSeconds: 86_401 }))).toBe('windowSeconds');
    expect(refusedField(() => parseRateLimitBody({ limit: 3 }))).toBe('windowSeconds');
  });

  it('refuseField answers Nest\'s 400 shape with the field', () => {
    expect(refuseField('appId', 'a UUID').getResponse()).toEqual({ statusCode: 400, error: 'Bad Request', message: '"appId" must be a UUID', field: 'appId' });
  });
});

describe('resolveAdminOptions', () => {
  const guard = { canActivate: () => true };
  it('defaults the path to admin and trims its slashes', () => {
    expect(resolveAdminOptions({ guards: [guard] }).path).toBe('admin');
    expect(resolveAdminOptions({ path: '/ops/tokens-admin/', guards: [guard] }).path).toBe('ops/tokens-admin');
  });

  it.each([
    [{ guards: [] }, '"guards"'],
    [{ guards: [{}] }, '"guards"'],
    [{}, '"guards"'],
    [{ path: 'a b', guards: [guard] }, '"path"'],
    [{ path: 'a//b', guards: [guard] }, '"path"'],
    [{ guards: [guard], actor: 'me' }, '"actor"'],
  ])('refuses %j, naming %s', (options, name) => {
    expect(() => resolveAdminOptions(options as never)).toThrow(name);
  });
});
