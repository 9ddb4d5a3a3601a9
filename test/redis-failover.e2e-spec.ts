import { ApiTokenService } from '../libs/api-token/src';
import { ApiTokenInvalidationService } from '../libs/api-token/src/cache/cache-invalidation.service';
import { ApiTokenRedisService } from '../libs/api-token/src/redis/redis-access.service';
import { ApiTokenRevokedTokens } from '../libs/api-token/src/cache/revoked-tokens';
import { getRedisConnectionToken } from '@nestjs-modules/ioredis';
import type { INestApplication } from '@nestjs/common';
import type Redis from 'ioredis';
import { PrivateRedisServer } from './support/redis-server';
import { RedisSentinelSet, redisCli } from './support/redis-sentinel';
import { TcpProxy } from './support/tcp-proxy';
import { until } from './support/until';
import { localCacheState } from './support/local-cache';
import { whoami } from './support/requests';
import { suiteFixture } from './support/suite-fixture';
import type { TestAppOptions } from './support/test-app';

/** Long enough that only the revocation log (never a TTL) can explain a refusal within a test. */
const apiToken = { revocationPollIntervalMs: 250, localCacheTtlMs: 60_000 };

/**
 * Redis losing writes: Sentinel failovers (a frozen master, a forced failover with replication
 * stalled), a split brain, and a master refusing every write. Each starts servers of its own.
 */
describe('Redis failover and lost writes', () => {
  // Servers and apps a test starts are undone after that test.
  const suite = suiteFixture({ redis: false });
  const status = async (app: INestApplication, token: string) => (await whoami(app, token)).status;
  const start = (options: Partial<TestAppOptions>) => suite.app({ apiToken, ...options });
  const key = (token: string) => `api_token:app:${token}`;
  /** The port of the server an instance's own Redis connection is on. */
  const serverOf = (app: INestApplication) => {
    const client = app.get<Redis>(getRedisConnectionToken()) as unknown as { status: string; stream?: { remotePort?: number } };
    // Ready, and taken as up by the module again (its circuit closed), so requests read this server.
    return client.status === 'ready' && !app.get(ApiTokenRedisService).isDown ? client.stream?.remotePort : undefined;
  };
  /** Instances subscribed to the invalidation channel (database 0) on a server. */
  const subscribers = async (port: number) => Number((await redisCli(port, 'PUBSUB', 'NUMSUB', 'api_token_invalidation:0')).split('\n')[1]);

  it('through a frozen master: valid tokens answer, a revocation after the failover reaches every instance, and an instance left on the old master (split brain) refuses it', async () => {
    const set = await RedisSentinelSet.start();
    suite.cleanup(() => set.stop());
    const [oldMaster, replica] = set.serverPorts;
    const a = await start({ redisSentinels: set.sentinels });
    const b = await start({ redisSentinels: set.sentinels });
    // An instance configured with the master's address rather than the sentinels: it stays on the old master.
    const x = await start({ redisUrl: `redis://127.0.0.1:${oldMaster}` });
    const valid = await a.get(ApiTokenService).create({ scope: 'app' });
    const revoked = await a.get(ApiTokenService).create({ scope: 'app' });
    for (const app of [a, b, x]) for (const { token } of [valid, revoked]) expect(await status(app, token)).toBe(200);
    await until('the replica has the entries', async () => (await redisCli(replica, 'EXISTS', key(revoked.token))) === '1');
    const entry = await redisCli(oldMaster, '--no-raw', 'GET', key(revoked.token));

    set.pause(oldMaster);
    const answers: number[] = [];
    await until(
      'the sentinels promote the replica',
      async () => {
        answers.push(await status(a, valid.token), await status(b, valid.token));
        return (await set.masterPort()) === replica;
      },
      30_000,
    );
    expect(new Set(answers)).toEqual(new Set([200]));
    await until('both instances subscribe on the new master', async () => (await subscribers(replica)) >= 2, 10_000);
    await until('both instances use the new master', () => serverOf(a) === replica && serverOf(b) === replica, 10_000);

    const received = b.get(ApiTokenInvalidationService).receivedCount;
    await a.get(ApiTokenService).revoke(revoked.token);
    await until('the message reaches the other instance over pub/sub', () => b.get(ApiTokenInvalidationService).receivedCount > received);
    expect(await status(a, revoked.token)).toBe(401);
    expect(await status(b, revoked.token)).toBe(401);
    expect(await status(a, valid.token)).toBe(200);

    // X's Redis (the old master, frozen) never saw the revocation; X reads it from the log meanwhile.
    await until('X reads the revocation from the log', () => x.get(ApiTokenRevokedTokens).has(revoked.token), 5_000);
    set.resume(oldMaster);
    // Not yet demoted, the old master takes writes: the entry comes back (a fill of Dify, a delete that never arrived).
    expect(await set.role(oldMaster)).toBe('master');
    await redisCli(oldMaster, 'SET', key(revoked.token), JSON.parse(entry), 'EX', '600');
    expect(await status(x, revoked.token)).toBe(401);
    expect(await status(x, valid.token)).toBe(200);
  });

  it('a revocation acknowledged by a master whose writes never reached the replica it is failed over to is refused everywhere', async () => {
    let proxy: TcpProxy | undefined;
    const set = await RedisSentinelSet.start({ replicaUpstream: async (master) => (proxy = await TcpProxy.start('127.0.0.1', master)).port });
    suite.cleanup(() => set.stop());
    suite.cleanup(() => proxy!.close());
    const [, replica] = set.serverPorts;
    const a = await start({ redisSentinels: set.sentinels });
    const b = await start({ redisSentinels: set.sentinels });
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    expect(await status(a, created.token)).toBe(200);
    expect(await status(b, created.token)).toBe(200);
    await until('the replica has the entry', async () => (await redisCli(replica, 'EXISTS', key(created.token))) === '1');

    proxy!.cut('hang');
    const revocation = await a.get(ApiTokenService).revoke(created.token);
    expect(revocation.cacheCleared).toBe(true);
    expect(await status(b, created.token)).toBe(401);
    await until('B reads the revocation from the log', () => b.get(ApiTokenRevokedTokens).has(created.token), 5_000);

    expect(await set.failover()).toBe(replica);
    // The promoted replica still holds the entry the old master acknowledged deleting.
    expect(await redisCli(replica, 'EXISTS', key(created.token))).toBe('1');
    await until('both instances use the new master', async () => (await subscribers(replica)) >= 2 && serverOf(a) === replica && serverOf(b) === replica, 10_000);
    expect(await status(b, created.token)).toBe(401);
    expect(await status(a, created.token)).toBe(401);
    // Deleted again by the first read; a "no such token" entry may take its place.
    await until('the stale entry is deleted again', async () => ['', 'null'].includes(await redisCli(replica, 'GET', key(created.token))));
  });

  it('with every write refused (NOREPLICAS), a revoked token is refused everywhere', async () => {
    const server = await PrivateRedisServer.start();
    suite.cleanup(() => server.kill());
    const a = await start({ redisUrl: server.url() });
    const b = await start({ redisUrl: server.url() });
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    expect(await status(a, created.token)).toBe(200);
    expect(await status(b, created.token)).toBe(200);
    await redisCli(server.port, 'CONFIG', 'SET', 'min-replicas-to-write', '1');

    await a.get(ApiTokenService).revoke(created.token);
    // Every delete was refused: the entry is still there, with most of its TTL.
    expect(await redisCli(server.port, 'EXISTS', key(created.token))).toBe('1');
    await until('B reads the revocation from the log', () => b.get(ApiTokenRevokedTokens).has(created.token), 5_000);
    expect(await status(a, created.token)).toBe(401);
    expect(await status(b, created.token)).toBe(401);
  });

  it('the listening gauge drops while no message can arrive, and comes back with an empty in-process cache', async () => {
    const server = await PrivateRedisServer.start();
    suite.cleanup(() => server.kill());
    const a = await start({ redisUrl: server.url() });
    const channel = a.get(ApiTokenInvalidationService);
    const created = await a.get(ApiTokenService).create({ scope: 'app' });
    expect(await status(a, created.token)).toBe(200);
    expect(channel.isListening).toBe(true);

    server.pause();
    try {
      await until('the gauge drops', () => !channel.isListening, 10_000);
    } finally {
      server.resume();
    }
    await until('the gauge is back', () => channel.isListening, 10_000);
    expect(localCacheState(a, created.token)).toBe('miss');
    expect(await status(a, created.token)).toBe(200);
  });
});
