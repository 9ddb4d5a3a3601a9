import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import Redis from 'ioredis';
import { setTimeout as sleep } from 'node:timers/promises';
import { get, listen } from './support/http-client';
import { PrivateRedisServer } from './support/redis-server';
import { createTestApp } from './support/test-app';
import { suiteFixture } from './support/suite-fixture';

/** Resources (sockets, timers, ...) the process holds, by kind. */
function resources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const kind of process.getActiveResourcesInfo()) counts.set(kind, (counts.get(kind) ?? 0) + 1);
  return counts;
}

/** Kinds of which the process holds more than at `baseline`. */
function extra(baseline: Map<string, number>): string[] {
  return [...resources()].filter(([kind, n]) => n > (baseline.get(kind) ?? 0)).map(([kind, n]) => `${kind} +${n - (baseline.get(kind) ?? 0)}`);
}

/** Closing the application writes every recorded use and leaves no socket or timer behind. */
describe('shutdown', () => {
  const suite = suiteFixture({ redis: false });
  let server: PrivateRedisServer;
  let redis: Redis;

  beforeAll(async () => {
    server = await PrivateRedisServer.start();
    suite.cleanup(() => server.kill());
    redis = new Redis(server.url());
    suite.cleanup(() => redis.disconnect());
    await redis.ping();
  });

  it('loses no recorded usage and leaves no open handles', async () => {
    const baseline = resources();
    // Uses after the first within a minute wait in the process: only the shutdown writes them.
    const app = await createTestApp({ databaseUrl: suite.db.url, redisUrl: server.url(), apiToken: { usageWriteIntervalMs: 60_000 } });
    const port = await listen(app);
    const repository = app.get(ApiTokenRepository);
    const tokens: string[] = [];
    for (let i = 0; i < 5; i++) tokens.push((await repository.insert({ token: generateApiToken('app'), type: 'app' })).token);

    const lastUse = new Map<string, { from: number; to: number }>();
    for (let round = 0; round < 3; round++) {
      for (const token of tokens) {
        const from = Date.now();
        expect((await get(port, '/app/whoami', token)).status).toBe(200);
        lastUse.set(token, { from, to: Date.now() });
      }
      await sleep(5); // distinct milliseconds between rounds, so a lost last use shows
    }
    await app.close();

    for (const token of tokens) {
      const value = await redis.get(`api_token_active:app:${token}`);
      expect(value).not.toBeNull();
      const written = Date.parse(`${value}Z`);
      const { from, to } = lastUse.get(token)!;
      // A use is dated by the monotonic clock plus the wall clock's lead, read in whole milliseconds:
      // up to 1 ms early. The rounds are at least 5 ms apart, so a lost last use still shows.
      expect([written >= from - 1, written <= to]).toEqual([true, true]);
    }

    const deadline = Date.now() + 5000;
    while (extra(baseline).length && Date.now() < deadline) await sleep(20);
    expect(extra(baseline)).toEqual([]);
  });
});
