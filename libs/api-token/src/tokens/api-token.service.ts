import { Inject, Injectable, Logger, OnApplicationShutdown, Optional } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { ApiTokenCacheService } from '../cache/token-cache.service';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { TOKEN_RANDOM_LENGTH, generateApiToken } from './token.generator';
import { storedToken } from './token.hash';
import { ANY_SCOPE, cacheKey } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import type { ApiTokenRecord } from '../store/api-token.record';
import { ApiTokenRedisService } from '../redis/redis-access.service';
import { ApiTokenRepository, type RevocationTarget } from '../store/api-token.repository';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { ApiTokenRevokedTokens } from '../cache/revoked-tokens';
import { revocationWindowMs } from './revocation-log.service';

/** What {@link ApiTokenService.create} needs. */
export interface CreateApiTokenInput {
  /** The scope (`type` column): `app`, `dataset`, or another scope of at most 16 characters. */
  scope: string;
  /** UUID of the app the token belongs to. */
  appId?: string | null;
  /** UUID of the tenant the token belongs to (its cache entries join the tenant index). */
  tenantId?: string | null;
  /** What comes before the `-`: `app` for scope app, `dataset` for dataset, else the scope itself. */
  prefix?: string;
}

/** Filters of {@link ApiTokenService.list}; all optional. */
export interface ListApiTokensInput {
  appId?: string;
  tenantId?: string;
  scope?: string;
}

/** A token as the service shows it: everything but the secret. */
export interface ApiTokenSummary {
  id: string;
  appId: string | null;
  tenantId: string | null;
  type: string;
  /** The token's prefix, when it has the generated shape, followed by asterisks; never a character of the secret. */
  maskedToken: string;
  /** Naive UTC ISO-8601. */
  lastUsedAt: string | null;
  /** Naive UTC ISO-8601. */
  createdAt: string | null;
}

/** A new token: its summary and, this once, the token itself. */
export interface CreatedApiToken extends ApiTokenSummary {
  token: string;
}

/** The outcome of a revocation. */
export interface ApiTokenRevocation {
  /** The rows deleted; empty when no row matched. */
  revoked: ApiTokenSummary[];
  /**
   * False when Redis did not answer during the invalidation. This process then tries again every
   * second until Redis answers; a process that ends before that (the CLI) should revoke again once
   * Redis is back, or cached entries may outlive the row up to `cacheTtlSeconds`.
   */
  cacheCleared: boolean;
}

/** The outcome of a tenant invalidation. */
export interface TenantInvalidation {
  /** Cache entries dropped. */
  dropped: number;
  /** False when Redis did not answer: the tenant's entries may still be cached. */
  cacheCleared: boolean;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether a value is a UUID, as the app, tenant and token ids must be. */
export const isUuid = (value: unknown): value is string => typeof value === 'string' && UUID.test(value);
/** The `type` column is varchar(16); `:` separates the parts of a cache key; `any` and `None` name "no scope" in keys. */
const SCOPE = /^[A-Za-z0-9_.-]{1,16}$/;
const RESERVED_SCOPES = new Set([ANY_SCOPE, 'None']);
const PREFIX = /^[A-Za-z][A-Za-z0-9_.-]{0,31}$/;
const DEFAULT_PREFIXES: Record<string, string> = { app: 'app', dataset: 'dataset' };
/** A token of the generated shape: a prefix, `-`, then the random part. Only the prefix is ever shown. */
const GENERATED_SHAPE = new RegExp(`^([A-Za-z][A-Za-z0-9_.-]{0,31})-[A-Za-z0-9]{${TOKEN_RANDOM_LENGTH}}$`);
const MASK = '*'.repeat(TOKEN_RANDOM_LENGTH);
const MAX_TOKEN_LENGTH = 255;
const CREATE_ATTEMPTS = 5;
const RETRY_INTERVAL_MS = 1000;
/** Revocations whose cache invalidation waits for Redis; past this, the oldest are given up (and logged). */
const MAX_PENDING_INVALIDATIONS = 10_000;

/**
 * Token lifecycle: create, list, revoke, and tenant-wide cache invalidation.
 *
 * A revocation deletes the rows first (committed), then changes the token's generation (so a cache
 * fill that overlapped it takes back what it wrote), then drops the token's entries in every scope
 * from Redis, and every instance drops them from its in-process cache through Redis pub/sub
 * ({@link ApiTokenInvalidationService}). A creation does the same after its insert, so a cached
 * "no such token" never hides a new token.
 */
@Injectable()
export class ApiTokenService implements OnApplicationShutdown {
  private readonly logger = new Logger('ApiTokenService');
  /** Stored tokens whose revocation could not reach Redis, with the scopes of their deleted rows. */
  private readonly pendingInvalidations = new Map<string, (string | null)[]>();
  private retryTimer: NodeJS.Timeout | undefined;
  private retrying = false;

  constructor(
    private readonly repository: ApiTokenRepository,
    private readonly cache: ApiTokenCacheService,
    private readonly redis: ApiTokenRedisService,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() private readonly metrics?: ApiTokenMetrics,
    @Optional() private readonly revokedTokens?: ApiTokenRevokedTokens,
  ) {}

  /**
   * Creates a token in Dify's format (`app-` + 24 random characters for scope app) and returns it:
   * the only time the token itself is handed out. Throws TypeError on bad input, before any I/O.
   */
  async create(input: CreateApiTokenInput): Promise<CreatedApiToken> {
    const scope = checkScope(input?.scope, 'scope');
    const appId = checkUuid(input.appId, 'appId');
    const tenantId = checkUuid(input.tenantId, 'tenantId');
    const prefix = input.prefix ?? DEFAULT_PREFIXES[scope] ?? scope;
    if (typeof prefix !== 'string' || !PREFIX.test(prefix)) {
      throw new TypeError('ApiTokenService.create: "prefix" must be a letter then up to 31 letters, digits, "_", "." or "-"');
    }
    if (!this.options.tokenPattern.test(`${prefix}-${'A'.repeat(TOKEN_RANDOM_LENGTH)}`)) {
      throw new TypeError(`ApiTokenService.create: tokens with prefix "${prefix}" do not match the "tokenPattern" option`);
    }
    for (let attempt = 0; attempt < CREATE_ATTEMPTS; attempt++) {
      const token = generateApiToken(prefix);
      const stored = storedToken(token, this.options);
      if (await this.repository.exists(stored)) continue;
      const record = await this.repository.insert({ token: stored, type: scope, appId, tenantId });
      await this.cache.bumpGeneration(stored, randomUUID());
      await this.cache.deleteKeys([cacheKey(scope, stored), cacheKey(null, stored)]);
      if (this.redis.isDown) this.metrics?.invalidationFailed('create');
      return { ...this.summarize(record), token };
    }
    throw new Error(`ApiTokenService.create: no unused token after ${CREATE_ATTEMPTS} attempts`);
  }

  /** Tokens matching every given filter, newest first, masked. */
  async list(filter: ListApiTokensInput = {}): Promise<ApiTokenSummary[]> {
    const appId = checkUuid(filter.appId, 'appId') ?? undefined;
    const tenantId = checkUuid(filter.tenantId, 'tenantId') ?? undefined;
    const type = filter.scope === undefined ? undefined : checkScope(filter.scope, 'scope');
    const records = await this.repository.list({ appId, tenantId, type });
    return records.map((record) => this.summarize(record));
  }

  /** Revokes a token in every scope it has. Its cache entries are dropped even when no row held it. */
  async revoke(token: string): Promise<ApiTokenRevocation> {
    if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN_LENGTH) {
      throw new TypeError(`ApiTokenService.revoke: the token must be a string of 1 to ${MAX_TOKEN_LENGTH} characters`);
    }
    return this.revokeStored({ token: storedToken(token, this.options) });
  }

  /** Revokes the token with this id (UUID). */
  async revokeById(id: string): Promise<ApiTokenRevocation> {
    const uuid = checkUuid(id, 'id');
    if (!uuid) throw new TypeError('ApiTokenService.revokeById: "id" must be a UUID');
    return this.revokeStored({ ids: [uuid] });
  }

  /**
   * The one path of every revocation (revoke, revokeById, and any later caller: rotation's end of
   * grace, the expiry sweep): deletes the rows and logs the revocation in one statement
   * ({@link ApiTokenRepository.revoke}), refuses the tokens on this instance at once, then drops their
   * cache entries. Other instances learn of it over pub/sub (fast) and from the log (guaranteed,
   * {@link ApiTokenRevocationLogService}). A token target drops its cache entries even when no row held it.
   * @internal not for applications: call {@link revoke} or {@link revokeById}.
   */
  async revokeStored(target: RevocationTarget): Promise<ApiTokenRevocation> {
    const rows = await this.repository.revoke(target);
    this.metrics?.revocation(rows.length > 0);
    const byToken = new Map<string, ApiTokenRecord[]>('token' in target ? [[target.token, []]] : []);
    for (const row of rows) byToken.set(row.token, [...(byToken.get(row.token) ?? []), row]);
    const window = revocationWindowMs(this.options);
    for (const [stored, deleted] of byToken) if (deleted.length) this.revokedTokens?.add(stored, window);
    const outcome: ApiTokenRevocation = { revoked: [], cacheCleared: true };
    for (const [stored, deleted] of byToken) {
      const { revoked, cacheCleared } = await this.invalidate(stored, deleted);
      outcome.revoked.push(...revoked);
      outcome.cacheCleared &&= cacheCleared;
    }
    return outcome;
  }

  /** Drops every cached entry of a tenant, and its index, on every instance; the tokens stay valid. */
  async invalidateTenant(tenantId: string): Promise<TenantInvalidation> {
    const uuid = checkUuid(tenantId, 'tenantId');
    if (!uuid) throw new TypeError('ApiTokenService.invalidateTenant: "tenantId" must be a UUID');
    const keys = await this.cache.invalidateTenant(uuid);
    const cacheCleared = !this.redis.isDown;
    this.metrics?.tenantInvalidation();
    if (!cacheCleared) this.metrics?.invalidationFailed('tenant');
    return { dropped: keys.length, cacheCleared };
  }

  /** What `list` shows of a stored token: its prefix when it has the generated shape (never in hashed mode), then asterisks. */
  maskToken(token: string): string {
    return this.options.hashTokens ? MASK : mask(token);
  }

  onApplicationShutdown(): void {
    if (this.retryTimer) clearInterval(this.retryTimer);
    this.retryTimer = undefined;
    if (this.pendingInvalidations.size) {
      this.logger.warn(`${this.pendingInvalidations.size} revocation(s) did not reach Redis before shutdown; revoke them again`);
    }
  }

  private async invalidate(stored: string, rows: ApiTokenRecord[]): Promise<ApiTokenRevocation> {
    const scopes = [...new Set<string | null>([null, ...rows.map((row) => row.type)])];
    const cacheCleared = await this.clearCache(stored, scopes);
    if (!cacheCleared) {
      this.metrics?.invalidationFailed('revoke');
      this.retryLater(stored, scopes);
    }
    return { revoked: rows.map((row) => this.summarize(row)), cacheCleared };
  }

  /** Drops a revoked token from every cache, in the order that keeps fills from bringing it back; false when Redis did not answer. */
  private async clearCache(stored: string, scopes: (string | null)[]): Promise<boolean> {
    await this.cache.bumpGeneration(stored, randomUUID());
    await this.cache.deleteKeys(scopes.map((scope) => cacheKey(scope, stored)));
    await this.cache.deleteAllScopes(stored);
    return !this.redis.isDown;
  }

  private retryLater(stored: string, scopes: (string | null)[]): void {
    if (this.pendingInvalidations.size >= MAX_PENDING_INVALIDATIONS) {
      const [oldest] = this.pendingInvalidations.keys();
      this.pendingInvalidations.delete(oldest);
      this.logger.error('Too many revocations waiting for Redis; the oldest is given up (revoke it again)');
    }
    this.pendingInvalidations.set(stored, scopes);
    this.retryTimer ??= setInterval(() => void this.retryPending(), RETRY_INTERVAL_MS).unref();
  }

  /** Tries the waiting invalidations again, oldest first, until one fails; one round at a time. */
  private async retryPending(): Promise<void> {
    if (this.retrying) return;
    this.retrying = true;
    try {
      for (const [stored, scopes] of [...this.pendingInvalidations]) {
        if (!(await this.clearCache(stored, scopes))) return;
        this.pendingInvalidations.delete(stored);
      }
    } finally {
      this.retrying = false;
    }
    if (this.pendingInvalidations.size === 0 && this.retryTimer) {
      clearInterval(this.retryTimer);
      this.retryTimer = undefined;
      this.logger.log('Revocations that could not reach Redis are now cleared from the cache');
    }
  }

  private summarize(record: ApiTokenRecord): ApiTokenSummary {
    return {
      id: record.id,
      appId: record.appId,
      tenantId: record.tenantId,
      type: record.type,
      maskedToken: this.maskToken(record.token),
      lastUsedAt: record.lastUsedAt,
      createdAt: record.createdAt,
    };
  }
}

/** `{prefix}-` and asterisks for a token of the generated shape, asterisks only for any other. */
function mask(token: string): string {
  const match = GENERATED_SHAPE.exec(token);
  return match ? `${match[1]}-${MASK}` : MASK;
}

function checkScope(value: unknown, name: string): string {
  if (typeof value !== 'string' || !SCOPE.test(value) || RESERVED_SCOPES.has(value)) {
    throw new TypeError(
      `ApiTokenService: "${name}" must be 1 to 16 letters, digits, "_", "." or "-", and not "${ANY_SCOPE}" or "None"`,
    );
  }
  return value;
}

/** The UUID, null when absent; never echoes the value (a token pasted in the wrong place stays out of errors). */
function checkUuid(value: unknown, name: string): string | null {
  if (value === undefined || value === null) return null;
  if (!isUuid(value)) throw new TypeError(`ApiTokenService: "${name}" must be a UUID`);
  return value.toLowerCase();
}
