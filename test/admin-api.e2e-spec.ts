import { ApiTokenService, type CreatedApiToken } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { adminNotice } from '../apps/demo/src/demo.token';
import type { INestApplication } from '@nestjs/common';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import request from 'supertest';
import { CapturingLogger } from './support/capturing-logger';
import { listen } from './support/http-client';
import { whoami } from './support/requests';
import { suiteFixture } from './support/suite-fixture';
import { until } from './support/until';

const MASK = '*'.repeat(24);
/** A live-looking token where a field's value goes: it must never come back, in an answer or a log line. */
const HOSTILE = `app-${'Zq8'.repeat(8)}`;
const hostileParts = (text: string) => [HOSTILE, HOSTILE.slice(4), 'Zq8Zq8Zq8'].filter((part) => text.includes(part));

describe.each(['express', 'fastify'] as const)('admin API (%s)', (adapter) => {
  const suite = suiteFixture();
  const logger = new CapturingLogger();
  let app: INestApplication;
  let tokens: ApiTokenService;
  let adminToken: CreatedApiToken;
  /** Every token this suite saw in clear: none may appear in a log line. */
  const secrets: string[] = [];

  const http = () => request(app.getHttpServer());
  const asAdmin = <T extends { set(name: string, value: string): T }>(req: T, token = adminToken.token) => req.set('Authorization', `Bearer ${token}`);
  const auditLines = () => logger.lines.filter((line) => line.text.includes('ApiTokenAdmin'));

  beforeAll(async () => {
    // No scheduled flush: a use stays in Redis until a summary shows it (the effective last use).
    app = await suite.app({ adapter, logger, apiToken: { flushCron: false } });
    tokens = app.get(ApiTokenService);
    adminToken = await tokens.create({ scope: 'admin' });
    secrets.push(adminToken.token);
  });

  afterAll(() => {
    // Not one line the app logged (audit lines and the rest) holds a token or a part of one.
    for (const line of logger.lines) {
      for (const secret of secrets) expect(line.text).not.toContain(secret.slice(-24, -12));
      expect(hostileParts(line.text)).toEqual([]);
    }
  });

  it('POST /admin/tokens creates a token, shown this once, that works on the guarded route; the audit line names the admin and the id, not the token', async () => {
    const appId = randomUUID();
    const tenantId = randomUUID();
    const res = await asAdmin(http().post('/admin/tokens')).send({ scope: 'app', appId, tenantId, expiresInSeconds: 3600, rateLimit: { limit: 100, windowSeconds: 60 } });
    expect(res.status).toBe(201);
    expect(res.body).toMatchObject({ scope: 'app', appId, tenantId, maskedToken: `app-${MASK}`, rateLimit: { limit: 100, windowSeconds: 60 }, lastUsedAt: null });
    expect(res.body.token).toMatch(/^app-[A-Za-z0-9]{24}$/);
    expect(res.body.expiresAt).toEqual(expect.any(String));
    secrets.push(res.body.token);
    expect((await whoami(app, res.body.token)).body).toMatchObject({ id: res.body.id, appId, tenantId, scope: 'app' });

    const [line] = auditLines().filter((l) => l.text.includes('action=create') && l.text.includes(res.body.id));
    expect(line.text).toContain(`admin=token:${adminToken.id}(scope=admin)`);
    expect(line.text).toContain('outcome=ok');
    expect(line.text).not.toContain(res.body.token.slice(4));

    const expiring = await asAdmin(http().post('/admin/tokens')).send({ scope: 'dataset', expiresAt: '2099-01-31T00:00:00Z' });
    expect(expiring.status).toBe(201);
    expect(expiring.body).toMatchObject({ scope: 'dataset', expiresAt: '2099-01-31T00:00:00', appId: null, rateLimit: null });
    secrets.push(expiring.body.token);
  });

  it('GET /admin/tokens lists masked summaries, filtered, a page at a time', async () => {
    const appId = randomUUID();
    const created: CreatedApiToken[] = [];
    for (let i = 0; i < 5; i++) created.push(await tokens.create({ scope: 'app', appId }));
    secrets.push(...created.map((t) => t.token));
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const res = await asAdmin(http().get('/admin/tokens')).query({ appId, limit: 2, ...(cursor ? { cursor } : {}) });
      expect(res.status).toBe(200);
      expect(res.body.items.length).toBeLessThanOrEqual(2);
      for (const item of res.body.items) expect(item).toMatchObject({ appId, maskedToken: `app-${MASK}` });
      expect(JSON.stringify(res.body)).not.toMatch(/"token"/);
      seen.push(...res.body.items.map((item: { id: string }) => item.id));
      cursor = res.body.nextCursor;
      pages++;
    } while (cursor);
    expect(pages).toBe(3);
    expect(seen.sort()).toEqual(created.map((t) => t.id).sort());
    const byScope = await asAdmin(http().get('/admin/tokens')).query({ appId, scope: 'dataset' });
    expect(byScope.body).toEqual({ items: [], nextCursor: null });
  });

  it('GET /admin/tokens/:id shows the summary with the effective last use, or 404', async () => {
    const created = await tokens.create({ scope: 'app' });
    secrets.push(created.token);
    expect((await whoami(app, created.token)).status).toBe(200);
    // The use sits in Redis (no flush ran): the row says never, the summary says just now.
    await until('the use is recorded in Redis', async () => (await suite.redis.keys(`api_token_active:*${created.token}`)).length > 0);
    expect((await app.get(ApiTokenRepository).list({ id: created.id }))[0].lastUsedAt).toBeNull();
    const res = await asAdmin(http().get(`/admin/tokens/${created.id}`));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ id: created.id, scope: 'app', maskedToken: `app-${MASK}` });
    expect(Date.parse(`${res.body.lastUsedAt}Z`)).toBeGreaterThan(Date.now() - 60_000);

    const missing = await asAdmin(http().get(`/admin/tokens/${randomUUID()}`));
    expect(missing.status).toBe(404);
  });

  it('DELETE /admin/tokens/:id revokes it (the token is refused at once), then 404', async () => {
    const created = await tokens.create({ scope: 'app' });
    secrets.push(created.token);
    expect((await whoami(app, created.token)).status).toBe(200);
    const res = await asAdmin(http().delete(`/admin/tokens/${created.id}`));
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ revoked: expect.objectContaining({ id: created.id, scope: 'app', maskedToken: `app-${MASK}` }), cacheCleared: true });
    expect((await whoami(app, created.token)).status).toBe(401);
    expect((await asAdmin(http().delete(`/admin/tokens/${created.id}`))).status).toBe(404);
    expect(auditLines().some((l) => l.text.includes('action=revoke') && l.text.includes(created.id) && l.text.includes('status=404'))).toBe(true);
  });

  it('POST /admin/tokens/:id/rotate answers the successor; the old token works for the grace, or not at all; 404 for no token', async () => {
    const tenantId = randomUUID();
    const old = await tokens.create({ scope: 'app', tenantId, rateLimit: { limit: 5, windowSeconds: 10 } });
    secrets.push(old.token);
    const res = await asAdmin(http().post(`/admin/tokens/${old.id}/rotate`)).send({ graceSeconds: 600 });
    expect(res.status).toBe(201);
    expect(res.body.successor).toMatchObject({ scope: 'app', tenantId, rateLimit: { limit: 5, windowSeconds: 10 } });
    expect(res.body.successor.token).toMatch(/^app-[A-Za-z0-9]{24}$/);
    expect(res.body.previous).toMatchObject({ id: old.id, expiresAt: expect.any(String) });
    expect(res.body.cacheCleared).toBe(true);
    secrets.push(res.body.successor.token);
    expect((await whoami(app, res.body.successor.token)).status).toBe(200);
    expect((await whoami(app, old.token)).status).toBe(200);

    // No body: a grace of 0, the old token is revoked at once.
    const next = await asAdmin(http().post(`/admin/tokens/${res.body.successor.id}/rotate`));
    expect(next.status).toBe(201);
    secrets.push(next.body.successor.token);
    expect((await whoami(app, res.body.successor.token)).status).toBe(401);
    expect((await whoami(app, next.body.successor.token)).status).toBe(200);
    expect(auditLines().some((l) => l.text.includes('action=rotate') && l.text.includes(`successor=${next.body.successor.id}`))).toBe(true);

    expect((await asAdmin(http().post(`/admin/tokens/${randomUUID()}/rotate`)).send({ graceSeconds: 0 })).status).toBe(404);
  });

  it('PUT and DELETE /admin/tokens/:id/rate-limit set and remove the limit, applied from the next request; 404 for no token', async () => {
    const created = await tokens.create({ scope: 'app' });
    secrets.push(created.token);
    const set = await asAdmin(http().put(`/admin/tokens/${created.id}/rate-limit`)).send({ limit: 1, windowSeconds: 3600 });
    expect(set.status).toBe(200);
    expect(set.body).toMatchObject({ id: created.id, rateLimit: { limit: 1, windowSeconds: 3600 } });
    expect((await whoami(app, created.token)).status).toBe(200);
    expect((await whoami(app, created.token)).status).toBe(429);
    const cleared = await asAdmin(http().delete(`/admin/tokens/${created.id}/rate-limit`));
    expect(cleared.status).toBe(200);
    expect(cleared.body).toMatchObject({ id: created.id, rateLimit: null });
    expect((await whoami(app, created.token)).status).toBe(200);
    expect((await asAdmin(http().put(`/admin/tokens/${randomUUID()}/rate-limit`)).send({ limit: 1, windowSeconds: 1 })).status).toBe(404);
    expect((await asAdmin(http().delete(`/admin/tokens/${randomUUID()}/rate-limit`))).status).toBe(404);
  });

  it('POST /admin/tenants/:tenantId/invalidate drops the tenant\'s cached entries; its tokens stay valid', async () => {
    const tenantId = randomUUID();
    const created = await tokens.create({ scope: 'app', tenantId });
    secrets.push(created.token);
    expect((await whoami(app, created.token)).status).toBe(200);
    const res = await asAdmin(http().post(`/admin/tenants/${tenantId}/invalidate`));
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ dropped: expect.any(Number), cacheCleared: true });
    expect(res.body.dropped).toBeGreaterThanOrEqual(1);
    expect(await suite.redis.exists(`api_token:app:${created.token}`)).toBe(0);
    expect((await whoami(app, created.token)).status).toBe(200);
    expect(auditLines().some((l) => l.text.includes('action=invalidate-tenant') && l.text.includes(`tenant=${tenantId}`))).toBe(true);
  });

  describe('bad input: 400 naming the field, the value never echoed (answer or log), nothing done', () => {
    const id = randomUUID();
    it.each([
      ['POST', '/admin/tokens', { scope: HOSTILE }, 'scope'],
      ['POST', '/admin/tokens', { appId: HOSTILE }, 'scope'],
      ['POST', '/admin/tokens', { scope: 'app', appId: HOSTILE }, 'appId'],
      ['POST', '/admin/tokens', { scope: 'app', tenantId: HOSTILE }, 'tenantId'],
      ['POST', '/admin/tokens', { scope: 'app', expiresInSeconds: HOSTILE }, 'expiresInSeconds'],
      ['POST', '/admin/tokens', { scope: 'app', expiresInSeconds: 0.5 }, 'expiresInSeconds'],
      ['POST', '/admin/tokens', { scope: 'app', expiresAt: HOSTILE }, 'expiresAt'],
      ['POST', '/admin/tokens', { scope: 'app', expiresAt: '2001-01-01T00:00:00Z' }, 'expiresAt'],
      ['POST', '/admin/tokens', { scope: 'app', expiresAt: '2099-01-01T00:00:00Z', expiresInSeconds: 60 }, 'expiresAt'],
      ['POST', '/admin/tokens', { scope: 'app', rateLimit: { limit: HOSTILE, windowSeconds: 1 } }, 'rateLimit'],
      ['POST', '/admin/tokens', { scope: 'app', rateLimit: { limit: 1, windowSeconds: 86_401 } }, 'rateLimit'],
      // The service's own rule: a prefix that looks like a pasted token.
      ['POST', '/admin/tokens', { scope: 'app', prefix: HOSTILE.slice(0, 13) }, 'prefix'],
      ['POST', '/admin/tokens', { scope: 'app', [HOSTILE]: 1 }, 'body'],
      ['POST', '/admin/tokens', [HOSTILE], 'body'],
      ['GET', `/admin/tokens?appId=${HOSTILE}`, undefined, 'appId'],
      ['GET', `/admin/tokens?scope=${encodeURIComponent('a:*')}`, undefined, 'scope'],
      ['GET', '/admin/tokens?limit=0', undefined, 'limit'],
      ['GET', `/admin/tokens?limit=${HOSTILE}`, undefined, 'limit'],
      ['GET', `/admin/tokens?cursor=${HOSTILE}`, undefined, 'cursor'],
      ['GET', `/admin/tokens?appId=${id}&appId=${id}`, undefined, 'appId'],
      ['GET', `/admin/tokens/${HOSTILE}`, undefined, 'id'],
      ['DELETE', `/admin/tokens/${HOSTILE}`, undefined, 'id'],
      ['POST', `/admin/tokens/${HOSTILE}/rotate`, {}, 'id'],
      ['POST', `/admin/tokens/${id}/rotate`, { graceSeconds: HOSTILE }, 'graceSeconds'],
      ['POST', `/admin/tokens/${id}/rotate`, { graceSeconds: -1 }, 'graceSeconds'],
      ['PUT', `/admin/tokens/${id}/rate-limit`, { limit: HOSTILE, windowSeconds: 60 }, 'limit'],
      ['PUT', `/admin/tokens/${id}/rate-limit`, { limit: 1, windowSeconds: 0 }, 'windowSeconds'],
      ['PUT', `/admin/tokens/${id}/rate-limit`, {}, 'limit'],
      ['DELETE', `/admin/tokens/${HOSTILE}/rate-limit`, undefined, 'id'],
      ['POST', `/admin/tenants/${HOSTILE}/invalidate`, undefined, 'tenantId'],
    ] as const)('%s %s %j: 400 naming %s', async (method, path, body, field) => {
      const before = (await app.get(ApiTokenRepository).list()).length;
      const logged = logger.lines.length;
      let req = asAdmin(http()[method.toLowerCase() as 'get' | 'post' | 'put' | 'delete'](path));
      if (body !== undefined) req = req.send(body as object);
      const res = await req;
      expect({ status: res.status, field: res.body.field }).toEqual({ status: 400, field });
      expect(res.body.message).toContain(`"${field}"`);
      expect(hostileParts(res.text)).toEqual([]);
      const lines = logger.lines.slice(logged).filter((l) => l.text.includes('ApiTokenAdmin'));
      expect(lines).toEqual([expect.objectContaining({ level: 'warn', text: expect.stringContaining(`outcome=refused status=400 field=${field}`) })]);
      expect((await app.get(ApiTokenRepository).list()).length).toBe(before);
    });
  });

  it("malformed JSON is the framework's 400, which quotes nothing of the body either", async () => {
    const res = await asAdmin(http().post('/admin/tokens')).set('Content-Type', 'application/json').send(`{"scope":"app","appId":"${HOSTILE}`);
    expect(res.status).toBe(400);
    expect(hostileParts(res.text)).toEqual([]);
  });

  describe('the guard', () => {
    const routes = () => {
      const id = randomUUID();
      return [
        http().post('/admin/tokens').send({ scope: 'app' }),
        http().get('/admin/tokens'),
        http().get(`/admin/tokens/${id}`),
        http().delete(`/admin/tokens/${id}`),
        http().post(`/admin/tokens/${id}/rotate`),
        http().put(`/admin/tokens/${id}/rate-limit`).send({ limit: 1, windowSeconds: 1 }),
        http().delete(`/admin/tokens/${id}/rate-limit`),
        http().post(`/admin/tenants/${id}/invalidate`),
      ];
    };

    it('refuses every route without a token (401), with a token of another scope (401), or revoked (401), and does nothing', async () => {
      const before = (await app.get(ApiTokenRepository).list()).length;
      const app_ = await tokens.create({ scope: 'app' });
      const revokedAdmin = await tokens.create({ scope: 'admin' });
      await tokens.revoke(revokedAdmin.token);
      secrets.push(app_.token, revokedAdmin.token);
      for (const credential of [undefined, app_.token, revokedAdmin.token, generateApiToken('admin')]) {
        for (const req of routes()) {
          const res = await (credential === undefined ? req : asAdmin(req, credential));
          expect(res.status).toBe(401);
          expect(res.headers['www-authenticate']).toBe('Bearer');
        }
      }
      expect((await app.get(ApiTokenRepository).list()).length).toBe(before + 1);
    });
  });

  it("the demo's curl line creates a token through the admin API", async () => {
    const port = await listen(app);
    const lines = adminNotice(port).split('\n');
    const curl = lines.slice(lines.findIndex((l) => l.trim().startsWith('curl'))).join('\n').trim();
    expect(curl).not.toMatch(/[A-Za-z0-9]{24}/);
    const { stdout } = await promisify(execFile)('bash', ['-c', curl], { env: { ...process.env, ADMIN_TOKEN: adminToken.token } });
    const created = JSON.parse(stdout);
    secrets.push(created.token);
    expect(created).toMatchObject({ scope: 'app', token: expect.stringMatching(/^app-[A-Za-z0-9]{24}$/) });
    expect((await whoami(app, created.token)).status).toBe(200);
  });
});

describe('admin API: the path and guards are per registration; rotation by id in hashed mode', () => {
  const suite = suiteFixture();

  it('serves under the path it was given, behind its own guards, beside another application in the process', async () => {
    // Nest's static logger is the last application's: the one whose audit lines are read starts last.
    const standard = await suite.app({});
    const logger = new CapturingLogger();
    const ops = await suite.app({ logger, admin: { path: '/ops/keys/', guards: [{ canActivate: () => true }], actor: () => 'ops-bot' }, apiToken: { hashTokens: true } });
    expect((await request(ops.getHttpServer()).get('/ops/keys/tokens')).status).toBe(200);
    expect((await request(ops.getHttpServer()).get('/admin/tokens')).status).toBe(404);
    // The other application keeps /admin and ApiTokenGuard('admin').
    expect((await request(standard.getHttpServer()).get('/admin/tokens')).status).toBe(401);
    expect((await request(standard.getHttpServer()).get('/ops/keys/tokens')).status).toBe(404);

    // Hashed mode stores no prefix: the successor of a rotation by id gets the scope's default.
    const old = await ops.get(ApiTokenService).create({ scope: 'app', prefix: 'custom' });
    const res = await request(ops.getHttpServer()).post(`/ops/keys/tokens/${old.id}/rotate`).send({ graceSeconds: 0 });
    expect(res.status).toBe(201);
    expect(res.body.successor.token).toMatch(/^app-[A-Za-z0-9]{24}$/);
    expect(res.body.successor.maskedToken).toBe('*'.repeat(24));
    expect((await whoami(ops, res.body.successor.token)).status).toBe(200);
    expect((await whoami(ops, old.token)).status).toBe(401);
    expect(logger.matching(/ApiTokenAdmin/).map((l) => l.text)).toContainEqual(expect.stringContaining(`admin=ops-bot action=rotate token=${old.id}`));
  });
});
