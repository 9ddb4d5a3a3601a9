import { ApiTokenService } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { DataSource } from 'typeorm';
import type { INestApplication } from '@nestjs/common';
import { createTestDatabase, type TestDatabase } from './support/database';
import { createTestApp } from './support/test-app';

const COLUMNS = `SELECT column_name, data_type, character_maximum_length, is_nullable, column_default
                   FROM information_schema.columns WHERE table_name = 'api_tokens' ORDER BY ordinal_position`;
const INDEXES = `SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'api_tokens' ORDER BY indexname`;

describe('migration', () => {
  let db: TestDatabase;
  let app: INestApplication | undefined;

  afterEach(async () => {
    await app?.close();
    app = undefined;
    await db?.drop();
  });

  it("creates Dify's table: columns, types, nullability, defaults and index names", async () => {
    db = await createTestDatabase();
    app = await createTestApp({ databaseUrl: db.url });
    expect(await db.query(COLUMNS)).toEqual([
      { column_name: 'id', data_type: 'uuid', character_maximum_length: null, is_nullable: 'NO', column_default: 'gen_random_uuid()' },
      { column_name: 'app_id', data_type: 'uuid', character_maximum_length: null, is_nullable: 'YES', column_default: null },
      { column_name: 'tenant_id', data_type: 'uuid', character_maximum_length: null, is_nullable: 'YES', column_default: null },
      { column_name: 'type', data_type: 'character varying', character_maximum_length: 16, is_nullable: 'NO', column_default: null },
      { column_name: 'token', data_type: 'character varying', character_maximum_length: 255, is_nullable: 'NO', column_default: null },
      { column_name: 'last_used_at', data_type: 'timestamp without time zone', character_maximum_length: null, is_nullable: 'YES', column_default: null },
      { column_name: 'created_at', data_type: 'timestamp without time zone', character_maximum_length: null, is_nullable: 'NO', column_default: 'CURRENT_TIMESTAMP(0)' },
    ]);
    expect(await db.query(INDEXES)).toEqual([
      { indexname: 'api_token_app_id_type_idx', indexdef: expect.stringContaining('(app_id, type)') },
      { indexname: 'api_token_pkey', indexdef: expect.stringContaining('(id)') },
      { indexname: 'api_token_tenant_idx', indexdef: expect.stringContaining('(tenant_id, type)') },
      { indexname: 'api_token_token_idx', indexdef: expect.stringContaining('(token, type)') },
    ]);
  });

  it('adds the library tables (policies, revocation log) to a database whose migrations table already records the first migration', async () => {
    db = await createTestDatabase();
    app = await createTestApp({ databaseUrl: db.url });
    await app.close();
    app = undefined;
    // As a database migrated by 0.1 (neither table) looks.
    await db.query('DROP TABLE api_token_revocations');
    await db.query('DROP TABLE api_token_policies');
    await db.query("DELETE FROM migrations WHERE name = 'ApiTokenOwnTablesMigration1764100000000'");
    app = await createTestApp({ databaseUrl: db.url });
    const columns = await db.query(
      `SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'api_token_revocations' ORDER BY ordinal_position`,
    );
    expect(columns).toEqual([
      { column_name: 'id', data_type: 'bigint' },
      { column_name: 'token', data_type: 'character varying' },
      { column_name: 'scopes', data_type: 'ARRAY' },
      { column_name: 'revoked_at', data_type: 'timestamp without time zone' },
    ]);
    expect(await db.query(`SELECT indexname FROM pg_indexes WHERE tablename = 'api_token_revocations' ORDER BY indexname`)).toEqual([
      { indexname: 'api_token_revocations_pkey' },
      { indexname: 'api_token_revocations_revoked_at_idx' },
    ]);
    expect(
      await db.query(`SELECT column_name FROM information_schema.columns WHERE table_name = 'api_token_policies' ORDER BY ordinal_position`),
    ).toEqual([{ column_name: 'token_id' }, { column_name: 'expires_at' }, { column_name: 'rate_limit' }, { column_name: 'rate_window_seconds' }]);
  });

  it("a revert never deletes the tokens' policies: the 0.2 migration's down() refuses while api_token_policies has rows", async () => {
    db = await createTestDatabase();
    app = await createTestApp({ databaseUrl: db.url });
    await app.get(ApiTokenService).create({ scope: 'app', expiresInSeconds: 3600 });
    const dataSource = app.get(DataSource);
    await dataSource.undoLastMigration(); // the policy-change log: a log, dropped
    await expect(dataSource.undoLastMigration()).rejects.toThrow(/api_token_policies holds 1 token policy .* nothing was dropped/);
    expect(await db.query('SELECT count(*)::int AS n FROM api_token_policies')).toEqual([{ n: 1 }]);
    expect(await db.query("SELECT to_regclass('api_token_policy_changes') IS NULL AS gone")).toEqual([{ gone: true }]);
  });

  it('leaves a table Dify already made as it is, rows and extra columns included', async () => {
    db = await createTestDatabase();
    await db.query(`CREATE TABLE api_tokens (
      id uuid NOT NULL DEFAULT gen_random_uuid(), app_id uuid, tenant_id uuid, type varchar(16) NOT NULL,
      token varchar(255) NOT NULL, last_used_at timestamp, created_at timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP(0),
      dify_only text DEFAULT 'kept', CONSTRAINT api_token_pkey PRIMARY KEY (id))`);
    await db.query(`INSERT INTO api_tokens (type, token, created_at) VALUES ('app', 'app-DifyMadeThisToken0123', '2026-01-01 00:00:00')`);
    app = await createTestApp({ databaseUrl: db.url });
    const rows = await db.query('SELECT token, dify_only FROM api_tokens');
    expect(rows).toEqual([{ token: 'app-DifyMadeThisToken0123', dify_only: 'kept' }]);
    const record = await app.get(ApiTokenRepository).findByToken('app-DifyMadeThisToken0123', 'app');
    expect(record?.createdAt).toBe('2026-01-01T00:00:00');
  });
});
