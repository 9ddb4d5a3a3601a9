import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Creates `api_tokens` and its indexes when absent; a table Dify already made is left as it is.
 * Also creates the library's own `api_token_policies` (expiry and rate limit per token).
 * Add it to your DataSource's `migrations` (or run {@link ApiTokenMigration.prototype.up} yourself).
 */
export class ApiTokenMigration1764000000000 implements MigrationInterface {
  name = 'ApiTokenMigration1764000000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE IF NOT EXISTS api_tokens (
        id uuid NOT NULL DEFAULT gen_random_uuid(),
        app_id uuid,
        tenant_id uuid,
        type varchar(16) NOT NULL,
        token varchar(255) NOT NULL,
        last_used_at timestamp without time zone,
        created_at timestamp without time zone NOT NULL DEFAULT CURRENT_TIMESTAMP(0),
        CONSTRAINT api_token_pkey PRIMARY KEY (id)
      )`);
    await queryRunner.query('CREATE INDEX IF NOT EXISTS api_token_app_id_type_idx ON api_tokens (app_id, type)');
    await queryRunner.query('CREATE INDEX IF NOT EXISTS api_token_token_idx ON api_tokens (token, type)');
    await queryRunner.query('CREATE INDEX IF NOT EXISTS api_token_tenant_idx ON api_tokens (tenant_id, type)');
    // The library's own table, never Dify's: a token's expiry and rate limit. Its row goes with the
    // token's row (ON DELETE CASCADE), whoever deletes it, Dify included.
    await queryRunner.query(`
      CREATE TABLE IF NOT EXISTS api_token_policies (
        token_id uuid NOT NULL,
        expires_at timestamp without time zone,
        rate_limit integer,
        rate_window_seconds integer,
        CONSTRAINT api_token_policies_pkey PRIMARY KEY (token_id),
        CONSTRAINT api_token_policies_token_fkey FOREIGN KEY (token_id) REFERENCES api_tokens (id) ON DELETE CASCADE,
        CONSTRAINT api_token_policies_rate_limit_check CHECK (
          (rate_limit IS NULL AND rate_window_seconds IS NULL) OR (rate_limit > 0 AND rate_window_seconds > 0)
        )
      )`);
    await queryRunner.query(
      'CREATE INDEX IF NOT EXISTS api_token_policies_expires_idx ON api_token_policies (expires_at) WHERE expires_at IS NOT NULL',
    );
  }

  /** Does nothing: the table may be Dify's, and dropping it would take its tokens. */
  async down(): Promise<void> {}
}

/** The library's migration, under a stable name. */
export const ApiTokenMigration = ApiTokenMigration1764000000000;
