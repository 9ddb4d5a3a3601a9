import { ApiTokenAuthenticator } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import type { INestApplication } from '@nestjs/common';
import Redis from 'ioredis';
import { setTimeout as sleep } from 'node:timers/promises';
import { CapturingLogger } from './support/capturing-logger';
import { HOSTILE_AUTHORIZATION } from './support/hostile-corpus';
import { type Answer, get, listen, rawAuthorization } from './support/http-client';
import { PrivateRedisServer } from './support/redis-server';
import { TcpProxy } from './support/tcp-proxy';
import { suiteFixture } from './support/suite-fixture';

const CONSOLE_METHODS = ['log', 'info', 'warn', 'error', 'debug', 'trace'] as const;

/**
 * Everything the app logs at every level, everything written to the console, every answer and every
 * error the module raised, across normal traffic, a Redis outage, a PostgreSQL outage, corrupted
 * cache entries, lock contention and the hostile corpus: no 8-character piece of the secret part of
 * any token the test made may appear in it.
 */
describe('secrets never reach logs, errors or answers', () => {
  const suite = suiteFixture({ redis: false });
  let proxy: TcpProxy;
  let server: PrivateRedisServer;
  let app: INestApplication;
  let port: number;
  let redis: Redis;
  const logger = new CapturingLogger();
  const written: string[] = [];
  const made: string[] = [];
  const spies: jest.SpyInstance[] = [];

  const collect = (answer: Answer) => {
    written.push(answer.body, JSON.stringify(answer.headers));
    return answer;
  };
  const token = () => {
    const t = generateApiToken('app');
    made.push(t);
    return t;
  };

  beforeAll(async () => {
    for (const method of CONSOLE_METHODS) {
      spies.push(jest.spyOn(console, method).mockImplementation((...args: unknown[]) => void written.push(args.map(String).join(' '))));
    }
    // Undone last, once the app and the servers are gone.
    suite.cleanup(() => spies.forEach((spy) => spy.mockRestore()));
    proxy = await suite.proxy(suite.db.url);
    server = await PrivateRedisServer.start();
    suite.cleanup(() => server.kill());
    redis = new Redis(server.url(), { maxRetriesPerRequest: 0, lazyConnect: true });
    suite.cleanup(() => redis.disconnect());
    redis.on('error', () => undefined);
    await redis.connect();
    app = await suite.app({
      databaseUrl: proxy.proxied(suite.db.url),
      redisUrl: server.url(),
      logger,
      apiToken: { localCacheMax: 0, lockWaitMs: 100 },
      typeorm: { connectTimeoutMS: 500, extra: { query_timeout: 1000 } },
    });
    port = await listen(app);
  });

  it('runs the scenarios', async () => {
    const repository = app.get(ApiTokenRepository);
    const authenticator = app.get(ApiTokenAuthenticator);
    const valid = [];
    for (let i = 0; i < 6; i++) valid.push((await repository.insert({ token: token(), type: 'app' })).token);

    // Normal traffic: valid, unknown, wrong scope.
    expect(collect(await get(port, '/app/whoami', valid[0])).status).toBe(200);
    expect(collect(await get(port, '/app/whoami', token())).status).toBe(401);
    expect(collect(await get(port, '/dataset/whoami', valid[0])).status).toBe(401);

    // Corrupted cache entries: unreadable JSON, and a key of the wrong type (an error reply).
    await redis.set(`api_token:app:${valid[1]}`, '{not json');
    await redis.rpush(`api_token:app:${valid[2]}`, 'x');
    expect(collect(await get(port, '/app/whoami', valid[1])).status).toBe(200);
    expect(collect(await get(port, '/app/whoami', valid[2])).status).toBe(200);

    // Lock held by someone else: waits lockWaitMs, then queries anyway (logs a warning).
    await redis.set(`api_token_query_lock:{api_token:app:${valid[3]}}`, 'someone-else', 'PX', 10_000);
    expect(collect(await get(port, '/app/whoami', valid[3])).status).toBe(200);

    // Redis killed, requests, Redis back.
    await server.kill();
    expect(collect(await get(port, '/app/whoami', valid[4])).status).toBe(200);
    expect(collect(await get(port, '/app/whoami', token())).status).toBe(401);
    await server.start();
    const deadline = Date.now() + 10_000;
    while ((await redis.exists(`api_token:app:${valid[0]}`).catch(() => 0)) === 0) {
      if (Date.now() > deadline) throw new Error('caching did not resume');
      collect(await get(port, '/app/whoami', valid[0]));
      await sleep(50);
    }

    // PostgreSQL refused and black-holed: 503s, and the module's errors themselves.
    for (const mode of ['refuse', 'hang'] as const) {
      proxy.cut(mode);
      expect(collect(await get(port, '/app/whoami', valid[5])).status).toBe(503);
      const error = await authenticator.authenticate(token(), 'app').catch((e: unknown) => e);
      expect(error).toBeInstanceOf(Error);
      written.push(String(error), (error as Error).stack ?? '', JSON.stringify(error));
      proxy.restore();
    }

    // The hostile corpus.
    for (const { value } of HOSTILE_AUTHORIZATION) written.push((await rawAuthorization(port, '/app/whoami', value)).raw);

    await app.close();
    // The scan must see something, or it proves nothing.
    expect(logger.lines.length).toBeGreaterThan(0);
    expect(logger.matching(/Redis .* failed/).length).toBeGreaterThan(0);
    expect(logger.matching(/Lookup lock not had/).length).toBeGreaterThan(0);
  });

  it('finds no piece of any token in what was collected', () => {
    const everything = [...logger.lines.map((l) => `${l.level} ${l.text}`), ...written].join('\n');
    expect(made.length).toBeGreaterThan(8);
    const leaks: string[] = [];
    for (const t of made) {
      const secret = t.slice(t.indexOf('-') + 1);
      for (let i = 0; i + 8 <= secret.length; i++) {
        if (everything.includes(secret.slice(i, i + 8))) leaks.push(secret.slice(i, i + 8));
      }
    }
    expect(leaks).toEqual([]);
  });
});
