import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { isFree } from './ports';

const run = promisify(execFile);

/** A three-master Redis Cluster of the suite's own, on loopback ports, without persistence. */
export interface PrivateRedisCluster {
  /** `host:port` of every master. */
  nodes: string[];
  stop(): Promise<void>;
}

async function cli(port: number, ...args: string[]): Promise<string> {
  return (await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 30_000 })).stdout;
}

async function poll(what: string, check: () => Promise<boolean>, deadlineMs = 20_000): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${deadlineMs} ms`);
    await sleep(50);
  }
}

/** Starts `redis-server --cluster-enabled yes` on each port, joins them with `redis-cli --cluster create`, waits for `cluster_state:ok`. */
export async function startRedisCluster(ports: number[]): Promise<PrivateRedisCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'api-token-cluster-'));
  const children: ChildProcess[] = ports.map((port) =>
    spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${port}.conf`),
        '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no'],
      { stdio: 'ignore' },
    ),
  );
  const stop = async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await Promise.all(children.map((child) => (child.exitCode === null && child.signalCode === null ? new Promise((r) => child.once('exit', r)) : undefined)));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const port of ports) await poll(`redis-server on ${port}`, async () => (await cli(port, 'PING')).trim() === 'PONG');
    const nodes = ports.map((port) => `127.0.0.1:${port}`);
    await cli(ports[0], '--cluster', 'create', ...nodes, '--cluster-replicas', '0', '--cluster-yes');
    for (const port of ports) await poll(`cluster state on ${port}`, async () => (await cli(port, 'CLUSTER', 'INFO')).includes('cluster_state:ok'));
    return { nodes, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Three ports from `from` up (below `from` + 500) whose cluster bus ports (+10000) are free too. */
export async function clusterPorts(from = 7101): Promise<number[]> {
  const ports: number[] = [];
  for (let port = from; ports.length < 3 && port < from + 500; port++) {
    if ((await isFree(port)) && (await isFree(port + 10_000))) ports.push(port);
  }
  if (ports.length < 3) throw new Error(`no three free ports (and bus ports) between ${from} and ${from + 500} for a Redis Cluster`);
  return ports;
}
