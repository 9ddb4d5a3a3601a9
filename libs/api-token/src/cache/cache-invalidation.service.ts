import { Injectable, Logger, OnApplicationShutdown, OnModuleInit, Optional } from '@nestjs/common';
import type { Cluster, Redis } from 'ioredis';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiTokenCacheService } from './token-cache.service';
import { CACHE_KEY_PREFIX, parseScopedKey } from '../api-token.keys';
import { type RedisClient, redisDb } from '../redis/redis.commands';
import { describeError } from '../api-token.errors';
import { ApiTokenRedisService, UNCONFIRMED } from '../redis/redis-access.service';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';

/**
 * The Redis pub/sub channel on which instances tell each other which cache keys to drop from their
 * in-process cache. Pub/sub ignores the logical database, so the channel in use carries it as a
 * suffix (see {@link invalidationChannel}): applications on other databases of one server stay apart.
 */
export const INVALIDATION_CHANNEL = 'api_token_invalidation';

/** The channel used with this client: `api_token_invalidation:{db}` (db 0 on a Cluster). */
export const invalidationChannel = (client: RedisClient): string => `${INVALIDATION_CHANNEL}:${redisDb(client)}`;

/** Keys per published message. */
const KEYS_PER_MESSAGE = 500;
const RECONNECT_MS = 1000;
const CLUSTER_READY_WAIT_MS = 2000;
const CLUSTER_NODE_RETRIES = 5;
const QUIT_TIMEOUT_MS = 1000;
/**
 * How often the instance publishes a ping to itself, and how long the channel may stay silent before
 * it counts as lost. A subscription can look healthy while no message can arrive (a frozen master, a
 * subscriber left on a demoted or partitioned master while publishers moved on); only a message
 * that went the whole way proves it. One PUBLISH per interval per instance, on a channel only this
 * instance listens to, so the cost does not grow with the number of instances.
 */
const ECHO_INTERVAL_MS = 1000;
export const ECHO_LOST_AFTER_MS = 3000;

interface InvalidationMessage {
  /** The publishing instance, which has already evicted the keys itself. */
  origin: string;
  keys: string[];
}

/**
 * Keeps every instance's in-process cache (L1) in step with Redis: each time the cache drops keys
 * from Redis, the keys are published, and every other instance drops them from its L1.
 *
 * It listens on a connection of its own (`client.duplicate()`). When that connection comes back
 * after a loss, messages may have been missed, so L1 is emptied once the channel is subscribed
 * again. While the connection is down, an entry lives in L1 at most `localCacheTtlMs`.
 */
@Injectable()
export class ApiTokenInvalidationService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(ApiTokenInvalidationService.name);
  /** Identifies this instance's own messages, which it skips. */
  readonly instanceId = randomUUID();
  readonly channel: string;
  private subscriber: Redis | undefined;
  private subscribing: Promise<void> = Promise.resolve();
  private started = false;
  private listening = false;
  private closing = false;
  private received = 0;
  /** This instance's own echo channel (see {@link ECHO_INTERVAL_MS}). */
  private readonly echoChannel: string;
  /** When the oldest ping not echoed yet was sent (0 when none is waiting). */
  private echoAwaitedSince = 0;
  private echoTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly redis: ApiTokenRedisService,
    private readonly cache: ApiTokenCacheService,
    @Optional() metrics?: ApiTokenMetrics,
  ) {
    this.channel = invalidationChannel(redis.client);
    this.echoChannel = `${this.channel}:echo:${this.instanceId}`;
    cache.onEviction((keys) => this.publish(keys));
    metrics?.source('invalidationListening', () => (this.listening ? 1 : 0));
    metrics?.source('invalidationMessagesReceived', () => this.received);
  }

  /** Whether the channel is subscribed right now (evictions from other instances reach this one). */
  get isListening(): boolean {
    return this.listening;
  }

  /** Messages from other instances acted on since start. */
  get receivedCount(): number {
    return this.received;
  }

  async onModuleInit(): Promise<void> {
    await this.connect();
    await this.subscribing;
    this.started = true;
    this.echoTimer = setInterval(() => void this.checkEcho(), ECHO_INTERVAL_MS).unref();
  }

  private async connect(): Promise<void> {
    if (this.closing) return;
    const subscriber = await this.createSubscriber();
    if (!subscriber) {
      this.logger.warn('Invalidation channel not subscribed at start (no Redis node yet); retrying in the background');
      setTimeout(() => void this.connect(), RECONNECT_MS).unref();
      return;
    }
    this.subscriber = subscriber;
    subscriber.on('message', (channel: string, message: string) => this.receive(channel, message));
    subscriber.on('ready', () => (this.subscribing = this.subscribe()));
    subscriber.on('error', (error: unknown) => this.lost(error));
    subscriber.on('close', () => this.lost());
    subscriber.on('end', () => {
      if (this.subscriber === subscriber) void this.connect();
    });
    try {
      await subscriber.connect();
    } catch (error) {
      this.logger.warn(`Invalidation channel not subscribed at start (${describeError(error)}); retrying in the background`);
    }
  }

  /**
   * A connection of its own for SUBSCRIBE. On a Cluster it is a plain connection to one master
   * (PUBLISH reaches every node), so that its loss and return are seen like on a single node; after a
   * few failed reconnects it ends and another master is picked.
   */
  private async createSubscriber(): Promise<Redis | undefined> {
    const client = this.redis.client;
    if (!client.isCluster) {
      // Under Sentinel the subscriber leaves a master as soon as the sentinels announce its
      // successor, whatever the application chose for its own connection.
      const sentinel = ((client as Redis).options.sentinels?.length ?? 0) > 0;
      return (client as Redis).duplicate({ lazyConnect: true, autoResubscribe: false, ...(sentinel ? { failoverDetector: true } : {}) });
    }
    const cluster = client as Cluster;
    if (cluster.status !== 'ready') {
      await Promise.race([once(cluster, 'ready'), sleep(CLUSTER_READY_WAIT_MS)]);
    }
    const masters = cluster.nodes('master');
    if (masters.length === 0) return undefined;
    const node = masters[Math.floor(Math.random() * masters.length)];
    return node.duplicate({
      lazyConnect: true,
      autoResubscribe: false,
      retryStrategy: (attempt: number) => (attempt > CLUSTER_NODE_RETRIES ? null : Math.min(attempt * 100, 1000)),
    });
  }

  async onApplicationShutdown(): Promise<void> {
    this.closing = true;
    clearInterval(this.echoTimer);
    const subscriber = this.subscriber;
    this.subscriber = undefined;
    if (!subscriber) return;
    // A frozen Redis never answers QUIT: wait for it no longer than a command, then drop the socket.
    if (subscriber.status === 'ready') {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<boolean>((resolve) => (timer = setTimeout(resolve, QUIT_TIMEOUT_MS, false)));
      const quit = subscriber.quit().then(() => true, () => false);
      await Promise.race([quit, late]);
      clearTimeout(timer);
    }
    // Also after quit(): only disconnect() closes a Sentinel client's failover-detector connections.
    subscriber.disconnect();
  }

  /**
   * Tells every other instance to drop these cache keys from its L1; true when Redis confirmed every
   * message (an error reply or no answer is false). Never throws (a lost message is bounded by L1's TTL).
   */
  async publish(keys: readonly string[]): Promise<boolean> {
    let confirmed = true;
    for (let i = 0; i < keys.length; i += KEYS_PER_MESSAGE) {
      const message: InvalidationMessage = { origin: this.instanceId, keys: keys.slice(i, i + KEYS_PER_MESSAGE) };
      const payload = JSON.stringify(message);
      const sent = await this.redis.attempt('publish', (r) => r.publish(this.channel, payload), { force: true });
      if (sent === UNCONFIRMED) confirmed = false;
    }
    return confirmed;
  }

  private async subscribe(): Promise<void> {
    const subscriber = this.subscriber;
    if (!subscriber || this.closing) return;
    try {
      await subscriber.subscribe(this.channel, this.echoChannel);
    } catch (error) {
      this.lost(error);
      // Connected but not subscribed would stay so: reconnect, and subscribe again when ready.
      if (!this.closing) subscriber.disconnect(true);
      return;
    }
    this.listening = true;
    this.echoAwaitedSince = 0;
    if (this.started) {
      this.cache.clearLocal();
      this.logger.log('Invalidation channel subscribed again; in-process cache emptied (messages may have been missed)');
    }
  }

  /**
   * Publishes the next ping, after checking that the last ones came back. A ping unanswered for
   * {@link ECHO_LOST_AFTER_MS} means the channel is lost; when Redis itself answers (the ping was
   * published), the subscriber is on the wrong server, so it reconnects (under Sentinel, to the
   * master named now).
   *
   * Silence is counted from the ping, not from the last echo, and judged only after the socket has
   * been read: an event loop blocked for seconds (a busy or starved process) leaves echoes unread,
   * and this timer runs before the sockets are read, so it would otherwise take its own stall for a
   * lost channel and empty the in-process cache for nothing.
   */
  private async checkEcho(): Promise<void> {
    const subscriber = this.subscriber;
    if (this.closing || !subscriber) return;
    if (this.listening && this.echoAwaitedSince > 0 && performance.now() - this.echoAwaitedSince > ECHO_LOST_AFTER_MS) {
      await new Promise(setImmediate);
      if (this.listening && this.echoAwaitedSince > 0 && subscriber === this.subscriber) {
        this.lost('no message came through');
        if (!this.redis.isDown && subscriber.status === 'ready') subscriber.disconnect(true);
      }
    }
    if (this.echoAwaitedSince === 0) this.echoAwaitedSince = performance.now();
    await this.redis.call('publish', (r) => r.publish(this.echoChannel, '1'));
  }

  private lost(error?: unknown): void {
    if (!this.listening || this.closing) return;
    this.listening = false;
    const reason = error === undefined ? 'connection closed' : typeof error === 'string' ? error : describeError(error);
    this.logger.warn(`Invalidation channel lost (${reason}); in-process entries live at most their TTL until it is back`);
  }

  private receive(channel: string, message: string): void {
    if (channel === this.echoChannel) return this.echoed();
    if (channel !== this.channel) return;
    const parsed = parseMessage(message);
    if (!parsed || parsed.origin === this.instanceId) return;
    this.received++;
    this.cache.evictLocal(parsed.keys);
  }

  /** The channel works (again): a subscription that was taken as lost may have missed messages. */
  private echoed(): void {
    this.echoAwaitedSince = 0;
    if (this.listening || this.closing) return;
    this.listening = true;
    this.cache.clearLocal();
    this.logger.log('Invalidation channel answers again; in-process cache emptied (messages may have been missed)');
  }
}

/** A message of another instance, or null when it is not one (only cache keys are taken from it). */
function parseMessage(message: string): InvalidationMessage | null {
  let value: unknown;
  try {
    value = JSON.parse(message);
  } catch {
    return null;
  }
  const v = value as Partial<InvalidationMessage> | null;
  if (!v || typeof v.origin !== 'string' || !Array.isArray(v.keys)) return null;
  const keys = v.keys.filter((key): key is string => typeof key === 'string' && parseScopedKey(CACHE_KEY_PREFIX, key) !== null);
  return { origin: v.origin, keys };
}
