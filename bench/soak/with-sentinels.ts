import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { RedisSentinelSet } from '../../test/support/redis-sentinel';

/**
 * `npx ts-node -r tsconfig-paths/register --transpile-only bench/soak/with-sentinels.ts --seconds N --seed S`:
 * starts a master, a replica and three sentinels of its own (test/support/redis-sentinel.ts) and runs
 * the soak against them with REDIS_SENTINELS set, so that its Redis faults are failovers.
 */
async function main(): Promise<void> {
  const set = await RedisSentinelSet.start();
  try {
    const child = spawn('npm', ['run', 'soak', '--', ...process.argv.slice(2)], {
      cwd: join(__dirname, '..', '..'),
      env: { ...process.env, REDIS_SENTINELS: set.sentinels.map((s) => `${s.host}:${s.port}`).join(','), REDIS_SENTINEL_NAME: set.name },
      stdio: 'inherit',
    });
    const [code] = await once(child, 'exit');
    process.exitCode = code as number;
  } finally {
    await set.stop();
  }
}

void main();
