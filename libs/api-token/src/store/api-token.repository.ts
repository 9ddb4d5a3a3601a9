import { Inject, Injectable } from '@nestjs/common';
import type { PoolClient, QueryResult, QueryResultRow } from 'pg';
import type { DataSource } from 'typeorm';
import { ApiTokenError, ApiTokenStoreError } from '../api-token.errors';
import type { ApiTokenRecord, RateLimitPolicy } from './api-token.record';
import { naiveUtcToMs, toNaiveUtc } from './api-token.record';
import { API_TOKEN_DATA_SOURCE } from '../api-token.constants';

const TS = (column: string, table = '') => `to_char(${table}${column}, 'YYYY-MM-DD"T"HH24:MI:SS.US') AS ${column}`;
/** Dify's columns of `api_tokens`, unqualified (statements on that table alone: insert, delete). */
const COLUMNS = `id::text, app_id::text, tenant_id::text, type, token, ${TS('last_used_at')}, ${TS('created_at')}`;
/** The same columns of `api_tokens t` with the token's policy from `api_token_policies p` (left joined). */
const POLICY_COLUMNS = `${TS('expires_at', 'p.')}, p.rate_limit, p.rate_window_seconds`;
const JOINED_COLUMNS =
  `t.id::text, t.app_id::text, t.tenant_id::text, t.type, t.token, ${TS('last_used_at', 't.')}, ${TS('created_at', 't.')}, ` +
  POLICY_COLUMNS;
/** `api_tokens t` with its policy: one query reads both (the policy table is the library's, never Dify's). */
const JOINED = 'api_tokens t LEFT JOIN api_token_policies p ON p.token_id = t.id';
const NOW_UTC = `(now() AT TIME ZONE 'UTC')::timestamp(0)`;

/** A row of a log read ({@link ApiTokenRepository.readRevocationLog}): the log's head, then one entry (null columns when none). */
interface LogRow {
  seq_node: string;
  seq_last: string;
  next_expiry_ms?: number | null;
  id: string | null;
  token: string;
  scopes: string[];
  expires_at?: string | null;
  rate_limit?: number | null;
  rate_window_seconds?: number | null;
  age_ms: number;
}

interface Row {
  id: string;
  app_id: string | null;
  tenant_id: string | null;
  type: string;
  token: string;
  last_used_at: string | null;
  created_at: string | null;
  /** Absent in statements that do not join the policy table. */
  expires_at?: string | null;
  rate_limit?: number | null;
  rate_window_seconds?: number | null;
}

const toRecord = (row: Row): ApiTokenRecord => ({
  id: row.id,
  appId: row.app_id,
  tenantId: row.tenant_id,
  type: row.type,
  token: row.token,
  lastUsedAt: row.last_used_at && toNaiveUtc(row.last_used_at),
  createdAt: row.created_at && toNaiveUtc(row.created_at),
  expiresAt: row.expires_at ? toNaiveUtc(row.expires_at) : null,
  rateLimit: row.rate_limit && row.rate_window_seconds ? { limit: row.rate_limit, windowSeconds: row.rate_window_seconds } : null,
  // Last, as parseRecord has it: records from the database and from Redis keep one shape (one hidden class).
  expiresAtMs: row.expires_at ? naiveUtcToMs(toNaiveUtc(row.expires_at)!) : null,
});

/** A use of a token to move into `last_used_at`; `scope` null matches the token in every scope. */
export interface LastUsedUpdate {
  token: string;
  scope: string | null;
  /** Naive UTC ISO-8601. */
  lastUsedAt: string;
}

/** A row to insert: the token's columns and, when it has one, its policy. */
export interface NewApiToken {
  token: string;
  type: string;
  appId?: string | null;
  tenantId?: string | null;
  /** Naive UTC ISO-8601, or null/absent for no expiry. */
  expiresAt?: string | null;
  rateLimit?: RateLimitPolicy | null;
}

/** A change of policy: a value sets it, null clears it, undefined leaves it as it is. */
export interface ApiTokenPolicyUpdate {
  /** Naive UTC ISO-8601. */
  expiresAt?: string | null;
  rateLimit?: RateLimitPolicy | null;
}

/** Filters of {@link ApiTokenRepository.list}; all optional. */
export interface ApiTokenFilter {
  id?: string;
  appId?: string;
  tenantId?: string;
  type?: string;
  /** Rows at most, and rows skipped first (pagination, in the list's order). */
  limit?: number;
  offset?: number;
}

/** What a revocation deletes: every row of one stored token (any scope), or the rows with these ids. */
export type RevocationTarget = { token: string } | { ids: readonly string[] };

/** One entry of the revocation log (`api_token_revocations`) or of the policy-change log (`api_token_policy_changes`). */
export interface RevocationLogEntry {
  /** The entry's bigserial id, as text. */
  id: string;
  /** The token's stored form (its hash in hashed mode). */
  token: string;
  /** The scopes of the rows deleted or changed. */
  scopes: string[];
  /** Milliseconds since the revocation or change, by the database's clock (so no two clocks are compared). */
  ageMs: number;
  /** The token's policy from this change on; absent for a revocation. */
  policy?: { expiresAt: string | null; rateLimit: RateLimitPolicy | null };
}

/** Where a reader of one log stands: entries after `after`, and the ids it skipped (`gaps`), are read. */
export interface LogCursor {
  after: string;
  gaps: readonly string[];
}

/** What one read of a log found: its entries, and the state of the log's id sequence. */
export interface LogPage {
  entries: RevocationLogEntry[];
  /**
   * The last id the log's sequence handed out ('0' before the first): ids up to it are taken, by
   * committed entries or by transactions still open (or rolled back).
   */
  lastId: string;
  /**
   * The file node of the log's id sequence: restarting the sequence (TRUNCATE … RESTART IDENTITY) or
   * making the table again changes it; pruning, TRUNCATE alone, VACUUM FULL or CLUSTER do not.
   */
  sequenceNode: string;
}

/** One read of the revocation log ({@link ApiTokenRepository.readRevocationLog}). */
export interface RevocationLogRead extends LogPage {
  /** Milliseconds until the next token expires, by PostgreSQL's clock (negative: one has); null when none expires. */
  nextExpiryInMs: number | null;
}

/**
 * `api_tokens` in PostgreSQL, on connections of the TypeORM DataSource's pool (see `run` for why a
 * statement goes to its connection, not through `QueryRunner.query`). Timestamps travel as naive UTC
 * text, so the process's `TZ` never shifts them.
 */
@Injectable()
export class ApiTokenRepository {
  constructor(@Inject(API_TOKEN_DATA_SOURCE) private readonly dataSource: DataSource) {
    if (dataSource.options.type !== 'postgres') {
      throw new ApiTokenError(`ApiTokenRepository needs a PostgreSQL DataSource, got "${dataSource.options.type}"`);
    }
  }

  /** The row with this token in this scope (any scope when `scope` is null), or null. */
  async findByToken(token: string, scope: string | null): Promise<ApiTokenRecord | null> {
    const rows = scope
      ? await this.query<Row>('lookup', `SELECT ${JOINED_COLUMNS} FROM ${JOINED} WHERE t.token = $1 AND t.type = $2 LIMIT 1`, [token, scope])
      : await this.query<Row>('lookup', `SELECT ${JOINED_COLUMNS} FROM ${JOINED} WHERE t.token = $1 LIMIT 1`, [token]);
    return rows.length ? toRecord(rows[0]) : null;
  }

  /** Whether any row holds this token, in any scope. */
  async exists(token: string): Promise<boolean> {
    return (await this.query('lookup', 'SELECT 1 FROM api_tokens WHERE token = $1 LIMIT 1', [token])).length > 0;
  }

  /**
   * Which of these stored tokens a row holds, in any scope: one statement for many tokens (the
   * membership filter's check of the tokens it does not hold).
   * @internal
   */
  async existing(tokens: readonly string[]): Promise<Set<string>> {
    const rows = await this.query<{ token: string }>('lookup', 'SELECT DISTINCT token FROM api_tokens WHERE token = ANY($1::varchar[])', [tokens]);
    return new Set(rows.map((row) => row.token));
  }

  /**
   * Up to `limit` stored tokens after `after` in the index's order (`''`: from the first), each once:
   * the pages the membership filter is built from.
   * @internal
   */
  async tokenPage(after: string, limit: number): Promise<string[]> {
    const rows = await this.query<{ token: string }>('filter load', 'SELECT DISTINCT token FROM api_tokens WHERE token > $1 ORDER BY token LIMIT $2', [after, limit]);
    return rows.map((row) => row.token);
  }

  /** Reads one row of `api_tokens` (none needed): throws {@link ApiTokenStoreError} when the table cannot be read. */
  async checkTable(): Promise<void> {
    await this.query('health check', 'SELECT 1 FROM api_tokens LIMIT 1', []);
  }

  /**
   * Inserts a token, and its policy (expiry, rate limit) when it has one, in one statement; `created_at`
   * is now, in UTC.
   */
  async insert(values: NewApiToken): Promise<ApiTokenRecord> {
    const { expiresAt = null, rateLimit = null } = values;
    const rows = await this.query<Row>(
      'insert',
      `WITH t AS (
         INSERT INTO api_tokens (app_id, tenant_id, type, token, created_at) VALUES ($1, $2, $3, $4, ${NOW_UTC}) RETURNING *
       ), p AS (
         INSERT INTO api_token_policies (token_id, expires_at, rate_limit, rate_window_seconds)
         SELECT t.id, $5::timestamp, $6::integer, $7::integer FROM t WHERE $5::timestamp IS NOT NULL OR $6::integer IS NOT NULL
         RETURNING *
       )
       SELECT ${JOINED_COLUMNS} FROM t LEFT JOIN p ON p.token_id = t.id`,
      [values.appId ?? null, values.tenantId ?? null, values.type, values.token, expiresAt, rateLimit?.limit ?? null, rateLimit?.windowSeconds ?? null],
    );
    return toRecord(rows[0]);
  }

  /**
   * Sets a token's policy (expiry, rate limit; null clears one, undefined leaves it) and returns the
   * token with it, or null when no row has this id. The change is written to the policy-change log in
   * the same statement, so every instance learns of it, whatever Redis does.
   */
  async setPolicy(id: string, policy: ApiTokenPolicyUpdate): Promise<ApiTokenRecord | null> {
    const keepExpiry = policy.expiresAt === undefined;
    const keepLimit = policy.rateLimit === undefined;
    const rows = await this.query<Row>(
      'update policy',
      `WITH p AS (
         INSERT INTO api_token_policies (token_id, expires_at, rate_limit, rate_window_seconds)
         SELECT id, $2::timestamp, $4::integer, $5::integer FROM api_tokens WHERE id = $1::uuid
         ON CONFLICT (token_id) DO UPDATE SET
           expires_at = CASE WHEN $3::boolean THEN api_token_policies.expires_at ELSE EXCLUDED.expires_at END,
           rate_limit = CASE WHEN $6::boolean THEN api_token_policies.rate_limit ELSE EXCLUDED.rate_limit END,
           rate_window_seconds = CASE WHEN $6::boolean THEN api_token_policies.rate_window_seconds ELSE EXCLUDED.rate_window_seconds END
         RETURNING *
       ), l AS (
         INSERT INTO api_token_policy_changes (token, scopes, expires_at, rate_limit, rate_window_seconds)
         SELECT t.token, ARRAY[t.type], p.expires_at, p.rate_limit, p.rate_window_seconds FROM api_tokens t JOIN p ON p.token_id = t.id
       )
       SELECT t.id::text, t.app_id::text, t.tenant_id::text, t.type, t.token, ${TS('last_used_at', 't.')}, ${TS('created_at', 't.')},
              ${POLICY_COLUMNS}
         FROM api_tokens t JOIN p ON p.token_id = t.id`,
      [
        id,
        policy.expiresAt ?? null,
        keepExpiry,
        policy.rateLimit?.limit ?? null,
        policy.rateLimit?.windowSeconds ?? null,
        keepLimit,
      ],
    );
    return rows.length ? toRecord(rows[0]) : null;
  }

  /**
   * Deletes the target's rows and records each token they held in the revocation log, in one
   * statement (one transaction: a row is never gone without its log entry, nor logged and kept).
   * Every revocation goes through here, so that every instance learns of it from the log. Returns
   * the rows deleted; nothing is logged when none matched.
   */
  async revoke(target: RevocationTarget): Promise<ApiTokenRecord[]> {
    const [where, param] = 'token' in target ? ['token = $1', target.token] : ['id = ANY($1::uuid[])', [...target.ids]];
    const rows = await this.query<Row>(
      'revoke',
      `WITH d AS (DELETE FROM api_tokens WHERE ${where} RETURNING *),
            l AS (INSERT INTO api_token_revocations (token, scopes) SELECT token, array_agg(DISTINCT type) FROM d GROUP BY token)
       SELECT ${COLUMNS} FROM d`,
      [param],
    );
    return rows.map(toRecord);
  }

  /**
   * Entries of the revocation log after `cursor.after` or among `cursor.gaps`, in id order, at most
   * `limit`; with the state of the log's id sequence and when the next token expires. One statement.
   */
  async readRevocationLog(cursor: LogCursor, limit: number): Promise<RevocationLogRead> {
    const rows = await this.readLog(
      'read revocations',
      'api_token_revocations',
      `, (SELECT extract(epoch FROM min(expires_at) - (clock_timestamp() AT TIME ZONE 'UTC')) * 1000
            FROM api_token_policies WHERE expires_at IS NOT NULL)::float8 AS next_expiry_ms`,
      'revoked_at',
      '',
      cursor,
      limit,
    );
    return { ...this.logPage(rows, false), nextExpiryInMs: rows[0].next_expiry_ms ?? null };
  }

  /** Entries of the policy-change log, as {@link readRevocationLog} reads the revocation log. */
  async readPolicyLog(cursor: LogCursor, limit: number): Promise<LogPage> {
    const rows = await this.readLog(
      'read policy changes',
      'api_token_policy_changes',
      '',
      'changed_at',
      `, ${TS('expires_at')}, rate_limit, rate_window_seconds`,
      cursor,
      limit,
    );
    return this.logPage(rows, true);
  }

  /**
   * One log's head (its id sequence: file node and last value) joined to its next entries. Ordered by
   * the bigint id, never by its text (where '1000' sorts before '2').
   */
  private readLog(what: string, table: string, head: string, at: string, columns: string, cursor: LogCursor, limit: number): Promise<LogRow[]> {
    return this.query<LogRow>(
      what,
      `WITH s AS (SELECT pg_get_serial_sequence('${table}', 'id')::regclass AS seq),
       h AS (SELECT pg_relation_filenode(s.seq)::text AS seq_node, coalesce(pg_sequence_last_value(s.seq), 0)::text AS seq_last${head} FROM s),
       e AS (SELECT id, token, scopes::text[] AS scopes${columns},
                    (extract(epoch FROM (clock_timestamp() AT TIME ZONE 'UTC') - ${at}) * 1000)::float8 AS age_ms
               FROM ${table} WHERE id > $1::bigint OR id = ANY($2::bigint[]) ORDER BY id LIMIT $3)
       SELECT h.*, e.id::text AS id, e.token, e.scopes${columns ? ', e.expires_at, e.rate_limit, e.rate_window_seconds' : ''}, e.age_ms
         FROM h LEFT JOIN e ON true ORDER BY e.id`,
      [cursor.after, [...cursor.gaps], limit],
    );
  }

  private logPage(rows: LogRow[], policies: boolean): LogPage {
    const entries = rows
      .filter((row) => row.id !== null)
      .map((row): RevocationLogEntry => ({
        id: row.id!,
        token: row.token,
        scopes: row.scopes,
        ageMs: Math.max(0, row.age_ms),
        ...(policies
          ? {
              policy: {
                expiresAt: row.expires_at ? toNaiveUtc(row.expires_at) : null,
                rateLimit: row.rate_limit && row.rate_window_seconds ? { limit: row.rate_limit, windowSeconds: row.rate_window_seconds } : null,
              },
            }
          : {}),
      }));
    return { entries, lastId: rows[0].seq_last, sequenceNode: rows[0].seq_node };
  }

  /** Deletes entries of both logs older than `olderThanMs`; returns how many. */
  async pruneRevocations(olderThanMs: number): Promise<number> {
    const result = await this.run(
      'prune revocations',
      `WITH r AS (DELETE FROM api_token_revocations WHERE revoked_at < (clock_timestamp() AT TIME ZONE 'UTC') - $1 * interval '1 millisecond' RETURNING 1),
            p AS (DELETE FROM api_token_policy_changes WHERE changed_at < (clock_timestamp() AT TIME ZONE 'UTC') - $1 * interval '1 millisecond' RETURNING 1)
       SELECT (SELECT count(*) FROM r) + (SELECT count(*) FROM p) AS pruned`,
      [olderThanMs],
    );
    return Number((result.rows[0] as { pruned: string }).pruned);
  }

  /**
   * Ids of the tokens expired by PostgreSQL's clock (one clock for every instance that sweeps), the
   * longest expired first, at most `limit` (the partial index on `expires_at` serves it).
   */
  async findExpired(limit: number): Promise<string[]> {
    const rows = await this.query<{ id: string }>(
      'find expired',
      `SELECT token_id::text AS id FROM api_token_policies WHERE expires_at <= (now() AT TIME ZONE 'UTC') ORDER BY expires_at LIMIT $1`,
      [limit],
    );
    return rows.map((row) => row.id);
  }

  /** Rows matching every given filter, newest first. */
  async list(filter: ApiTokenFilter = {}): Promise<ApiTokenRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    const add = (sql: string, value: unknown) => {
      params.push(value);
      where.push(`${sql} $${params.length}`);
    };
    if (filter.id !== undefined) add('t.id =', filter.id);
    if (filter.appId !== undefined) add('t.app_id =', filter.appId);
    if (filter.tenantId !== undefined) add('t.tenant_id =', filter.tenantId);
    if (filter.type !== undefined) add('t.type =', filter.type);
    const clause = where.length ? ` WHERE ${where.join(' AND ')}` : '';
    let page = '';
    if (filter.limit !== undefined) page += ` LIMIT ${Math.trunc(filter.limit)}`;
    if (filter.offset) page += ` OFFSET ${Math.trunc(filter.offset)}`;
    const sql = `SELECT ${JOINED_COLUMNS} FROM ${JOINED}${clause} ORDER BY t.created_at DESC, t.id${page}`;
    return (await this.query<Row>('list', sql, params)).map(toRecord);
  }

  /**
   * Moves `last_used_at` forward for a whole batch in one statement (arrays, so the batch size is not
   * bound by PostgreSQL's 65,535 parameters). A row only moves forward; when several entries hit one
   * row the newest wins. Returns the number of rows updated.
   */
  async updateLastUsed(updates: readonly LastUsedUpdate[]): Promise<number> {
    if (updates.length === 0) return 0;
    const batches = disjointBatches(updates);
    const ids = new Set<string>();
    let updated = 0;
    for (const batch of batches) {
      // One join on the token index, no aggregate and no second lookup by id: the batch names each row
      // at most once (disjointBatches), which is what kept the older form's GROUP BY. Two batches (rare)
      // return ids, so a row both move counts once.
      const result = await this.run<{ id: string }>(
        'update last_used_at',
        `UPDATE api_tokens t SET last_used_at = v.ts
           FROM unnest($1::text[], $2::text[], $3::timestamp[]) AS v(token, type, ts)
          WHERE t.token = v.token AND (v.type IS NULL OR t.type = v.type)
            AND (t.last_used_at IS NULL OR t.last_used_at < v.ts)${batches.length > 1 ? ' RETURNING t.id' : ''}`,
        [batch.map((u) => u.token), batch.map((u) => u.scope), batch.map((u) => u.lastUsedAt)],
      );
      if (batches.length > 1) for (const row of result.rows) ids.add(row.id);
      else updated = result.rowCount ?? 0;
    }
    if (batches.length > 1) updated = ids.size;
    return updated;
  }

  private async query<T extends QueryResultRow = QueryResultRow>(operation: string, sql: string, params: unknown[]): Promise<T[]> {
    return (await this.run<T>(operation, sql, params)).rows;
  }

  /**
   * Runs one statement on a connection of the DataSource's pool, borrowed through TypeORM's public
   * API (`createQueryRunner('master')`, `QueryRunner.connect()`, `release()`): the cost of one
   * `pool.query`, with no private field of TypeORM's driver. The statement goes to that connection
   * directly, never through `QueryRunner.query`, which hands its parameters (tokens) to the
   * DataSource's logger (`logging`), to subscribers' `beforeQuery`/`afterQuery`, and to the
   * `QueryFailedError` it throws. A failure becomes an {@link ApiTokenStoreError} that keeps the
   * SQLSTATE only (pg's message and `detail` may quote a value); the connection is then dropped
   * rather than pooled again, as `pool.query` does (a timed-out one may still be running the statement).
   */
  private async run<T extends QueryResultRow>(operation: string, sql: string, params: unknown[]): Promise<QueryResult<T>> {
    if (!this.dataSource.isInitialized) throw new ApiTokenStoreError(operation, { code: 'NOT_CONNECTED' });
    const runner = this.dataSource.createQueryRunner('master');
    let client: PoolClient | undefined;
    try {
      client = (await runner.connect()) as PoolClient;
      return await client.query<T>(sql, params);
    } catch (error) {
      // end() before release(): the pool then removes the connection instead of handing it out again.
      client?.end().catch(() => undefined);
      throw new ApiTokenStoreError(operation, error);
    } finally {
      await runner.release();
    }
  }
}

/**
 * Splits uses into batches in which no row can match two entries (UPDATE … FROM updates a row once,
 * with whichever entry it met first): the newest time per (token, scope); a token's scoped entries
 * beside its scope-less one (which matches all its rows) go to a later batch, and only when newer, since
 * updates only move forward. Almost always one batch.
 */
export function disjointBatches(updates: readonly LastUsedUpdate[]): LastUsedUpdate[][] {
  const byToken = new Map<string, Map<string | null, LastUsedUpdate>>();
  for (const use of updates) {
    let scopes = byToken.get(use.token);
    if (!scopes) byToken.set(use.token, (scopes = new Map()));
    const seen = scopes.get(use.scope);
    if (!seen || seen.lastUsedAt < use.lastUsedAt) scopes.set(use.scope, use);
  }
  const first: LastUsedUpdate[] = [];
  const later: LastUsedUpdate[] = [];
  for (const scopes of byToken.values()) {
    const any = scopes.get(null);
    for (const use of scopes.values()) {
      if (!any || use === any) first.push(use);
      else if (use.lastUsedAt > any.lastUsedAt) later.push(use);
    }
  }
  return later.length ? [first, later] : [first];
}
