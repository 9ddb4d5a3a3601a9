import { BadRequestException, HttpException, Inject, Injectable, Logger } from '@nestjs/common';
import { ApiTokenInputError, describeError } from '../api-token.errors';
import type { AuthenticatedApiToken } from '../store/api-token.record';
import { refuseField } from './admin.input';
import { API_TOKEN_ADMIN_OPTIONS, type ResolvedAdminOptions } from './admin.options';

/** What an action fills in as it goes, for its audit line. */
export interface AuditEntry {
  /** The id of the token acted on, once known. */
  token?: string;
  /** The tenant acted on. */
  tenant?: string;
  /** More, as `key=value` pairs; never a token. */
  detail?: string;
}

/** An identity safe to print: what the application's `actor` answers is its own, but stays on one short line. */
const printable = (text: string): string => text.replace(/[^\x20-\x7e]/g, '?').slice(0, 200);

/**
 * One log line per admin action (context `ApiTokenAdmin`): who (the admin identity), what, which token
 * or tenant, and the outcome, whether it succeeded, was refused or failed. Never a token: a new token's
 * id is logged, not the token, and refused input is named, not quoted.
 */
@Injectable()
export class ApiTokenAdminAudit {
  private readonly logger = new Logger('ApiTokenAdmin');

  constructor(@Inject(API_TOKEN_ADMIN_OPTIONS) private readonly options: ResolvedAdminOptions) {}

  /** Runs an action, writes its audit line, and answers what it answered; a service input error becomes a 400. */
  async record<T>(request: object, action: string, work: (entry: AuditEntry) => Promise<T>): Promise<T> {
    const entry: AuditEntry = {};
    const line = () =>
      `admin=${this.actorOf(request)} action=${action}` +
      (entry.token ? ` token=${entry.token}` : '') +
      (entry.tenant ? ` tenant=${entry.tenant}` : '') +
      (entry.detail ? ` ${entry.detail}` : '');
    try {
      const result = await work(entry);
      this.logger.log(`${line()} outcome=ok`);
      return result;
    } catch (error) {
      const refusal = error instanceof ApiTokenInputError ? asBadRequest(error) : error;
      if (refusal instanceof HttpException) {
        const field = (refusal.getResponse() as { field?: unknown }).field;
        this.logger.warn(`${line()} outcome=refused status=${refusal.getStatus()}${typeof field === 'string' ? ` field=${field}` : ''}`);
      } else {
        this.logger.error(`${line()} outcome=failed error=${describeError(error)}`);
      }
      throw refusal;
    }
  }

  private actorOf(request: object): string {
    const custom = this.options.actor?.(request);
    if (typeof custom === 'string' && custom) return printable(custom);
    const token = (request as { apiToken?: AuthenticatedApiToken }).apiToken;
    return token ? `token:${token.id}(scope=${token.scope})` : 'unknown';
  }
}

/**
 * The service checks again what admin.input.ts checked (and a few rules only it knows: a prefix that
 * looks like a pasted token, tokens of a prefix the tokenPattern refuses); its messages name the
 * argument in quotes and never quote a value, so the first quoted name is the field.
 */
function asBadRequest(error: ApiTokenInputError): BadRequestException {
  const field = /"([A-Za-z]{1,32})"/.exec(error.message)?.[1] ?? 'body';
  const refusal = refuseField(field, 'valid');
  const body = refusal.getResponse() as { message: string };
  body.message = error.message.replace(/^ApiTokenService(\.\w+)?: /, '');
  return refusal;
}
