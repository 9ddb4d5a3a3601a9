import type { INestApplication } from '@nestjs/common';

let stopping = false;

/**
 * Closes the application of a bench or soak server process once, then exits: `app.close()` runs the
 * module's shutdown (pending uses written to Redis), whether the parent asked or went away.
 */
export async function stopServer(app: INestApplication): Promise<void> {
  if (stopping) return;
  stopping = true;
  await app.close().catch(() => undefined);
  process.exit(0);
}

/** An environment variable the parent must set; `who` names the process in the error. */
export function requiredEnv(name: string, who: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${who}: env ${name} is required`);
  return value;
}

/** The header a load names its client with, for the bench server's `limited` variant (read there, sent by the flood). */
export const BENCH_CLIENT_HEADER = 'x-bench-client';
