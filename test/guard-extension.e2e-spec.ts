import {
  ApiTokenContextError,
  ApiTokenGuard,
  ApiTokenUnauthorizedException,
  type ApiTokenValidateHook,
} from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { CanActivate, INestApplication } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { suiteFixture } from './support/suite-fixture';

const DISABLED_APP = randomUUID();
const DISABLED_MESSAGE = "The app's API service has been disabled.";

/** Dify's validate_app_token, in spirit: the application's own repositories say the app is disabled. */
const validate: ApiTokenValidateHook = async (identity) => {
  await new Promise((resolve) => setImmediate(resolve));
  return identity.appId === DISABLED_APP ? { status: 403, message: DISABLED_MESSAGE } : true;
};

describe.each(['nest', 'dify'] as const)('a guard people can extend (errorFormat %s)', (errorFormat) => {
  const suite = suiteFixture();
  let app: INestApplication;
  let repository: ApiTokenRepository;

  beforeAll(async () => {
    app = await suite.app({ apiToken: { errorFormat, validate } });
    repository = app.get(ApiTokenRepository);
  });

  const get = (path: string, token: string) => request(app.getHttpServer()).get(path).set('Authorization', `Bearer ${token}`);

  it('a validate hook refuses a disabled app in the configured shape, and lets others in', async () => {
    const { token: disabled } = await repository.insert({ token: generateApiToken('app'), type: 'app', appId: DISABLED_APP });
    const { token: enabled } = await repository.insert({ token: generateApiToken('app'), type: 'app', appId: randomUUID() });
    for (let i = 0; i < 2; i++) {
      // The second request is an in-process cache hit: the hook runs there too.
      const refused = await get('/app/whoami', disabled);
      expect(refused.status).toBe(403);
      expect(refused.body).toEqual(
        errorFormat === 'dify'
          ? { code: 'forbidden', message: DISABLED_MESSAGE, status: 403 }
          : { message: DISABLED_MESSAGE, error: 'Forbidden', statusCode: 403 },
      );
      expect((await get('/app/whoami', enabled)).status).toBe(200);
    }
  });

  it('several scopes per guard: an app and a dataset token pass, another scope does not', async () => {
    const tenantId = randomUUID();
    const appToken = await repository.insert({ token: generateApiToken('app'), type: 'app', tenantId });
    const datasetToken = await repository.insert({ token: generateApiToken('dataset'), type: 'dataset', tenantId });
    const adminToken = await repository.insert({ token: `admin-${randomUUID()}`, type: 'admin', tenantId });
    for (const [row, scope] of [[appToken, 'app'], [datasetToken, 'dataset']] as const) {
      const res = await get('/extras/any/whoami', row.token);
      expect([res.status, res.body]).toEqual([200, { id: row.id, appId: null, tenantId, scope, tenant: tenantId }]);
    }
    expect((await get('/extras/any/whoami', adminToken.token)).status).toBe(401);
    expect((await get('/extras/any/whoami', generateApiToken('app'))).status).toBe(401);
  });

  it('a GraphQL-style context: the request is read from the context argument, the identity set on it', async () => {
    const { token, id } = await repository.insert({ token: generateApiToken('app'), type: 'app' });
    const guard = await app.get(ModuleRef).create<CanActivate>(ApiTokenGuard('app'));
    const req = { headers: { authorization: `Bearer ${token}` } } as { headers: object; apiToken?: { id: string } };
    const gql = new ExecutionContextHost([{}, {}, { req }, {}]);
    gql.setType('graphql');
    await expect(Promise.resolve(guard.canActivate(gql))).resolves.toBe(true);
    expect(req.apiToken?.id).toBe(id);

    const refused = { headers: { authorization: `Bearer ${generateApiToken('app')}` } };
    const bad = new ExecutionContextHost([{}, {}, { req: refused }, {}]);
    bad.setType('graphql');
    await expect(Promise.resolve(guard.canActivate(bad))).rejects.toBeInstanceOf(ApiTokenUnauthorizedException);
  });

  it('a context it cannot read: a clear error, not a TypeError', async () => {
    const guard = await app.get(ModuleRef).create<CanActivate>(ApiTokenGuard('app'));
    const rpc = new ExecutionContextHost([{ pattern: 'x' }, undefined]);
    rpc.setType('rpc');
    expect(() => guard.canActivate(rpc)).toThrow(ApiTokenContextError);
    expect(() => guard.canActivate(rpc)).toThrow(/cannot find a request with headers in a "rpc" context/);
  });
});
