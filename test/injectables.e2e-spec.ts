import { ApiTokenCacheService, ApiTokenRepository, ApiTokenService } from '../libs/api-token/src';
import type { INestApplication } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { suiteFixture } from './support/suite-fixture';

describe('the injectables the module promised: ApiTokenCacheService and ApiTokenRepository', () => {
  const suite = suiteFixture();
  let app: INestApplication;

  beforeAll(async () => {
    app = await suite.app();
  });

  it('the cache: lookup fills, peek reads the process only, evict and invalidateTenant drop', async () => {
    const tenantId = randomUUID();
    const created = await app.get(ApiTokenService).create({ scope: 'app', tenantId });
    const cache = app.get(ApiTokenCacheService);
    expect(cache.peek(created.token, 'app')).toBeUndefined();
    const identity = await cache.lookup(created.token, 'app');
    expect(identity).toEqual({ id: created.id, appId: null, tenantId, scope: 'app' });
    expect(cache.peek(created.token, 'app')).toEqual(identity);
    expect(JSON.stringify(identity)).not.toContain(created.token);
    expect(await cache.evict(created.token, 'app')).toBe(true);
    expect(cache.peek(created.token, 'app')).toBeUndefined();
    await cache.lookup(created.token, 'app');
    expect((await cache.invalidateTenant(tenantId)).dropped).toBeGreaterThan(0);
    expect(await cache.lookup(`app-${'x'.repeat(24)}`, 'app')).toBeNull();
  });

  it('the repository: by token, by id, a page at a time, masked', async () => {
    const appId = randomUUID();
    const made = [];
    for (let i = 0; i < 3; i++) made.push(await app.get(ApiTokenService).create({ scope: 'dataset', appId }));
    const repository = app.get(ApiTokenRepository);
    const byToken = await repository.findByToken(made[0].token, 'dataset');
    expect(byToken?.id).toBe(made[0].id);
    expect(await repository.findByToken(made[0].token, 'app')).toBeNull();
    expect((await repository.findById(made[1].id))?.id).toBe(made[1].id);
    expect(await repository.findById(randomUUID())).toBeNull();
    const first = await repository.list({ appId, limit: 2 });
    const second = await repository.list({ appId, limit: 2, offset: 2 });
    expect(first).toHaveLength(2);
    expect(second).toHaveLength(1);
    expect(new Set([...first, ...second].map((t) => t.id))).toEqual(new Set(made.map((t) => t.id)));
    const all = JSON.stringify([byToken, ...first, ...second]);
    for (const { token } of made) expect(all).not.toContain(token.slice(8));
  });

  it('list() reports the effective last use: the newer of the column and the pending api_token_active value', async () => {
    const appId = randomUUID();
    const created = await app.get(ApiTokenService).create({ scope: 'app', appId });
    expect((await app.get(ApiTokenService).list({ appId }))[0].lastUsedAt).toBeNull();
    await suite.redis.set(`api_token_active:app:${created.token}`, '2026-02-03T10:00:00.123000', 'EX', 60);
    expect((await app.get(ApiTokenService).list({ appId }))[0].lastUsedAt).toBe('2026-02-03T10:00:00.123');
    await suite.redis.set(`api_token_active:None:${created.token}`, '2026-02-04T10:00:00', 'EX', 60);
    expect((await app.get(ApiTokenRepository).list({ appId }))[0].lastUsedAt).toBe('2026-02-04T10:00:00.000');
  });
});
