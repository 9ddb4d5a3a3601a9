/**
 * The token store (PostgreSQL) could not answer. The guard turns it into 503 with `Retry-After`.
 * The message names the operation and the driver's error code, never the SQL parameters.
 */
export class ApiTokenStoreError extends Error {
  /** PostgreSQL SQLSTATE or Node error code, when there is one. */
  readonly code?: string;

  constructor(operation: string, cause: unknown) {
    const code = (cause as { code?: unknown } | null)?.code;
    super(`api_tokens ${operation} failed${typeof code === 'string' ? ` (${code})` : ''}`);
    this.name = 'ApiTokenStoreError';
    this.code = typeof code === 'string' ? code : undefined;
  }
}
