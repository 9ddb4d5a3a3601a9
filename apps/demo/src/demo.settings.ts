/** What the demo reads from the environment besides its stores (those: `apiTokenStoresFromEnv`, as the token command line). */
export interface DemoConfig {
  port: number;
  /** Cron expression with a seconds field for the usage flush; the library's default when absent. */
  flushCron?: string;
}

/** Reads `PORT` and `API_TOKEN_FLUSH_CRON`; refuses a bad `PORT`. */
export function loadDemoConfig(env: NodeJS.ProcessEnv = process.env): DemoConfig {
  const port = Number(env.PORT ?? 3000);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`PORT must be a port number, got "${env.PORT}"`);
  }
  return { port, flushCron: env.API_TOKEN_FLUSH_CRON || undefined };
}
