import type { ApiTokenErrorFormat } from 'nestjs-api-token';

/** What the demo reads from the environment besides its stores (those: `apiTokenStoresFromEnv`, as the token command line). */
export interface DemoConfig {
  port: number;
  /** Cron expression with a seconds field for the usage flush; the library's default when absent. */
  flushCron?: string;
  /** Shape of the guard's refusals (`API_TOKEN_ERROR_FORMAT`); the library's default when absent. */
  errorFormat?: ApiTokenErrorFormat;
}

/** Reads `PORT`, `API_TOKEN_FLUSH_CRON` and `API_TOKEN_ERROR_FORMAT`; refuses a bad `PORT` or format, never quoting the value. */
export function loadDemoConfig(env: NodeJS.ProcessEnv = process.env): DemoConfig {
  const port = Number(env.PORT ?? 3000);
  if (!/^\d+$/.test(env.PORT ?? '3000') || port > 65535) throw new Error('PORT must be a port number (0 to 65535)');
  return {
    port,
    flushCron: env.API_TOKEN_FLUSH_CRON || undefined,
    errorFormat: env.API_TOKEN_ERROR_FORMAT ? parseErrorFormat(env.API_TOKEN_ERROR_FORMAT) : undefined,
  };
}

function parseErrorFormat(value: string): ApiTokenErrorFormat {
  if (value !== 'nest' && value !== 'dify') throw new Error('API_TOKEN_ERROR_FORMAT must be "nest" or "dify"');
  return value;
}
