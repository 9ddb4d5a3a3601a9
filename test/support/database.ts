import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { PG_ADMIN_URL } from './servers';

/** A database of the test's own: created empty, dropped (with its connections) by `drop()`. */
export interface TestDatabase {
  name: string;
  url: string;
  /** Runs one statement on the test database (its own short-lived connection) and returns the rows. */
  query(sql: string, params?: unknown[]): Promise<Record<string, unknown>[]>;
  drop(): Promise<void>;
}

async function admin<T>(run: (client: Client) => Promise<T>, connectionString = PG_ADMIN_URL): Promise<T> {
  const client = new Client({ connectionString });
  await client.connect();
  try {
    return await run(client);
  } finally {
    await client.end();
  }
}

/** A throwaway database on the PostgreSQL that `adminUrl` reaches (the suites': `TEST_PG_URL`; the benchmarks pass theirs). */
export async function createTestDatabase(adminUrl = PG_ADMIN_URL, prefix = 'api_token_test'): Promise<TestDatabase> {
  const name = `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE ${name}`), adminUrl);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    name,
    url: url.toString(),
    query: (sql, params) => admin((c) => c.query(sql, params), url.toString()).then((r) => r.rows),
    drop: () => admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`), adminUrl).then(() => undefined),
  };
}

/**
 * Revokes `token` the way the library's statement does (rows deleted, the revocation logged) in a
 * transaction left open: its log id is taken now and committed when the test says, after later ones.
 */
export async function revokeInOpenTransaction(databaseUrl: string, token: string): Promise<{ commit(): Promise<void>; end(): Promise<void> }> {
  const client = new Client({ connectionString: databaseUrl });
  await client.connect();
  await client.query('BEGIN');
  await client.query(
    `WITH d AS (DELETE FROM api_tokens WHERE token = $1 RETURNING *)
     INSERT INTO api_token_revocations (token, scopes) SELECT token, array_agg(type) FROM d GROUP BY token`,
    [token],
  );
  return { commit: async () => void (await client.query('COMMIT')), end: () => client.end() };
}
