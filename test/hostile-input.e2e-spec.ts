import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { INestApplication } from '@nestjs/common';
import Redis from 'ioredis';
import { CapturingLogger } from './support/capturing-logger';
import { HOSTILE_AUTHORIZATION } from './support/hostile-corpus';
import { get, listen, rawAuthorization, rawRequest } from './support/http-client';
import { QueryCounter } from './support/query-counter';
import { PrivateRedisServer } from './support/redis-server';
import { suiteFixture } from './support/suite-fixture';

/**
 * The hostile corpus over raw sockets, on Express and Fastify: every answer is a 4xx, the app stays
 * up, and no value causes a Redis command (MONITOR on a private redis-server) or a database statement.
 */
describe.each(['express', 'fastify'] as const)('hostile Authorization values (%s)', (adapter) => {
  const suite = suiteFixture({ redis: false });
  let server: PrivateRedisServer;
  let app: INestApplication;
  let port: number;
  let monitor: Redis;
  let control: Redis;
  const commands: string[][] = [];
  const counter = new QueryCounter();
  const logger = new CapturingLogger();

  beforeAll(async () => {
    expect(HOSTILE_AUTHORIZATION.length).toBeGreaterThanOrEqual(40);
    server = await PrivateRedisServer.start();
    suite.cleanup(() => server.kill());
    // Unknown tokens take the usual path here (its I/O is counted); the filter has its own suite.
    app = await suite.app({ redisUrl: server.url(), adapter, counter, logger, apiToken: { membershipFilterRebuildMs: 0 } });
    port = await listen(app);
    control = new Redis(server.url());
    suite.cleanup(() => {
      monitor?.disconnect();
      control.disconnect();
    });
    monitor = await control.monitor();
    monitor.on('monitor', (_time: string, args: string[]) => commands.push(args));
  });

  /** The commands the app sent since the last call, once MONITOR has shown a marker sent after them. */
  async function appCommands(): Promise<string[][]> {
    const marker = `marker-${Math.random()}`;
    await control.echo(marker);
    const deadline = Date.now() + 5000;
    while (!commands.some((c) => c[1] === marker)) {
      if (Date.now() > deadline) throw new Error('MONITOR did not show the marker');
      await new Promise((resolve) => setImmediate(resolve));
    }
    const seen = commands.splice(0).filter((c) => !(c[0] === 'echo' && c[1] === marker));
    return seen;
  }

  it('sees the I/O of a well-formed unknown token (the counters work)', async () => {
    await appCommands();
    counter.reset();
    expect((await get(port, '/app/whoami', generateApiToken('app'))).status).toBe(401);
    expect(counter.count()).toBe(1);
    expect((await appCommands()).length).toBeGreaterThan(0);
  });

  it.each(HOSTILE_AUTHORIZATION.map((h) => [h.name, h.value] as const))('%s: 4xx, no Redis command, no statement', async (_, value) => {
    await appCommands();
    counter.reset();
    const answer = await rawAuthorization(port, '/app/whoami', value);
    expect(answer.status).toBeGreaterThanOrEqual(400);
    expect(answer.status).toBeLessThan(500);
    expect(counter.count(/.*/)).toBe(0);
    expect(await appCommands()).toEqual([]);
  });

  it('refuses a request with more than one Authorization header, even when the first holds a valid token, with no I/O', async () => {
    const record = await app.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
    const header = (name: string) => `${name}: Bearer ${record.token}`;
    await appCommands();
    counter.reset();
    for (const lines of [
      [header('Authorization'), header('Authorization')],
      [header('Authorization'), 'Authorization: Bearer other'],
      [header('authorization'), 'X-Other: 1', 'AUTHORIZATION: Bearer other'],
    ]) {
      const answer = await rawRequest(port, '/app/whoami', Buffer.from(lines.join('\r\n'), 'latin1'));
      expect(answer.status).toBe(401);
      expect(answer.raw).toContain('only once');
    }
    expect(counter.count(/.*/)).toBe(0);
    expect(await appCommands()).toEqual([]);
    expect((await rawRequest(port, '/app/whoami', Buffer.from(header('Authorization'), 'latin1'))).status).toBe(200);
  });

  it('still serves a valid token afterwards, and logged none of the values', async () => {
    const record = await app.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
    expect((await get(port, '/app/whoami', record.token)).status).toBe(200);
    const logged = logger.lines.map((l) => l.text).join('\n');
    for (const { value } of HOSTILE_AUTHORIZATION) {
      const token = value.toString('latin1').replace(/^\s*\S+\s+/, '');
      if (token.length >= 8) expect(logged).not.toContain(token.slice(0, 8));
    }
  });
});
