import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { sparePort } from './ports';
import { until } from './until';

const run = promisify(execFile);

/** Options of {@link RedisSentinelSet.start}. */
export interface RedisSentinelSetOptions {
  /** Sentinel `down-after-milliseconds`: how long a silent master takes to be failed over. Default 1000. */
  downAfterMs?: number;
  /**
   * Where the replica connects to reach the master (a proxy in front of it, to stall replication);
   * default the master itself.
   */
  replicaUpstream?: (masterPort: number) => Promise<number>;
}

/** One `redis-cli` command against a loopback port; the reply as text. */
export async function redisCli(port: number, ...args: string[]): Promise<string> {
  return (await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 5_000 })).stdout.trim();
}

/**
 * A master, a replica and three sentinels of the suite's own on spare loopback ports, without
 * persistence, tuned to fail over in a couple of seconds. The test freezes, resumes or kills the
 * servers and reads who the sentinels name as master.
 */
export class RedisSentinelSet {
  readonly name = 'mymaster';
  private readonly children = new Map<number, ChildProcess>();

  private constructor(
    private readonly dir: string,
    /** The port of the server that was master at start, then of the replica. */
    readonly serverPorts: [number, number],
    readonly sentinelPorts: number[],
  ) {}

  static async start(options: RedisSentinelSetOptions = {}): Promise<RedisSentinelSet> {
    const dir = mkdtempSync(join(tmpdir(), 'api-token-sentinel-'));
    const ports: number[] = [];
    const port = async () => {
      let next: number;
      do next = await sparePort();
      while (ports.includes(next));
      ports.push(next);
      return next;
    };
    const master = await port();
    const replica = await port();
    const sentinels = [await port(), await port(), await port()];
    const set = new RedisSentinelSet(dir, [master, replica], sentinels);
    try {
      set.server(master);
      await until(`redis-server on ${master} answers`, () => ping(master));
      set.server(replica, ['--replicaof', '127.0.0.1', String(await (options.replicaUpstream?.(master) ?? master))]);
      await until('the replica is in sync', async () => (await redisCli(replica, 'INFO', 'replication').catch(() => '')).includes('master_link_status:up'));
      for (const sentinel of sentinels) {
        const conf = join(dir, `sentinel-${sentinel}.conf`);
        writeFileSync(
          conf,
          [
            `port ${sentinel}`,
            'bind 127.0.0.1',
            `dir ${dir}`,
            `sentinel monitor ${set.name} 127.0.0.1 ${master} 2`,
            `sentinel down-after-milliseconds ${set.name} ${options.downAfterMs ?? 1000}`,
            // Also how long a replica may replicate from another address before the sentinels repoint it.
            `sentinel failover-timeout ${set.name} 60000`,
          ].join('\n') + '\n',
        );
        set.spawn(sentinel, 'redis-server', [conf, '--sentinel']);
      }
      await until(
        'the sentinels know the replica and each other',
        async () => {
          for (const sentinel of sentinels) {
            const info = await redisCli(sentinel, 'SENTINEL', 'MASTER', set.name).catch(() => '');
            if (!/num-slaves\n1\n/.test(info) || !/num-other-sentinels\n2\n/.test(info)) return false;
          }
          return true;
        },
        20_000,
      );
      return set;
    } catch (error) {
      await set.stop();
      throw error;
    }
  }

  /** The sentinels, as ioredis takes them. */
  get sentinels(): { host: string; port: number }[] {
    return this.sentinelPorts.map((port) => ({ host: '127.0.0.1', port }));
  }

  /** The port of the master every sentinel names (undefined while they disagree). */
  async masterPort(): Promise<number | undefined> {
    const answers = await Promise.all(
      this.sentinelPorts.map((port) => redisCli(port, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', this.name).catch(() => '')),
    );
    const ports = new Set(answers.map((answer) => Number(answer.split('\n')[1])));
    return ports.size === 1 ? [...ports][0] : undefined;
  }

  /** `role:master` or `role:slave` as the server itself reports it. */
  async role(port: number): Promise<string> {
    return /role:(\w+)/.exec(await redisCli(port, 'INFO', 'replication'))?.[1] ?? '?';
  }

  /** Asks the sentinels for a failover now (SENTINEL FAILOVER), and waits until they all name the new master. */
  async failover(): Promise<number> {
    const before = await this.masterPort();
    await redisCli(this.sentinelPorts[0], 'SENTINEL', 'FAILOVER', this.name);
    let after: number | undefined;
    await until('the sentinels name a new master', async () => (after = await this.masterPort()) !== undefined && after !== before, 20_000);
    return after!;
  }

  /** SIGSTOP: the server keeps its connections and answers nothing. */
  pause(port: number): void {
    this.children.get(port)?.kill('SIGSTOP');
  }

  resume(port: number): void {
    this.children.get(port)?.kill('SIGCONT');
  }

  async stop(): Promise<void> {
    const children = [...this.children.values()].filter((child) => child.exitCode === null && child.signalCode === null);
    for (const child of children) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    }
    await Promise.all(children.map((child) => once(child, 'exit')));
    this.children.clear();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private server(port: number, extra: string[] = []): void {
    this.spawn(port, 'redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir,
      // A replica syncs at once, not after the default five-second wait for more replicas.
      '--repl-diskless-sync-delay', '0',
      ...extra,
    ]);
  }

  private spawn(port: number, command: string, args: string[]): void {
    this.children.set(port, spawn(command, args, { stdio: 'ignore' }));
  }
}

async function ping(port: number): Promise<boolean> {
  return (await redisCli(port, 'PING').catch(() => '')) === 'PONG';
}
