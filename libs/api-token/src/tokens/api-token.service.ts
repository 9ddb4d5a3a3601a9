import { Inject, Injectable, Logger, OnApplicationShutdown, Optional } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { ApiTokenCacheService } from '../cache/token-cache.service';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { ApiTokenInputError, describeError } from '../api-token.errors';
import { TOKEN_RANDOM_LENGTH, generateApiToken } from './token.generator';
import { storedToken } from './token.hash';
import { ACTIVE_KEY_PREFIX, activeKey, cacheKey } from '../api-token.keys';
import { checkScope } from './token.scope';
import { MAX_EXPIRY_SECONDS, isWholeSeconds, wholeSecondsRule } from './token.input';
import { MAX_TOKEN_LENGTH, type ResolvedApiTokenOptions } from '../api-token.options';
import { type ApiTokenRecord, type RateLimitPolicy, formatNaiveUtc, isExpired, naiveUtcToMs } from '../store/api-token.record';
import { checkRateLimitPolicy } from '../limits/rate-limit.policy';
import { ApiTokenRedisService } from '../redis/redis-access.service';
import { ApiTokenRepository, type NewApiToken, type RevocationTarget } from '../store/api-token.repository';
import { ApiTokenMetrics } from '../metrics/api-token.metrics';
import { ApiTokenRevokedTokens, knownPolicy } from '../cache/revoked-tokens';
import { ApiTokenScopeSweep } from '../cache/scope.sweep';
import { ApiTokenKnownTokens } from '../auth/known-tokens.service';
import { revocationWindowMs } from './revocation-log.service';
import { ATTR, SPAN, type TraceSpan, inSpan } from '../metrics/api-token.tracing';

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
  /** At most `limit` requests per `windowSeconds` (1 s to 1 day) for this token, on every instance; none when absent. */
  rateLimit?: RateLimitPolicy | null;
  /** When the token stops being valid (a moment in the future); give this or `expiresInSeconds`, not both. Default: never. */
  expiresAt?: Date | null;
  /** Seconds from now (by this process's clock) until the token stops being valid; a whole number. */
  expiresInSeconds?: number | null;
}

/** Options of {@link ApiTokenService.rotate}. */
export interface RotateApiTokenOptions {
  /**
   * Seconds the old token keeps working after the rotation (by this process's clock); default 0: it is
   * revoked at once. An old token that expires sooner keeps its own expiry.
   */
  graceSeconds?: number;
}

/** The outcome of a rotation. */
export interface ApiTokenRotation {
  /** The new token (handed out this once) and its summary. */
  successor: CreatedApiToken;
  /** The old token as it is now: with its new `expiresAt`, or as deleted when the grace was 0. */
  previous: ApiTokenSummary;
  /** As in {@link ApiTokenRevocation}: false when Redis did not answer while the old token's entries were dropped. */
  cacheCleared: boolean;
}

/** Filters of {@link ApiTokenService.list}; all optional. */
export interface ListApiTokensInput {
  /** Only tokens of this app (uuid). */
  appId?: string;
  /** Only tokens of this tenant (uuid). */
  tenantId?: string;
  /** Only tokens of this scope. */
  scope?: string;
  /** At most this many tokens (a page), from `offset` on. Default: all. */
  limit?: number;
  /** Tokens skipped first, in the list's order (newest first). Default 0. */
  offset?: number;
}

/** A token as the service shows it: everything but the secret. */
export interface ApiTokenSummary {
  /** The token's row id (uuid). */
  id: string;
  /** The app the token belongs to, or null. */
  appId: string | null;
  /** The tenant the token belongs to, or null. */
  tenantId: string | null;
  /** The token's scope (the `type` column). */
  scope: string;
  /** The token's prefix, when it has the generated shape, followed by asterisks; never a character of the secret. */
  maskedToken: string;
  /** Naive UTC ISO-8601. */
  lastUsedAt: string | null;
  /** Naive UTC ISO-8601. */
  createdAt: string | null;
  /** The token's own rate limit, or null (the module's `defaultRateLimit`, if any, then applies). */
  rateLimit: RateLimitPolicy | null;
  /** When the token stops being valid, naive UTC ISO-8601, or null for never. */
  expiresAt: string | null;
}

/** A new token: its summary and, this once, the token itself. */
export interface CreatedApiToken extends ApiTokenSummary {
  /** The token itself: handed out this once, never stored in clear in hashed mode, never logged. */
  token: string;
}

/** The outcome of a revocation. */
export interface ApiTokenRevocation {
  /** The rows deleted; empty when no row matched. */
  revoked: ApiTokenSummary[];
  /**
   * True only when Redis confirmed every step of the invalidation (the generation change, the
   * deletes, the sweep of other scopes and the messages to the other instances); false when any step
   * failed, timed out or got an error reply. This process then tries again every second until every
   * step is confirmed; a process that ends before that (the CLI) should revoke again once Redis is
   * back, or cached entries may outlive the row up to `cacheTtlSeconds`.
   */
  cacheCleared: boolean;
}

/** The outcome of a change of a token's rate limit. */
export interface ApiTokenRateLimitChange {
  /** The token with its new limit, or null when no token matched (nothing changed). */
  updated: ApiTokenSummary | null;
  /**
   * False when Redis did not answer while the token's cache entries were dropped: instances may apply
   * the old limit until the entries expire. This process tries again every second, like a revocation.
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
/**
 * A prefix: a letter, then at most 15 letters, digits, `_`, `.` or `-`. Short enough that no whole token
 * (28 characters and more) pasted by mistake fits, and `list` would show a prefix in clear.
 */
const PREFIX = /^[A-Za-z][A-Za-z0-9_.-]{0,15}$/;
/** What follows a prefix's last `-` when it looks like a token's random part: 8 or more letters and digits, both. */
const RANDOM_TAIL = /-(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{8,}$/;
const DEFAULT_PREFIXES: Record<string, string> = { app: 'app', dataset: 'dataset' };
/** A token of the generated shape: a prefix, `-`, then the random part. Only the prefix is ever shown. */
const GENERATED_SHAPE = new RegExp(`^([A-Za-z][A-Za-z0-9_.-]{0,31})-[A-Za-z0-9]{${TOKEN_RANDOM_LENGTH}}$`);
const MASK = '*'.repeat(TOKEN_RANDOM_LENGTH);
const CREATE_ATTEMPTS = 5;
const RETRY_INTERVAL_MS = 1000;
/** Revocations whose cache invalidation waits for Redis; past this, the oldest are given up (and logged). */
const MAX_PENDING_INVALIDATIONS = 10_000;

/**
 * Token lifecycle: create, list, revoke, and tenant-wide cache invalidation.
 *
 * A revocation deletes the rows and logs it in PostgreSQL (one statement), then changes the token's
 * generation (so a cache fill that read the row before cannot write it after), then drops the token's
 * entries in every scope from Redis, and every instance drops them from its in-process cache through
 * Redis pub/sub (the invalidation channel) and, whatever Redis does, from the log. A
 * creation changes the generation and drops the entries too, so a cached "no such token" never hides
 * a new token.
 *
 * @hideconstructor
 */
@Injectable()
export class ApiTokenService implements OnApplicationShutdown {
  private readonly logger = new Logger(ApiTokenService.name);
  /** Stored tokens whose revocation could not reach Redis, with the scopes of their deleted rows. */
  private readonly pendingInvalidations = new Map<string, { scopes: (string | null)[]; tenants: string[] }>();
  private retryTimer: NodeJS.Timeout | undefined;
  private retrying = false;

  /** @internal Nest's injection: inject the class, never construct it. */
  constructor(
    private readonly repository: ApiTokenRepository,
    private readonly cache: ApiTokenCacheService,
    private readonly redis: ApiTokenRedisService,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
    @Optional() private readonly metrics?: ApiTokenMetrics,
    @Optional() private readonly revokedTokens?: ApiTokenRevokedTokens,
    @Optional() private readonly scopeSweep?: ApiTokenScopeSweep,
    @Optional() private readonly known?: ApiTokenKnownTokens,
  ) {}

  /**
   * Creates a token in Dify's format (`app-` + 24 random characters for scope app) and returns it:
   * the only time the token itself is handed out. Throws ApiTokenInputError on bad input, before any I/O.
   */
  async create(input: CreateApiTokenInput): Promise<CreatedApiToken> {
    const scope = checkScope(input?.scope, 'ApiTokenService: "scope"');
    const appId = checkUuid(input.appId, 'appId');
    const tenantId = checkUuid(input.tenantId, 'tenantId');
    const rateLimit = checkRateLimitPolicy(input.rateLimit, 'ApiTokenService.create: "rateLimit"');
    const prefix = input.prefix ?? DEFAULT_PREFIXES[scope] ?? scope;
    // The messages never quote the prefix: it may be a token pasted in the wrong place.
    if (typeof prefix !== 'string' || !PREFIX.test(prefix)) {
      throw new ApiTokenInputError('ApiTokenService.create: "prefix" must be a letter then up to 15 letters, digits, "_", "." or "-"');
    }
    if (RANDOM_TAIL.test(prefix)) {
      throw new ApiTokenInputError('ApiTokenService.create: "prefix" looks like the start of a token (a "-" then 8 or more letters and digits); was a token pasted?');
    }
    if (!this.options.tokenPattern.test(`${prefix}-${'A'.repeat(TOKEN_RANDOM_LENGTH)}`)) {
      throw new ApiTokenInputError('ApiTokenService.create: tokens with this "prefix" do not match the "tokenPattern" option');
    }
    const expiresAt = checkExpiry(input.expiresAt, input.expiresInSeconds);
    return this.issue(prefix, { type: scope, appId, tenantId, expiresAt, rateLimit });
  }

  /** Inserts a new token of this prefix with these columns and policy, and clears any cached negative of it. */
  private async issue(prefix: string, values: Omit<NewApiToken, 'token'>): Promise<CreatedApiToken> {
    for (let attempt = 0; attempt < CREATE_ATTEMPTS; attempt++) {
      const token = generateApiToken(prefix);
      const stored = storedToken(token, this.options);
      if (await this.repository.exists(stored)) continue;
      const record = await this.repository.insert({ ...values, token: stored });
      // This instance's membership filter holds it at once; the others find it with one statement.
      this.known?.add(stored);
      const bumped = await this.cache.bumpGeneration([values.type, null], stored, randomUUID());
      const deleted = await this.cache.deleteKeys([cacheKey(values.type, stored), cacheKey(null, stored)]);
      if (!bumped || !deleted) this.metrics?.invalidationFailed('create');
      return { ...this.summarize(record), token };
    }
    throw new Error(`ApiTokenService.create: no unused token after ${CREATE_ATTEMPTS} attempts`);
  }

  /** Tokens matching every given filter, newest first, masked. */
  async list(filter: ListApiTokensInput = {}): Promise<ApiTokenSummary[]> {
    const appId = checkUuid(filter.appId, 'appId') ?? undefined;
    const tenantId = checkUuid(filter.tenantId, 'tenantId') ?? undefined;
    const type = filter.scope === undefined ? undefined : checkScope(filter.scope, 'ApiTokenService: "scope"');
    const limit = checkPageNumber(filter.limit, 'limit', 1);
    const offset = checkPageNumber(filter.offset, 'offset', 0);
    return this.withEffectiveUse(await this.repository.list({ appId, tenantId, type, limit, offset }));
  }

  /** Summaries whose `lastUsedAt` is the effective last use: the stored one, or a newer use not flushed yet. */
  private async withEffectiveUse(records: readonly ApiTokenRecord[]): Promise<ApiTokenSummary[]> {
    const pending = await this.pendingUses(records);
    return records.map((record, i) => ({ ...this.summarize(record), lastUsedAt: newerUse(record.lastUsedAt, pending[i]) }));
  }

  /**
   * The uses not flushed yet (`api_token_active:*` of each record's scope, and of no scope as this
   * library and Dify write it): Dify's `get_effective_token_last_used_at`. Without Redis, none.
   */
  private async pendingUses(records: readonly ApiTokenRecord[]): Promise<(string | null)[]> {
    if (records.length === 0) return [];
    const keys = records.flatMap((r) => [activeKey(r.type, r.token), activeKey(null, r.token), `${ACTIVE_KEY_PREFIX}:None:${r.token}`]);
    const values = await this.redis.call('list pending uses', (redis) => Promise.all(keys.map((key) => redis.get(key))));
    return records.map((_, i) => {
      let newest: string | null = null;
      for (const value of values?.slice(i * 3, i * 3 + 3) ?? []) newest = newerUse(newest, value);
      return newest;
    });
  }

  /** The token with this id (UUID), masked, or null; its `lastUsedAt` counts uses not flushed yet, as in {@link list}. */
  async findById(id: string): Promise<ApiTokenSummary | null> {
    const uuid = checkUuid(id, 'id');
    if (!uuid) throw new ApiTokenInputError('ApiTokenService.findById: "id" must be a UUID');
    const [summary] = await this.withEffectiveUse(await this.repository.list({ id: uuid }));
    return summary ?? null;
  }

  /** The stored row of `token` in `scope` (expired tokens included), masked, or null; straight from the database. */
  async findByToken(token: string, scope: string): Promise<ApiTokenSummary | null> {
    checkToken(token, 'findByToken');
    const record = await this.repository.findByToken(storedToken(token, this.options), checkScope(scope, 'ApiTokenService.findByToken: "scope"'));
    return record ? this.summarize(record) : null;
  }

  /** Revokes a token in every scope it has. Its cache entries are dropped even when no row held it. */
  async revoke(token: string): Promise<ApiTokenRevocation> {
    checkToken(token, 'revoke');
    return this.revokeStored({ token: storedToken(token, this.options) });
  }

  /** Revokes the token with this id (UUID). */
  async revokeById(id: string): Promise<ApiTokenRevocation> {
    const uuid = checkUuid(id, 'id');
    if (!uuid) throw new ApiTokenInputError('ApiTokenService.revokeById: "id" must be a UUID');
    return this.revokeStored({ ids: [uuid] });
  }

  /**
   * Replaces a token: creates a successor with the same scope, app, tenant and rate limit (and, when
   * the old one expires, the same lifetime counted from now), then makes the old one expire after
   * `graceSeconds` (0: revoked at once). Every instance drops the old token's cached entries, which
   * lack the new expiry. Returns null, creating nothing, when no valid token matches.
   */
  async rotate(token: string, options: RotateApiTokenOptions = {}): Promise<ApiTokenRotation | null> {
    checkToken(token, 'rotate');
    const graceSeconds = checkSeconds(options?.graceSeconds ?? 0, 'graceSeconds', 0);
    return this.traceRotation(graceSeconds, async () => {
      const current = await this.repository.findByToken(storedToken(token, this.options), null);
      return current && !isExpired(current) ? { current, prefix: GENERATED_SHAPE.exec(token)?.[1] } : null;
    });
  }

  /**
   * {@link rotate}, given the token's id (UUID) rather than the token: for an operator who holds only
   * the id (the admin API). The successor's prefix is the old token's when it is stored in clear,
   * else the scope's default. Returns null, creating nothing, when no valid token has this id.
   */
  async rotateById(id: string, options: RotateApiTokenOptions = {}): Promise<ApiTokenRotation | null> {
    const uuid = checkUuid(id, 'id');
    if (!uuid) throw new ApiTokenInputError('ApiTokenService.rotateById: "id" must be a UUID');
    const graceSeconds = checkSeconds(options?.graceSeconds ?? 0, 'graceSeconds', 0);
    return this.traceRotation(graceSeconds, async () => {
      const [current] = await this.repository.list({ id: uuid });
      return current && !isExpired(current) ? { current, prefix: this.options.hashTokens ? undefined : GENERATED_SHAPE.exec(current.token)?.[1] } : null;
    });
  }

  /** A rotation in its span: `find` names the valid token to replace (and its successor's prefix), or null. */
  private traceRotation(
    graceSeconds: number,
    find: () => Promise<{ current: ApiTokenRecord; prefix: string | undefined } | null>,
  ): Promise<ApiTokenRotation | null> {
    return inSpan(SPAN.rotate, { [ATTR.graceSeconds]: graceSeconds }, async (span) => {
      const found = await find();
      if (found) span.setAttribute(ATTR.scope, found.current.type);
      const rotation = found ? await this.replace(found.current, found.prefix, graceSeconds) : null;
      span.setAttribute(ATTR.outcome, rotation ? 'rotated' : 'not_found');
      if (rotation) span.setAttribute(ATTR.cacheCleared, rotation.cacheCleared);
      return rotation;
    });
  }

  /** The rotation of a valid stored token, with the successor's prefix when known. */
  private async replace(current: ApiTokenRecord, prefix: string | undefined, graceSeconds: number): Promise<ApiTokenRotation> {
    const stored = current.token;
    const lifetimeMs = current.expiresAtMs != null && current.createdAt ? current.expiresAtMs - Date.parse(`${current.createdAt}Z`) : null;
    const successor = await this.issue(prefix ?? DEFAULT_PREFIXES[current.type] ?? current.type, {
      type: current.type,
      appId: current.appId,
      tenantId: current.tenantId,
      rateLimit: current.rateLimit ?? null,
      expiresAt: lifetimeMs === null ? null : formatNaiveUtc(new Date(Date.now() + Math.max(lifetimeMs, 1000))),
    });
    if (graceSeconds === 0) {
      const revocation = await this.withdrawOnFailure(successor, this.revokeStored({ token: stored }));
      return { successor, previous: revocation.revoked[0] ?? this.summarize(current), cacheCleared: revocation.cacheCleared };
    }
    const graceEnd = Date.now() + graceSeconds * 1000;
    const expiresAt = formatNaiveUtc(new Date(Math.min(graceEnd, current.expiresAtMs ?? graceEnd)));
    const updated = await this.withdrawOnFailure(successor, this.repository.setPolicy(current.id, { expiresAt }));
    // The row may have gone meanwhile (revoked); its entries are dropped all the same.
    const { cacheCleared } = await this.invalidate(stored, [updated ?? current], updated ? 'policy' : 'revoke');
    return { successor, previous: this.summarize(updated ?? current), cacheCleared };
  }

  /**
   * A rotation whose old token could not be given its end fails as a whole: the successor, which
   * the caller never receives, is revoked rather than left valid with nobody holding it.
   */
  private async withdrawOnFailure<T>(successor: CreatedApiToken, step: Promise<T>): Promise<T> {
    try {
      return await step;
    } catch (error) {
      await this.revokeStored({ ids: [successor.id] }).catch((failure: unknown) =>
        this.logger.error(`Rotation failed, and its unused successor (id ${successor.id}) could not be revoked: ${describeError(failure)}`),
      );
      throw error;
    }
  }

  /**
   * Deletes up to `limit` expired tokens (expired by PostgreSQL's clock), each through the revocation
   * path: row deleted, cache entries dropped on every instance. Returns how many. The scheduled job
   * (the usage flush) calls it under its lock.
   * @internal the module's own jobs and CLI.
   */
  async removeExpired(limit: number): Promise<number> {
    const ids = await this.repository.findExpired(limit);
    const removed = ids.length ? (await this.revokeStored({ ids })).revoked.length : 0;
    if (removed) this.metrics?.expiredRemoved(removed);
    return removed;
  }

  /**
   * Sets (a policy) or removes (null) a token's own rate limit, given the token or `{ id }`. Every
   * instance applies it from its next request: the token's cache entries are dropped in Redis and in
   * every in-process cache, as a revocation does, and the row stays. Throws ApiTokenInputError on bad input.
   */
  async setRateLimit(target: string | { id: string }, rateLimit: RateLimitPolicy | null): Promise<ApiTokenRateLimitChange> {
    const policy = checkRateLimitPolicy(rateLimit, 'ApiTokenService.setRateLimit: the rate limit');
    if (rateLimit === undefined) throw new ApiTokenInputError('ApiTokenService.setRateLimit: give a rate limit, or null to remove it');
    let id: string | null;
    if (typeof target === 'string') {
      checkToken(target, 'setRateLimit');
      id = (await this.repository.findByToken(storedToken(target, this.options), null))?.id ?? null;
    } else {
      id = checkUuid(target?.id, 'id');
      if (!id) throw new ApiTokenInputError('ApiTokenService.setRateLimit: "id" must be a UUID');
    }
    const record = id === null ? null : await this.repository.setPolicy(id, { rateLimit: policy });
    if (!record) return { updated: null, cacheCleared: true };
    const { revoked: [updated], cacheCleared } = await this.invalidate(record.token, [record], 'policy');
    return { updated, cacheCleared };
  }

  /**
   * The one path of every revocation (revoke, revokeById, and any later caller: rotation's end of
   * grace, the expiry sweep): deletes the rows and logs the revocation in one statement
   * ({@link ApiTokenRepository.revoke}), refuses the tokens on this instance at once, then drops their
   * cache entries. Other instances learn of it over pub/sub (fast) and from the log (guaranteed,
   * {@link ApiTokenRevocationLogService}). A token target drops its cache entries even when no row held it.
   * @internal not for applications: call {@link revoke} or {@link revokeById}.
   */
  revokeStored(target: RevocationTarget): Promise<ApiTokenRevocation> {
    return inSpan(SPAN.revoke, { [ATTR.target]: 'token' in target ? 'token' : 'id' }, (span) => this.revokeRows(target, span));
  }

  private async revokeRows(target: RevocationTarget, span: TraceSpan): Promise<ApiTokenRevocation> {
    const rows = await this.repository.revoke(target);
    span.setAttributes({
      [ATTR.outcome]: rows.length ? 'revoked' : 'not_found',
      [ATTR.rows]: rows.length,
      [ATTR.scopes]: [...new Set(rows.map((row) => row.type))],
    });
    this.metrics?.revocation(rows.length > 0);
    const byToken = new Map<string, ApiTokenRecord[]>('token' in target ? [[target.token, []]] : []);
    for (const row of rows) {
      const deleted = byToken.get(row.token);
      if (deleted) deleted.push(row);
      else byToken.set(row.token, [row]);
    }
    const window = revocationWindowMs(this.options);
    for (const [stored, deleted] of byToken) if (deleted.length) this.revokedTokens?.add(stored, window);
    const outcome: ApiTokenRevocation = { revoked: [], cacheCleared: true };
    for (const [stored, deleted] of byToken) {
      const { revoked, cacheCleared } = await this.invalidate(stored, deleted);
      outcome.revoked.push(...revoked);
      outcome.cacheCleared &&= cacheCleared;
    }
    span.setAttribute(ATTR.cacheCleared, outcome.cacheCleared);
    return outcome;
  }

  /** Drops every cached entry of a tenant, and its index, on every instance; the tokens stay valid. */
  async invalidateTenant(tenantId: string): Promise<TenantInvalidation> {
    const uuid = checkUuid(tenantId, 'tenantId');
    if (!uuid) throw new ApiTokenInputError('ApiTokenService.invalidateTenant: "tenantId" must be a UUID');
    return inSpan(SPAN.invalidateTenant, { [ATTR.tenantId]: uuid }, async (span) => {
      const { keys, cleared: cacheCleared } = await this.cache.invalidateTenant(uuid);
      this.metrics?.tenantInvalidation();
      if (!cacheCleared) this.metrics?.invalidationFailed('tenant');
      span.setAttributes({ [ATTR.outcome]: cacheCleared ? 'cleared' : 'unconfirmed', [ATTR.keysDropped]: keys.length, [ATTR.cacheCleared]: cacheCleared });
      return { dropped: keys.length, cacheCleared };
    });
  }

  /**
   * What `list` shows of a stored token: its prefix when it has the generated shape (never in hashed mode), then asterisks.
   * @internal the module's own jobs and CLI.
   */
  maskToken(token: string): string {
    return this.options.hashTokens ? MASK : mask(token);
  }

  /** Nest's shutdown hook: stops retrying revocations and warns about those that never reached Redis. */
  onApplicationShutdown(): void {
    if (this.retryTimer) clearInterval(this.retryTimer);
    this.retryTimer = undefined;
    if (this.pendingInvalidations.size) {
      this.logger.warn(`${this.pendingInvalidations.size} revocation(s) did not reach Redis before shutdown; revoke them again`);
    }
  }

  /**
   * Drops a token's cache entries everywhere (in every scope of `rows`, and `any`), retrying until
   * Redis confirms: after a revocation, or a policy change that keeps the row (`kind` for the metric).
   * Answers the rows' summaries.
   */
  private async invalidate(stored: string, rows: ApiTokenRecord[], kind: 'revoke' | 'policy' = 'revoke'): Promise<ApiTokenRevocation> {
    // This instance distrusts older entries at once; the others learn of the change from the log.
    if (kind === 'policy') this.revokedTokens?.notePolicy(stored, knownPolicy(rows[0].expiresAt ?? null, rows[0].rateLimit ?? null), revocationWindowMs(this.options));
    const scopes = [...new Set<string | null>([null, ...rows.map((row) => row.type)])];
    const tenants = [...new Set(rows.flatMap((row) => (row.tenantId ? [row.tenantId] : [])))];
    const cacheCleared = await this.clearCache(stored, scopes, tenants);
    if (!cacheCleared) {
      this.metrics?.invalidationFailed(kind);
      this.retryLater(stored, scopes, tenants);
    }
    return { revoked: rows.map((row) => this.summarize(row)), cacheCleared };
  }

  /**
   * Drops a revoked token from every cache, in the order that keeps fills from bringing it back: the
   * generation first (a fill's write that reaches Redis after it is refused), then the deletes, whose
   * messages empty every instance's L1. True only when Redis confirmed every step; every step is tried
   * even after one failed, since each that gets through narrows what a stale entry can do meanwhile.
   */
  private async clearCache(stored: string, scopes: (string | null)[], tenants: string[]): Promise<boolean> {
    const bumped = await this.cache.bumpGeneration(scopes, stored, randomUUID());
    // The keys the token can be named by, directly: no SCAN, so a shared Redis of millions of keys
    // costs a revocation nothing. Entries in scopes it never had go to the background sweep, which
    // decides neither the answer nor the retry.
    const deleted = await this.cache.deleteNamed(stored, scopes, tenants);
    this.scopeSweep?.enqueue(stored, scopes);
    return bumped && deleted;
  }

  private retryLater(stored: string, scopes: (string | null)[], tenants: string[]): void {
    if (this.pendingInvalidations.size >= MAX_PENDING_INVALIDATIONS) {
      const [oldest] = this.pendingInvalidations.keys();
      this.pendingInvalidations.delete(oldest);
      this.logger.error('Too many revocations waiting for Redis; the oldest is given up (revoke it again)');
    }
    this.pendingInvalidations.set(stored, { scopes, tenants });
    this.retryTimer ??= setInterval(() => void this.retryPending(), RETRY_INTERVAL_MS).unref();
  }

  /** Tries the waiting invalidations again, oldest first, until one fails; one round at a time. */
  private async retryPending(): Promise<void> {
    if (this.retrying) return;
    this.retrying = true;
    try {
      for (const [stored, { scopes, tenants }] of [...this.pendingInvalidations]) {
        if (!(await this.clearCache(stored, scopes, tenants))) return;
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
      scope: record.type,
      maskedToken: this.maskToken(record.token),
      lastUsedAt: record.lastUsedAt,
      createdAt: record.createdAt,
      rateLimit: record.rateLimit ?? null,
      expiresAt: record.expiresAt ?? null,
    };
  }
}

/** The newer of two naive UTC ISO-8601 times (either may be null, or unreadable: then the other), cut to milliseconds. */
function newerUse(a: string | null | undefined, b: string | null | undefined): string | null {
  const ms = (v: string | null | undefined) => (v ? naiveUtcToMs(v) : NaN);
  const [ta, tb] = [ms(a), ms(b)];
  if (Number.isNaN(tb)) return a ?? null;
  if (Number.isNaN(ta) || tb > ta) return new Date(tb).toISOString().slice(0, 23);
  return a ?? null;
}

/** A page bound: undefined, or a safe integer of at least `min`. */
function checkPageNumber(value: unknown, name: string, min: number): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new ApiTokenInputError(`ApiTokenService.list: "${name}" must be an integer of at least ${min}`);
  }
  return value;
}

/** `{prefix}-` and asterisks for a token of the generated shape, asterisks only for any other. */
function mask(token: string): string {
  const match = GENERATED_SHAPE.exec(token);
  return match ? `${match[1]}-${MASK}` : MASK;
}

function checkToken(token: unknown, method: string): asserts token is string {
  if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN_LENGTH) {
    throw new ApiTokenInputError(`ApiTokenService.${method}: the token must be a string of 1 to ${MAX_TOKEN_LENGTH} characters`);
  }
}

/** A whole number of seconds from `min` to {@link MAX_EXPIRY_SECONDS}. */
function checkSeconds(value: unknown, name: string, min: number): number {
  if (!isWholeSeconds(value, min)) throw new ApiTokenInputError(`ApiTokenService: "${name}" must be ${wholeSecondsRule(min)}`);
  return value;
}

/** The expiry of a new token as naive UTC, or null for never; at most one of the two may be given. */
function checkExpiry(expiresAt: unknown, expiresInSeconds: unknown): string | null {
  if (expiresAt != null && expiresInSeconds != null) {
    throw new ApiTokenInputError('ApiTokenService.create: give "expiresAt" or "expiresInSeconds", not both');
  }
  if (expiresInSeconds != null) return formatNaiveUtc(new Date(Date.now() + checkSeconds(expiresInSeconds, 'expiresInSeconds', 1) * 1000));
  if (expiresAt == null) return null;
  const ms = expiresAt instanceof Date ? expiresAt.getTime() : NaN;
  if (Number.isNaN(ms) || ms <= Date.now() || ms > Date.now() + MAX_EXPIRY_SECONDS * 1000) {
    throw new ApiTokenInputError('ApiTokenService.create: "expiresAt" must be a valid Date in the future, at most 100 years ahead');
  }
  return formatNaiveUtc(expiresAt as Date);
}

/** The UUID, null when absent; never echoes the value (a token pasted in the wrong place stays out of errors). */
function checkUuid(value: unknown, name: string): string | null {
  if (value === undefined || value === null) return null;
  if (!isUuid(value)) throw new ApiTokenInputError(`ApiTokenService: "${name}" must be a UUID`);
  return value.toLowerCase();
}
