import type { LoggerService } from '@nestjs/common';
import { inspect } from 'node:util';
import type { Logger as TypeOrmLogger } from 'typeorm';

/** One line the app logged: level, and everything it was given, as text. */
export interface CapturedLine {
  level: string;
  text: string;
}

/** A Nest LoggerService that keeps every line at every level, for tests to read. */
export class CapturingLogger implements LoggerService {
  readonly lines: CapturedLine[] = [];

  log(...args: unknown[]): void {
    this.keep('log', args);
  }
  error(...args: unknown[]): void {
    this.keep('error', args);
  }
  warn(...args: unknown[]): void {
    this.keep('warn', args);
  }
  debug(...args: unknown[]): void {
    this.keep('debug', args);
  }
  verbose(...args: unknown[]): void {
    this.keep('verbose', args);
  }
  fatal(...args: unknown[]): void {
    this.keep('fatal', args);
  }

  /** Lines whose text matches. */
  matching(pattern: RegExp): CapturedLine[] {
    return this.lines.filter((line) => pattern.test(line.text));
  }

  private keep(level: string, args: unknown[]): void {
    this.lines.push({ level, text: args.map((a) => (a instanceof Error ? `${a.stack ?? a.message}` : typeof a === 'string' ? a : inspect(a, { depth: 10 }))).join(' ') });
  }
}

/**
 * A TypeORM `Logger` (the DataSource's `logger` option) that keeps everything TypeORM hands it:
 * queries with their parameters, failed and slow queries with the driver's error, schema and
 * migration lines. Use it with `logging: 'all'`.
 */
export class CapturingTypeOrmLogger implements TypeOrmLogger {
  readonly lines: string[] = [];

  logQuery(query: string, parameters?: unknown[]): void {
    this.keep('query', query, parameters);
  }
  logQueryError(error: string | Error, query: string, parameters?: unknown[]): void {
    this.keep('query-error', error, query, parameters);
  }
  logQuerySlow(time: number, query: string, parameters?: unknown[]): void {
    this.keep('query-slow', time, query, parameters);
  }
  logSchemaBuild(message: string): void {
    this.keep('schema-build', message);
  }
  logMigration(message: string): void {
    this.keep('migration', message);
  }
  log(level: 'log' | 'info' | 'warn', message: unknown): void {
    this.keep(level, message);
  }

  private keep(kind: string, ...args: unknown[]): void {
    this.lines.push(`${kind} ${args.map((a) => (typeof a === 'string' ? a : inspect(a, { depth: 10, showHidden: true }))).join(' ')}`);
  }
}
