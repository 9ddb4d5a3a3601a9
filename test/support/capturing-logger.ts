import type { LoggerService } from '@nestjs/common';
import { inspect } from 'node:util';

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
