import { Client } from 'pg';

/**
 * Counts the statements that reach PostgreSQL, at the driver: pass `counter.typeorm` into the
 * TypeORM options and every pooled connection is a counting client.
 */
export class QueryCounter {
  private readonly seen: string[] = [];

  readonly typeorm = { extra: { Client: this.clientClass() } };

  /** Statements whose text matches `pattern` (default: reads of `api_tokens` by token). */
  count(pattern: RegExp = /FROM api_tokens\b[^;]*WHERE (t\.)?token = \$1/): number {
    return this.seen.filter((sql) => pattern.test(sql)).length;
  }

  reset(): void {
    this.seen.length = 0;
  }

  private clientClass(): typeof Client {
    const seen = this.seen;
    class CountingClient extends Client {
      override query(...args: unknown[]): never {
        const first = args[0] as string | { text?: string };
        seen.push(typeof first === 'string' ? first : (first?.text ?? ''));
        return (Client.prototype.query as (...a: unknown[]) => never).apply(this, args);
      }
    }
    return CountingClient;
  }
}
