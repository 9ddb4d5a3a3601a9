import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

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
