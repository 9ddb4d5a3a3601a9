import { Logger } from '@nestjs/common';
import Redis, { Cluster, ReplyError } from 'ioredis';
import { ApiTokenRedisService, UNCONFIRMED } from './redis-access.service';
import { resolveApiTokenOptions } from '../api-token.options';
import type { RedisClient } from './redis.commands';

function setup(status = 'ready') {
  const client = { status } as unknown as RedisClient & { status: string };
  const service = new ApiTokenRedisService(client, resolveApiTokenOptions({ redisCommandTimeoutMs: 20, redisCooldownMs: 60_000 }));
  const warn = jest.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
  const log = jest.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
  jest.spyOn(Logger.prototype, 'debug').mockImplementation(() => undefined);
  return { client, service, warn, log };
}

describe('ApiTokenRedisService', () => {
  afterEach(() => jest.restoreAllMocks());

  it.each([
    ['a client', () => new Redis({ keyPrefix: 'app1:', lazyConnect: true })],
    ['a Cluster', () => new Cluster([{ host: '127.0.0.1', port: 7000 }], { keyPrefix: 'app1:', lazyConnect: true })],
    ['a Cluster whose nodes', () => new Cluster([{ host: '127.0.0.1', port: 7000 }], { redisOptions: { keyPrefix: 'app1:' }, lazyConnect: true })],
  ])('refuses %s with a keyPrefix (the flush would see no key), naming the setting', (_, make) => {
    const client = make();
    try {
      expect(() => new ApiTokenRedisService(client, resolveApiTokenOptions())).toThrow(/Redis client has a keyPrefix/);
    } finally {
      client.disconnect();
    }
  });

  it('takes a client without a keyPrefix', () => {
    const client = new Redis({ lazyConnect: true });
    expect(new ApiTokenRedisService(client, resolveApiTokenOptions()).client).toBe(client);
    client.disconnect();
  });

  it('gives up on a call that does not answer within the timeout and skips Redis afterwards', async () => {
    const { service, warn } = setup();
    expect(await service.call('get', () => new Promise(() => undefined))).toBeUndefined();
    expect(service.isDown).toBe(true);
    const fn = jest.fn(async () => 'x');
    expect(await service.call('get', fn)).toBeUndefined();
    expect(fn).not.toHaveBeenCalled();
    expect(warn).toHaveBeenCalledTimes(1);
  });

  it('does not call a client that lost its connection, and probes after the cool-down', async () => {
    const { client, service, warn, log } = setup();
    await service.call('get', async () => 'ok');
    client.status = 'reconnecting';
    const fn = jest.fn(async () => 'x');
    expect(await service.call('get', fn)).toBeUndefined();
    expect(fn).not.toHaveBeenCalled();
    client.status = 'ready';
    jest.spyOn(Date, 'now').mockReturnValue(Date.now() + 60_001);
    expect(await service.call('get', fn)).toBe('x');
    expect([service.isDown, warn.mock.calls.length, log.mock.calls.length]).toEqual([false, 1, 1]);
  });

  it('skips Redis for redisCooldownMs after a failure, not for redisCommandTimeoutMs, then probes', async () => {
    const client = { status: 'ready' } as unknown as RedisClient;
    const service = new ApiTokenRedisService(client, resolveApiTokenOptions({ redisCommandTimeoutMs: 50, redisCooldownMs: 5000 }));
    jest.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
    jest.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    const failedAt = 1_900_000_000_000;
    const now = jest.spyOn(Date, 'now').mockReturnValue(failedAt);
    expect(await service.call('get', () => Promise.reject(new Error('down')))).toBeUndefined();
    expect(service.isDown).toBe(true);
    const probe = jest.fn(async () => 'up');
    // Past the command timeout, and to the last millisecond of the cool-down: no call reaches Redis.
    for (const later of [51, 1000, 4999]) {
      now.mockReturnValue(failedAt + later);
      expect(await service.call('get', probe)).toBeUndefined();
    }
    expect(probe).not.toHaveBeenCalled();
    expect(service.isDown).toBe(true);
    // The cool-down is over: one probe goes through, and Redis is up again.
    now.mockReturnValue(failedAt + 5000);
    expect(await service.call('get', probe)).toBe('up');
    expect(probe).toHaveBeenCalledTimes(1);
    expect(service.isDown).toBe(false);
  });

  it('a failed probe holds Redis off for another full cool-down, counted from the probe', async () => {
    const client = { status: 'ready' } as unknown as RedisClient;
    const service = new ApiTokenRedisService(client, resolveApiTokenOptions({ redisCommandTimeoutMs: 50, redisCooldownMs: 5000 }));
    jest.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
    const t0 = 1_900_000_000_000;
    const now = jest.spyOn(Date, 'now').mockReturnValue(t0);
    await service.call('get', () => Promise.reject(new Error('down')));
    now.mockReturnValue(t0 + 5000);
    expect(await service.call('get', () => Promise.reject(new Error('still down')))).toBeUndefined();
    const probe = jest.fn(async () => 'up');
    now.mockReturnValue(t0 + 5000 + 4999);
    expect(await service.call('get', probe)).toBeUndefined();
    expect(probe).not.toHaveBeenCalled();
    now.mockReturnValue(t0 + 10_000);
    expect(await service.call('get', probe)).toBe('up');
  });

  it('lets one probe through at a time', async () => {
    const { service } = setup();
    await service.call('get', () => Promise.reject(new Error('down')));
    jest.spyOn(Date, 'now').mockReturnValue(Date.now() + 60_001);
    let answer!: (v: string) => void;
    const probe = service.call('get', () => new Promise<string>((resolve) => (answer = resolve)));
    const other = jest.fn(async () => 'x');
    expect(await service.call('get', other)).toBeUndefined();
    expect(other).not.toHaveBeenCalled();
    answer('y');
    expect(await probe).toBe('y');
    expect(service.isDown).toBe(false);
  });

  it('does not open the circuit on an error reply (Redis answered)', async () => {
    const { service, warn } = setup();
    expect(await service.call('get', () => Promise.reject(new ReplyError('WRONGTYPE')))).toBeUndefined();
    expect([service.isDown, warn.mock.calls.length]).toEqual([false, 0]);
  });

  it('bounds every call, even one asking for no limit', async () => {
    const { service } = setup();
    expect(await service.call('get', () => new Promise(() => undefined), { timeoutMs: 0 })).toBeUndefined();
    expect(service.isDown).toBe(true);
  });

  it('tells a call Redis did not confirm from one it answered, error replies included', async () => {
    const { service } = setup();
    expect(await service.attempt('del', async () => null)).toBeNull();
    expect(await service.attempt('del', () => Promise.reject(new ReplyError('NOREPLICAS')))).toBe(UNCONFIRMED);
    expect(service.isDown).toBe(false);
    expect(await service.attempt('del', () => new Promise(() => undefined), { force: true })).toBe(UNCONFIRMED);
    expect(service.isDown).toBe(true);
  });

  it('bounds each command of a walk, and sends none once the walk is over its time', async () => {
    const { service } = setup();
    const sent: string[] = [];
    const hung = service.walk('scan', async (_, step) => {
      await step(async () => sent.push('first'));
      await step(() => new Promise(() => sent.push('hangs')));
    }, { timeoutMs: 10_000 });
    expect(await hung).toBe(UNCONFIRMED);
    expect(sent).toEqual(['first', 'hangs']);

    const { service: other } = setup();
    const late = other.walk('scan', async (_, step) => {
      await new Promise((resolve) => setTimeout(resolve, 30));
      await step(async () => sent.push('after the deadline'));
      return 'done';
    }, { timeoutMs: 10 });
    expect(await late).toBe(UNCONFIRMED);
    expect(sent).not.toContain('after the deadline');
  });

  it('still makes a forced call (a revocation write) while the circuit is open', async () => {
    const { service } = setup();
    await service.call('get', () => Promise.reject(new Error('down')));
    const skipped = jest.fn(async () => 1);
    expect(await service.call('del', skipped)).toBeUndefined();
    expect(skipped).not.toHaveBeenCalled();
    expect(await service.call('del', async () => 1, { force: true })).toBe(1);
    expect(service.isDown).toBe(false);
  });
});
