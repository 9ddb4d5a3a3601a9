/** The base of every error the library throws on purpose; anything else is a bug or a driver's error. */
export class ApiTokenError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * Bad input: a module option, a guard scope, or an argument of {@link ApiTokenService} methods.
 * Thrown before any I/O. The message names the option or argument, never its value.
 */
export class ApiTokenInputError extends ApiTokenError {}

/**
 * The token store (PostgreSQL) could not answer. The guard turns it into 503 with `Retry-After`.
 * The message names the operation and the driver's error code, never the SQL parameters.
 */
export class ApiTokenStoreError extends ApiTokenError {
  /** PostgreSQL SQLSTATE or Node error code, when there is one. */
  readonly code?: string;

  constructor(operation: string, cause: unknown) {
    const code = errorCode(cause);
    super(`api_tokens ${operation} failed${code ? ` (${code})` : ''}`);
    this.code = code;
  }
}

/** The `code` of an error (PostgreSQL SQLSTATE, Node or Redis error code) when it has a string one. */
export function errorCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** An error's class and code, never its message (a message may quote a key, and keys hold tokens). */
export function describeError(error: unknown): string {
  if (!(error instanceof Error)) return typeof error;
  const code = errorCode(error);
  return code ? `${error.name} ${code}` : error.name;
}
