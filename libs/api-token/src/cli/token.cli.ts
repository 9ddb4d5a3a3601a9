#!/usr/bin/env node
import { type DynamicModule, type INestApplicationContext, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { ApiTokenInputError, errorCode } from '../api-token.errors';
import { ApiTokenModule } from '../api-token.module';
import { type ApiTokenStoresEnv, readStoresEnv } from '../env/stores.env';
import { storeModules } from '../env/stores.modules';
import { ApiTokenStartupLogger, describeDatabaseFailure } from '../env/stores.startup';
import { isRateLimitPolicy } from '../limits/rate-limit.policy';
import type { RateLimitPolicy } from '../store/api-token.record';
import { ApiTokenService, isUuid, type ApiTokenSummary } from '../tokens/api-token.service';
import { UTC_DATE_RULE, parseUtcDate } from '../tokens/token.input';
import { SCOPE_RULE, isScope } from '../tokens/token.scope';

/** Exit codes of the token command. */
export const EXIT = { ok: 0, failed: 1, usage: 2 } as const;

/** An error whose message is safe to print and that ends the command with a given exit code. */
class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT.failed,
  ) {
    super(message);
  }
}

/** The library and its stores, wired from the environment, without HTTP and without the usage-flush schedule. */
@Module({})
class TokenCliModule {
  static forRoot(config: ApiTokenStoresEnv): DynamicModule {
    return {
      module: TokenCliModule,
      imports: [
        ...storeModules(config, { retryAttempts: 1 }),
        // A one-shot command serves no requests: no flush schedule, no revocation log to read.
        ApiTokenModule.forRoot({ flushCron: false, revocationPollIntervalMs: 0, membershipFilterRebuildMs: 0 }),
      ],
    };
  }
}

function uuid(value: string): string {
  if (!isUuid(value)) throw new InvalidArgumentError('must be a UUID.');
  return value;
}

function scope(value: string): string {
  if (!isScope(value)) throw new InvalidArgumentError(`must be ${SCOPE_RULE}.`);
  return value;
}

/**
 * Commander's error messages quote what was typed (`argument 'app-…' is invalid`, `unknown command
 * 'app-…'`): a token pasted in the wrong place would land on screen and in logs. These keep the
 * option or argument's name and drop its value.
 */
export function withoutValues(message: string): string {
  return message
    .replace(/ argument '[^']*' is invalid\./g, ' is invalid:')
    .replace(/command-argument value '[^']*' is invalid for argument ('[^']*')\./g, 'argument $1 is invalid:')
    .replace(/unknown command '[^']*'/g, 'unknown command')
    .replace(/unknown option '([^'=]*)[^']*'/g, (_, name: string) => (/^(--[a-z][a-z-]{0,31}|-[A-Za-z])$/.test(name) ? `unknown option '${name}'` : 'unknown option'));
}

/** Runs `work` with the library's services, then closes every connection. */
async function withTokens<T>(work: (tokens: ApiTokenService) => Promise<T>): Promise<T> {
  let app: INestApplicationContext;
  const config = readStoresEnv();
  try {
    app = await NestFactory.createApplicationContext(TokenCliModule.forRoot(config), {
      // stderr only: stdout carries the command's answer.
      logger: new ApiTokenStartupLogger({ stderrOnly: true, logLevels: ['error', 'warn'] }),
      abortOnError: false,
    });
  } catch (error) {
    throw new CliError(describeDatabaseFailure(error) ?? `could not start: ${describe(error)}`);
  }
  try {
    return await work(app.get(ApiTokenService));
  } finally {
    await app.close();
  }
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = errorCode(error);
  return code && !error.message.includes(code) ? `${error.message} (${code})` : error.message;
}

const DURATION = /^(\d{1,10})([smhd])$/;
const DURATION_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** Seconds in a duration `<n>s|m|h|d`; a usage error naming the option (never its value) when it is not one. */
function durationSeconds(value: string, option: string): number {
  const match = DURATION.exec(value);
  if (!match) throw new CliError(`${option} must be a whole number followed by s, m, h or d (e.g. 90d)`, EXIT.usage);
  return Number(match[1]) * DURATION_UNITS[match[2]];
}

/** An ISO-8601 datetime; one without an offset is UTC, like every time in the table (the admin API reads it the same way). */
function isoDate(value: string, option: string): Date {
  const date = parseUtcDate(value);
  if (!date) throw new CliError(`${option} must be ${UTC_DATE_RULE}`, EXIT.usage);
  return date;
}

/** A token given as an argument, or read from stdin for `-` (keeping it out of the shell history). */
async function tokenArgument(token: string): Promise<string> {
  const value = token === '-' ? await readStdin() : token;
  if (!value) throw new CliError('no token on stdin', EXIT.usage);
  return value;
}

/** The target of a command that takes a token (an argument, or stdin for `-`) or `--id`: exactly one of them. */
async function tokenOrId(token: string | undefined, id: string | undefined): Promise<string | { id: string }> {
  if (token === undefined && id === undefined) throw new CliError('give a token (or "-" to read it from stdin) or --id', EXIT.usage);
  if (token !== undefined && id !== undefined) throw new CliError('give a token or --id, not both', EXIT.usage);
  return token === undefined ? { id: id! } : tokenArgument(token);
}

/**
 * `<limit>/<n>s|m|h|d` (`100/1m`: 100 requests a minute; the window at most a day) as a policy, or
 * undefined when absent. Checked here rather than as a commander argument parser, whose error would
 * quote the value.
 */
function rateLimit(value: string | undefined, option: string): RateLimitPolicy | undefined {
  if (value === undefined) return undefined;
  const match = /^(\d{1,10})\/(\d{1,5})([smhd])$/.exec(value);
  const policy = match && { limit: Number(match[1]), windowSeconds: Number(match[2]) * DURATION_UNITS[match[3]] };
  // The policy's bounds are the library's (isRateLimitPolicy), as for the admin API and the service.
  if (!policy || !isRateLimitPolicy(policy)) {
    throw new CliError(`${option} must be <limit>/<n>s|m|h|d, e.g. 100/1m: a limit of 1 to 2147483647 per 1 s to 1 d`, EXIT.usage);
  }
  return policy;
}

const formatRateLimit = (policy: RateLimitPolicy | null): string => (policy ? `${policy.limit}/${policy.windowSeconds}s` : '-');

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8').trim();
}

function table(rows: ApiTokenSummary[]): string {
  const head = ['ID', 'SCOPE', 'TOKEN', 'APP', 'TENANT', 'CREATED', 'LAST USED', 'EXPIRES', 'RATE LIMIT'];
  const body = rows.map((t) => [
    t.id, t.scope, t.maskedToken, t.appId ?? '-', t.tenantId ?? '-', t.createdAt ?? '-', t.lastUsedAt ?? '-', t.expiresAt ?? '-', formatRateLimit(t.rateLimit),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  return [head, ...body].map((r) => r.map((cell, i) => cell.padEnd(widths[i])).join('  ').trimEnd()).join('\n') + '\n';
}

function cacheNotCleared(what: string): never {
  throw new CliError(`${what}, but Redis did not answer: cached entries may still be served until they expire; run the command again once Redis is back`);
}

/** The `token` command (DESIGN.md §6), writing answers to `out`. */
export function buildProgram(out: (text: string) => void = (text) => process.stdout.write(text)): Command {
  const program = new Command('token')
    .description(
      'Administer API tokens in PostgreSQL and Redis (env DATABASE_URL, REDIS_URL, REDIS_SENTINELS with REDIS_SENTINEL_NAME, or REDIS_CLUSTER_NODES).\n' +
        `Exit codes: ${EXIT.ok} done, ${EXIT.failed} failed (nothing matched, store unreachable), ${EXIT.usage} bad arguments.`,
    )
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(withoutValues(text)) })
    .showHelpAfterError('(run with --help for usage)');

  program
    .command('create')
    .description('create a token and print it (and nothing else)')
    .requiredOption('--scope <scope>', 'scope of the token: app, dataset, or another (at most 16 characters)', scope)
    .option('--app-id <uuid>', 'app the token belongs to', uuid)
    .option('--tenant-id <uuid>', 'tenant the token belongs to', uuid)
    .option('--prefix <prefix>', 'text before the "-" (default: app, dataset, or the scope)')
    .option('--expires-in <duration>', 'the token stops working after this long: a number and s, m, h or d (e.g. 90d)')
    .option('--expires-at <iso>', 'the token stops working at this time (ISO-8601, UTC unless it has an offset)')
    .option('--rate-limit <limit/window>', 'at most <limit> requests per window, on every instance: 100/1m, 10/30s, 5000/1h')
    .action(async (opts: { scope: string; appId?: string; tenantId?: string; prefix?: string; expiresIn?: string; expiresAt?: string; rateLimit?: string }) => {
      if (opts.expiresIn !== undefined && opts.expiresAt !== undefined) throw new CliError('give --expires-in or --expires-at, not both', EXIT.usage);
      const expiresInSeconds = opts.expiresIn === undefined ? undefined : durationSeconds(opts.expiresIn, '--expires-in');
      const expiresAt = opts.expiresAt === undefined ? undefined : isoDate(opts.expiresAt, '--expires-at');
      const limit = rateLimit(opts.rateLimit, '--rate-limit');
      const created = await withTokens((tokens) =>
        tokens.create({ scope: opts.scope, appId: opts.appId, tenantId: opts.tenantId, prefix: opts.prefix, expiresInSeconds, expiresAt, rateLimit: limit }),
      );
      out(`${created.token}\n`);
    });

  program
    .command('list')
    .description('list tokens, newest first, masked (the secret part is never shown)')
    .option('--app-id <uuid>', 'only tokens of this app', uuid)
    .option('--tenant-id <uuid>', 'only tokens of this tenant', uuid)
    .option('--scope <scope>', 'only tokens of this scope', scope)
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: { appId?: string; tenantId?: string; scope?: string; json?: boolean }) => {
      const rows = await withTokens((tokens) => tokens.list({ appId: opts.appId, tenantId: opts.tenantId, scope: opts.scope }));
      out(opts.json ? `${JSON.stringify(rows, null, 2)}\n` : rows.length ? table(rows) : 'No tokens.\n');
    });

  program
    .command('revoke')
    .description('revoke a token, by the token ("-" reads it from stdin, keeping it out of the shell history) or by --id; every instance refuses it at once')
    .argument('[token]', 'the token, or "-" to read it from stdin')
    .option('--id <uuid>', 'revoke the token with this id instead', uuid)
    .action(async (token: string | undefined, opts: { id?: string }) => {
      const value = await tokenOrId(token, opts.id);
      const result = await withTokens((tokens) => (typeof value === 'string' ? tokens.revoke(value) : tokens.revokeById(value.id)));
      if (result.revoked.length === 0) {
        if (typeof value === 'string' && result.cacheCleared) throw new CliError('no token matched; nothing revoked (its cache entries, if any, were dropped)');
        throw new CliError('no token matched; nothing revoked');
      }
      const ids = result.revoked.map((t) => `${t.id} (${t.scope})`).join(', ');
      if (!result.cacheCleared) cacheNotCleared(`revoked ${ids} in the database${typeof value === 'string' ? '' : ' (to run again, give the token, not --id)'}`);
      out(`Revoked ${ids}\n`);
    });

  program
    .command('rate-limit')
    .description('set (--set) or remove (--clear) the rate limit of a token, by the token ("-" reads it from stdin) or by --id; every instance applies it at once')
    .argument('[token]', 'the token, or "-" to read it from stdin')
    .option('--id <uuid>', 'the token with this id instead', uuid)
    .option('--set <limit/window>', 'at most <limit> requests per window: 100/1m, 10/30s, 5000/1h')
    .option('--clear', 'remove the limit (the module\'s default limit, if any, then applies)')
    .action(async (token: string | undefined, opts: { id?: string; set?: string; clear?: boolean }) => {
      const value = await tokenOrId(token, opts.id);
      if ((opts.set === undefined) === (opts.clear === undefined)) throw new CliError('give either --set <limit/window> or --clear', EXIT.usage);
      const policy = rateLimit(opts.set, '--set') ?? null;
      const result = await withTokens((tokens) => tokens.setRateLimit(value, policy));
      if (!result.updated) throw new CliError('no token matched; nothing changed');
      const what = `${result.updated.id} (${result.updated.scope}): rate limit ${policy ? formatRateLimit(policy) : 'removed'}`;
      if (!result.cacheCleared) cacheNotCleared(`set ${what} in the database`);
      out(`Set ${what}\n`);
    });

  program
    .command('rotate')
    .description('replace a token: print a new one with the same scope, app, tenant and policy (and nothing else); the old one stops working after --grace')
    .argument('<token>', 'the token, or "-" to read it from stdin')
    .option('--grace <duration>', 'how long the old token keeps working: a number and s, m, h or d; 0s (default) revokes it at once')
    .action(async (token: string, opts: { grace?: string }) => {
      const graceSeconds = opts.grace === undefined ? 0 : durationSeconds(opts.grace, '--grace');
      const value = await tokenArgument(token);
      const result = await withTokens((tokens) => tokens.rotate(value, { graceSeconds }));
      if (!result) throw new CliError('no valid token matched; nothing rotated');
      if (!result.cacheCleared) {
        process.stderr.write(
          'warning: Redis did not answer: the old token may keep working on instances with it cached until its entries expire; revoke it once Redis is back\n',
        );
      }
      out(`${result.successor.token}\n`);
    });

  program
    .command('invalidate-tenant')
    .description("drop every cached entry of a tenant on every instance (its tokens stay valid)")
    .argument('<tenant-id>', 'the tenant (UUID)', uuid)
    .action(async (tenantId: string) => {
      const result = await withTokens((tokens) => tokens.invalidateTenant(tenantId));
      if (!result.cacheCleared) cacheNotCleared('tenant invalidation attempted');
      out(`Dropped ${result.dropped} cached ${result.dropped === 1 ? 'entry' : 'entries'} of tenant ${tenantId}\n`);
    });

  return program;
}

/** Runs the command line and resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT.ok;
  } catch (error) {
    if (error instanceof CommanderError) {
      return error.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    if (error instanceof CliError) {
      process.stderr.write(`error: ${error.message}\n`);
      return error.exitCode;
    }
    if (error instanceof ApiTokenInputError) {
      process.stderr.write(`error: ${error.message}\n`);
      return EXIT.usage;
    }
    process.stderr.write(`error: ${describe(error)}\n`);
    return EXIT.failed;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
    // A failed start leaves connections Nest never got to close; they must not keep the command alive.
    setTimeout(() => process.exit(code), 1000).unref();
  });
}
