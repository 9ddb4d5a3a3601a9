import { ApiTokenModule, ApiTokenService, isUuid, type ApiTokenSummary } from 'nestjs-api-token';
import { ConsoleLogger, type DynamicModule, type INestApplicationContext, type LogLevel, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { type DemoConfig, loadDemoConfig } from './demo.config';
import { storeModules } from './demo.stores';

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

/** The library and its stores, as the demo wires them, without HTTP and without the usage-flush schedule. */
@Module({})
class TokenCliModule {
  static forRoot(config: DemoConfig): DynamicModule {
    return {
      module: TokenCliModule,
      imports: [
        ...storeModules(config, { retryAttempts: 0 }),
        // A one-shot command reads no revocation log: it serves no requests.
        ApiTokenModule.forRoot({ ...config.apiToken, flushCron: false, revocationPollIntervalMs: 0 }),
      ],
    };
  }
}

/** Nest's console logger, on stderr only (stdout carries the command's answer). */
class StderrLogger extends ConsoleLogger {
  protected override printMessages(messages: unknown[], context?: string, logLevel?: LogLevel): void {
    super.printMessages(messages, context, logLevel, 'stderr');
  }
}

function uuid(value: string): string {
  if (!isUuid(value)) throw new InvalidArgumentError('must be a UUID.');
  return value;
}

/** Runs `work` with the library's services, then closes every connection. */
async function withTokens<T>(work: (tokens: ApiTokenService) => Promise<T>): Promise<T> {
  let app: INestApplicationContext;
  try {
    app = await NestFactory.createApplicationContext(TokenCliModule.forRoot(loadDemoConfig()), {
      logger: new StderrLogger({ logLevels: ['error', 'warn'] }),
      abortOnError: false,
    });
  } catch (error) {
    throw new CliError(`could not start: ${describe(error)}`);
  }
  try {
    return await work(app.get(ApiTokenService));
  } finally {
    await app.close();
  }
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' && !error.message.includes(code) ? `${error.message} (${code})` : error.message;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8').trim();
}

function table(rows: ApiTokenSummary[]): string {
  const head = ['ID', 'SCOPE', 'TOKEN', 'APP', 'TENANT', 'CREATED', 'LAST USED'];
  const body = rows.map((t) => [t.id, t.type, t.maskedToken, t.appId ?? '-', t.tenantId ?? '-', t.createdAt ?? '-', t.lastUsedAt ?? '-']);
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
      'Administer API tokens in the database and Redis the demo uses (env DATABASE_URL, REDIS_URL, REDIS_SENTINELS with REDIS_SENTINEL_NAME, or REDIS_CLUSTER_NODES).\n' +
        `Exit codes: ${EXIT.ok} done, ${EXIT.failed} failed (nothing matched, store unreachable), ${EXIT.usage} bad arguments.`,
    )
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)');

  program
    .command('create')
    .description('create a token and print it (and nothing else)')
    .requiredOption('--scope <scope>', 'scope of the token: app, dataset, or another (at most 16 characters)')
    .option('--app-id <uuid>', 'app the token belongs to', uuid)
    .option('--tenant-id <uuid>', 'tenant the token belongs to', uuid)
    .option('--prefix <prefix>', 'text before the "-" (default: app, dataset, or the scope)')
    .action(async (opts: { scope: string; appId?: string; tenantId?: string; prefix?: string }) => {
      const created = await withTokens((tokens) => tokens.create({ scope: opts.scope, appId: opts.appId, tenantId: opts.tenantId, prefix: opts.prefix }));
      out(`${created.token}\n`);
    });

  program
    .command('list')
    .description('list tokens, newest first, masked (the secret part is never shown)')
    .option('--app-id <uuid>', 'only tokens of this app', uuid)
    .option('--tenant-id <uuid>', 'only tokens of this tenant', uuid)
    .option('--scope <scope>', 'only tokens of this scope')
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
      if (token === undefined && opts.id === undefined) throw new CliError('give a token (or "-" to read it from stdin) or --id', EXIT.usage);
      if (token !== undefined && opts.id !== undefined) throw new CliError('give a token or --id, not both', EXIT.usage);
      const value = token === '-' ? await readStdin() : token;
      if (value !== undefined && !value) throw new CliError('no token on stdin', EXIT.usage);
      const result = await withTokens((tokens) => (value !== undefined ? tokens.revoke(value) : tokens.revokeById(opts.id!)));
      if (result.revoked.length === 0) {
        if (value !== undefined && result.cacheCleared) throw new CliError('no token matched; nothing revoked (its cache entries, if any, were dropped)');
        throw new CliError('no token matched; nothing revoked');
      }
      const ids = result.revoked.map((t) => `${t.id} (${t.type})`).join(', ');
      if (!result.cacheCleared) cacheNotCleared(`revoked ${ids} in the database${value === undefined ? ' (to run again, give the token, not --id)' : ''}`);
      out(`Revoked ${ids}\n`);
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
    if (error instanceof TypeError) {
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
