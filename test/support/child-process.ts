import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { join } from 'node:path';

/** The repository root, where `npm start` and `npm run token` run. */
export const ROOT = join(__dirname, '..', '..');

/** A child process whose output is collected as it comes. */
export interface Child {
  process: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Milliseconds since the spawn when stdout first held `text`, or undefined. */
  printedAt: (text: string) => number | undefined;
  /** Resolves with the exit code and the milliseconds since the spawn. */
  exited: Promise<{ code: number | null; ms: number }>;
}

/** Starts `command args` at the repository root with `env` added to the test's environment. */
export function start(command: string, args: string[], env: Record<string, string>): Child {
  const started = performance.now();
  const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  /** When stdout reached each length: boot time (ts-node compiling) can then be told from the rest. */
  const arrivals: { ms: number; length: number }[] = [];
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
    arrivals.push({ ms: performance.now() - started, length: stdout.length });
  });
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = once(child, 'close').then(([code]) => ({ code: code as number | null, ms: performance.now() - started }));
  const printedAt = (text: string) => {
    const end = stdout.indexOf(text);
    return end < 0 ? undefined : arrivals.find(({ length }) => length >= end + text.length)?.ms;
  };
  return { process: child, stdout: () => stdout, stderr: () => stderr, printedAt, exited };
}

/** A loopback port nothing listens on (it was free a moment ago): connecting to it is refused. */
export async function closedPort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}
