import { ApiTokenService } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { INestApplication } from '@nestjs/common';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import request from 'supertest';
import { localCacheState } from './support/local-cache';
import { REDIS_ENV } from './support/servers';
import { suiteFixture } from './support/suite-fixture';
import { DEMO_APP_ID, demoTokenNotice } from '../apps/demo/src/demo.token';
import { until } from './support/until';

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

const MASK = '*'.repeat(24);

// Each run of the command starts Node and ts-node: seconds, more when several run at once, and
// minutes for a test that starts ten at once on a loaded two-CPU machine.
jest.setTimeout(180_000);

describe('token command line', () => {
  const suite = suiteFixture();
  let app: INestApplication;

  /** `npm run --silent token -- …args` on the test's database and Redis database. */
  const cli = (args: string[], input?: string): Promise<CliResult> =>
    new Promise((resolve, reject) => {
      const child = spawn('npm', ['run', '--silent', 'token', '--', ...args], {
        cwd: join(__dirname, '..'),
        env: { ...process.env, DATABASE_URL: suite.db.url, ...REDIS_ENV },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
      child.stdin.end(input ?? '');
    });
  const whoami = (token: string) => request(app.getHttpServer()).get('/app/whoami').set('Authorization', `Bearer ${token}`);
  const local = (token: string) => localCacheState(app, token);
  beforeAll(async () => {
    // No scheduled flush: it would move last_used_at under the tests that compare listings.
    app = await suite.app({ apiToken: { flushCron: false } });
  });

  it('create prints the token and nothing else, and the token works on the running demo', async () => {
    const appId = randomUUID();
    const tenantId = randomUUID();
    const result = await cli(['create', '--scope', 'app', '--app-id', appId, '--tenant-id', tenantId]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^app-[A-Za-z0-9]{24}\n$/);
    const token = result.stdout.trim();
    expect(await app.get(ApiTokenRepository).findByToken(token, 'app')).toMatchObject({ appId, tenantId, type: 'app' });
    expect((await whoami(token)).body).toMatchObject({ appId, tenantId, scope: 'app' });
  });

  it('list shows tokens masked, as a table or JSON, filtered', async () => {
    const tenantId = randomUUID();
    const tokens = app.get(ApiTokenService);
    const first = await tokens.create({ scope: 'app', tenantId });
    const second = await tokens.create({ scope: 'dataset', tenantId });
    await tokens.create({ scope: 'app' });

    const table = await cli(['list', '--tenant-id', tenantId]);
    expect(table.code).toBe(0);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID\s+SCOPE\s+TOKEN\s+APP\s+TENANT\s+CREATED\s+LAST USED\s+EXPIRES\s+RATE LIMIT$/);
    expect(lines).toHaveLength(3);
    expect(table.stdout).toContain(`app-${MASK}`);
    expect(table.stdout).toContain(`dataset-${MASK}`);
    const json = await cli(['list', '--tenant-id', tenantId, '--scope', 'dataset', '--json']);
    expect(JSON.parse(json.stdout)).toEqual([expect.objectContaining({ id: second.id, maskedToken: `dataset-${MASK}`, tenantId })]);
    for (const out of [table.stdout, json.stdout]) {
      for (const { token } of [first, second]) expect(out).not.toContain(token.slice(-24));
    }
  });

  it('revoke takes effect on the running demo: by token, from stdin, and by id', async () => {
    const tokens = app.get(ApiTokenService);
    const created = [await tokens.create({ scope: 'app' }), await tokens.create({ scope: 'app' }), await tokens.create({ scope: 'app' })];
    for (const { token } of created) {
      expect((await whoami(token)).status).toBe(200);
      expect(local(token)).toBe('hit');
    }
    const [byToken, byStdin, byId] = await Promise.all([
      cli(['revoke', created[0].token]),
      cli(['revoke', '-'], `${created[1].token}\n`),
      cli(['revoke', '--id', created[2].id]),
    ]);
    for (const [i, result] of [byToken, byStdin, byId].entries()) {
      expect(result).toMatchObject({ code: 0, stdout: `Revoked ${created[i].id} (app)\n` });
    }
    for (const { token } of created) {
      await until('the demo drops the revoked token', () => local(token) === 'miss');
      expect((await whoami(token)).status).toBe(401);
    }
  });

  it('invalidate-tenant empties the tenant cache entries on the running demo; its tokens keep working', async () => {
    const tenantId = randomUUID();
    const { token } = await app.get(ApiTokenService).create({ scope: 'app', tenantId });
    expect((await whoami(token)).status).toBe(200);
    expect(await suite.redis.smembers(`tenant_tokens:${tenantId}`)).toEqual([`api_token:app:${token}`]);

    const result = await cli(['invalidate-tenant', tenantId]);

    expect(result).toMatchObject({ code: 0, stdout: `Dropped 1 cached entry of tenant ${tenantId}\n` });
    expect(await suite.redis.exists(`api_token:app:${token}`, `tenant_tokens:${tenantId}`)).toBe(0);
    await until('the demo drops the tenant entries', () => local(token) === 'miss');
    expect((await whoami(token)).status).toBe(200);
  });

  it('bad arguments get a clear message on stderr, nothing on stdout, and exit code 2; no match exits 1', async () => {
    const unknown = generateApiToken('app');
    // Each case is a Node and ts-node start-up; the other argument errors run in-process in libs/api-token/src/cli/token.cli.spec.ts.
    const cases: [string[], string | RegExp, number][] = [
      [[], /Usage: token/, 2],
      [['bogus'], 'unknown command', 2],
      [['create', '--scope', 'app', '--app-id', 'nope'], "option '--app-id <uuid>' is invalid: must be a UUID", 2],
      [['revoke', unknown], 'no token matched; nothing revoked', 1],
    ];
    // What the commands could change; last_used_at is the flush's (the app flushes every minute).
    const rows = async () => (await app.get(ApiTokenRepository).list()).map(({ lastUsedAt: _, ...row }) => row);
    const before = await rows();
    const results = await Promise.all(cases.map(([args]) => cli(args)));
    for (const [i, [args, message, code]] of cases.entries()) {
      expect({ args, code: results[i].code, stdout: results[i].stdout }).toEqual({ args, code, stdout: '' });
      expect(results[i].stderr).toEqual(typeof message === 'string' ? expect.stringContaining(message) : expect.stringMatching(message));
      expect(results[i].stderr).not.toContain(unknown.slice(4));
    }
    expect(await rows()).toEqual(before);
  });

  it('the demo prints its token only when it has just created it, then the masked form and how to create another', async () => {
    const tokens = app.get(ApiTokenService);
    const first = await demoTokenNotice(tokens, 3000);
    const [created] = await tokens.list({ appId: DEMO_APP_ID });
    const token = /Bearer (\S+)'/.exec(first)?.[1];
    expect(token).toMatch(/^app-[A-Za-z0-9]{24}$/);
    expect(await app.get(ApiTokenRepository).findByToken(token!, 'app')).toMatchObject({ id: created.id });
    const later = await demoTokenNotice(tokens, 3000);
    expect(later).toContain(`app-${MASK}`);
    expect(later).toContain('npm run --silent token -- create --scope app');
    for (let i = 4; i + 6 <= token!.length; i++) expect(later).not.toContain(token!.slice(i, i + 6));
    expect(await tokens.list({ appId: DEMO_APP_ID })).toHaveLength(1);
  });

  it('create --rate-limit, list shows the limit, rate-limit --set / --clear change it on the running demo', async () => {
    const appId = randomUUID();
    const created = await cli(['create', '--scope', 'app', '--app-id', appId, '--rate-limit', '100/1m']);
    expect(created.code).toBe(0);
    const token = created.stdout.trim();
    const [json, table] = await Promise.all([cli(['list', '--json', '--app-id', appId]), cli(['list', '--app-id', appId])]);
    const [row] = JSON.parse(json.stdout) as { id: string; rateLimit: unknown }[];
    expect(row.rateLimit).toEqual({ limit: 100, windowSeconds: 60 });
    expect(table.stdout).toMatch(/RATE LIMIT\n.*\s100\/60s\n$/);
    const first = await whoami(token);
    expect({ status: first.status, policy: first.headers['ratelimit-policy'] }).toEqual({ status: 200, policy: '"token";q=100;w=60' });
    const limitOf = async () => (await app.get(ApiTokenService).list({ appId }))[0].rateLimit;

    const set = await cli(['rate-limit', '-', '--set', '2/1h'], `${token}\n`);
    expect(set).toMatchObject({ code: 0, stdout: `Set ${row.id} (app): rate limit 2/3600s\n` });
    expect(await limitOf()).toEqual({ limit: 2, windowSeconds: 3600 });
    await until('the demo applies the new limit', async () => (await whoami(token)).headers['ratelimit-policy'] === '"token";q=2;w=3600');

    expect(await cli(['rate-limit', '--id', row.id, '--clear'])).toMatchObject({ code: 0, stdout: `Set ${row.id} (app): rate limit removed\n` });
    expect(await limitOf()).toBeNull();
    await until('the demo drops the limit', async () => (await whoami(token)).headers['ratelimit-policy'] === undefined);

    const bad: [string[], string, number][] = [
      [['create', '--scope', 'app', '--rate-limit', '5/2d'], '--rate-limit must be <limit>/<n>s|m|h|d', 2],
      [['rate-limit', token, '--set', '5/1m', '--clear'], 'give either --set <limit/window> or --clear', 2],
      [['rate-limit', '--set', '5/1m'], 'give a token (or "-" to read it from stdin) or --id', 2],
      [['rate-limit', generateApiToken('app'), '--clear'], 'no token matched; nothing changed', 1],
    ];
    const results = await Promise.all(bad.map(([args]) => cli(args)));
    for (const [i, [args, message, code]] of bad.entries()) {
      expect({ args, code: results[i].code, stdout: results[i].stdout }).toEqual({ args, code, stdout: '' });
      expect(results[i].stderr).toContain(message);
      expect(results[i].stderr).not.toContain(token.slice(4));
      expect(results[i].stderr).not.toContain('5/2d');
    }
  }, 180_000);

  it('create takes an expiry, list shows it, and rotate prints only the successor; the old token lasts the grace', async () => {
    const tenantId = randomUUID();
    const [inAnHour, fixed] = await Promise.all([
      cli(['create', '--scope', 'app', '--tenant-id', tenantId, '--expires-in', '1h']),
      cli(['create', '--scope', 'app', '--tenant-id', tenantId, '--expires-at', '2099-01-31T12:00:00+01:00']),
    ]);
    for (const result of [inAnHour, fixed]) expect(result).toMatchObject({ code: 0, stdout: expect.stringMatching(/^app-[A-Za-z0-9]{24}\n$/) });
    const rows = JSON.parse((await cli(['list', '--tenant-id', tenantId, '--json'])).stdout) as { id: string; expiresAt: string }[];
    const expiries = rows.map((row) => row.expiresAt).sort();
    expect(expiries[1]).toBe('2099-01-31T11:00:00');
    expect(Date.parse(`${expiries[0]}Z`) - Date.now()).toBeGreaterThan(3_500_000);
    expect((await cli(['list', '--tenant-id', tenantId])).stdout).toContain('2099-01-31T11:00:00');

    const old = inAnHour.stdout.trim();
    expect((await whoami(old)).status).toBe(200);
    const [graced, immediate] = await Promise.all([
      cli(['rotate', '-', '--grace', '1h'], `${old}\n`),
      app.get(ApiTokenService).create({ scope: 'app' }).then(({ token }) => cli(['rotate', token]).then((result) => ({ result, token }))),
    ]);
    expect(graced).toMatchObject({ code: 0, stdout: expect.stringMatching(/^app-[A-Za-z0-9]{24}\n$/) });
    const successor = graced.stdout.trim();
    for (const token of [old, successor]) expect((await whoami(token)).status).toBe(200);
    const oldRow = await app.get(ApiTokenRepository).findByToken(old, 'app');
    expect(Date.parse(`${oldRow!.expiresAt}Z`) - Date.now()).toBeLessThanOrEqual(3_600_000);
    expect(await app.get(ApiTokenRepository).findByToken(successor, 'app')).toMatchObject({ tenantId, type: 'app' });
    expect(immediate.result).toMatchObject({ code: 0, stdout: expect.stringMatching(/^app-[A-Za-z0-9]{24}\n$/) });
    await until('the demo drops the token rotated with no grace', () => local(immediate.token) === 'miss');
    expect((await whoami(immediate.token)).status).toBe(401);
  });

  it('bad expiry and grace arguments exit 2 naming the option, never its value; rotating an unknown token exits 1', async () => {
    const unknown = generateApiToken('app');
    const cases: [string[], string, number][] = [
      [['create', '--scope', 'app', '--expires-in', unknown], '--expires-in must be a whole number followed by s, m, h or d', 2],
      [['create', '--scope', 'app', '--expires-at', unknown], '--expires-at must be an ISO-8601 date and time', 2],
      [['create', '--scope', 'app', '--expires-in', '1h', '--expires-at', '2099-01-01T00:00:00Z'], 'give --expires-in or --expires-at, not both', 2],
      [['rotate', unknown, '--grace', unknown], '--grace must be a whole number followed by s, m, h or d', 2],
      [['rotate', unknown], 'no valid token matched; nothing rotated', 1],
    ];
    const before = await app.get(ApiTokenRepository).list();
    const results = await Promise.all(cases.map(([args]) => cli(args)));
    for (const [i, [args, message, code]] of cases.entries()) {
      expect({ args, code: results[i].code, stdout: results[i].stdout }).toEqual({ args, code, stdout: '' });
      expect(results[i].stderr).toContain(message);
      expect(results[i].stderr).not.toContain(unknown.slice(4));
    }
    expect(await app.get(ApiTokenRepository).list()).toEqual(before);
  });

  it('--help describes every command and exits 0', async () => {
    const result = await cli(['--help']);
    expect(result.code).toBe(0);
    for (const command of ['create', 'list', 'revoke', 'rotate', 'rate-limit', 'invalidate-tenant']) expect(result.stdout).toContain(command);
    const sub = await cli(['create', '--help']);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toContain('--scope <scope>');
  });
});
