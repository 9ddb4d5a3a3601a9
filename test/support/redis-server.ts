import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { sparePort } from './ports';

/** Sends one inline command and resolves with the first reply line, or rejects. */
function ask(port: number, command: string, timeoutMs = 500): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error('timeout')));
    let reply = '';
    socket.on('connect', () => socket.write(`${command}\r\n`));
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1');
      if (reply.includes('\r\n')) {
        socket.destroy();
        resolve(reply.slice(0, reply.indexOf('\r\n')));
      }
    });
    socket.on('error', reject);
  });
}

/**
 * A `redis-server` of the test's own on a spare loopback port: the test may kill it (SIGKILL), freeze
 * it (SIGSTOP) and start it again on the same port. Without persistence by default; with
 * `appendOnly`, it keeps an append-only file fsynced every second, as a production Redis does, so a
 * kill loses about the last second of writes (the soak's faults).
 */
export class PrivateRedisServer {
  private child: ChildProcess | undefined;
  /** The append-only file's folder, when the server persists. */
  private readonly dir: string | undefined;

  private constructor(
    readonly port: number,
    appendOnly: boolean,
  ) {
    this.dir = appendOnly ? mkdtempSync(join(tmpdir(), 'api-token-redis-')) : undefined;
  }

  static async start(options: { port?: number; appendOnly?: boolean } = {}): Promise<PrivateRedisServer> {
    const server = new PrivateRedisServer(options.port || (await sparePort()), options.appendOnly ?? false);
    await server.start();
    return server;
  }

  url(db = 0): string {
    return `redis://127.0.0.1:${this.port}/${db}`;
  }

  /** Starts the server (again) and resolves once it answers PING. */
  async start(deadlineMs = 10_000): Promise<void> {
    if (this.child) throw new Error('redis-server already running');
    const child = spawn(
      'redis-server',
      [
        ...['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--daemonize', 'no'],
        ...(this.dir ? ['--appendonly', 'yes', '--appendfsync', 'everysec', '--dir', this.dir] : ['--appendonly', 'no']),
      ],
      { stdio: 'ignore' },
    );
    this.child = child;
    child.once('exit', () => {
      if (this.child === child) this.child = undefined;
    });
    const deadline = Date.now() + deadlineMs;
    for (;;) {
      if (!this.child) throw new Error(`redis-server on port ${this.port} exited at start`);
      if (await ask(this.port, 'PING').then((r) => r === '+PONG', () => false)) return;
      if (Date.now() > deadline) throw new Error(`redis-server on port ${this.port} not answering within ${deadlineMs} ms`);
      await sleep(20);
    }
  }

  /** SIGKILL, resolved once the process has exited. */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child) return;
    if (child.signalCode === 'SIGSTOP') child.kill('SIGCONT');
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
    this.child = undefined;
  }

  /** Freezes the server: connections stay open, nothing is answered. */
  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  /** Kills the server for good and removes its append-only file. */
  async stop(): Promise<void> {
    await this.kill();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }

  /** The count of each command the server has run (`INFO commandstats`). */
  async commandCounts(): Promise<Map<string, number>> {
    const info = await new Promise<string>((resolve, reject) => {
      const socket = connect(this.port, '127.0.0.1');
      let text = '';
      socket.on('connect', () => socket.end('INFO commandstats\r\n'));
      socket.on('data', (chunk) => (text += chunk.toString('latin1')));
      socket.on('end', () => resolve(text));
      socket.on('error', reject);
    });
    const counts = new Map<string, number>();
    for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) counts.set(match[1], Number(match[2]));
    return counts;
  }
}
