import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The library's own table, `api_token_revocations`: the durable revocation log every instance polls
 * (see `ApiTokenRevocationLogService`). Dify never reads it. Idempotent, so both migrations below
 * may run it.
 */
async function createRevocationLog(queryRunner: QueryRunner): Promise<void> {
  await queryRunner.query(`
    CREATE TABLE IF NOT EXISTS api_token_revocations (
      id bigserial NOT NULL,
      token varchar(255) NOT NULL,
      scopes varchar(16)[] NOT NULL,
      revoked_at timestamp without time zone NOT NULL DEFAULT (clock_timestamp() AT TIME ZONE 'UTC'),
      CONSTRAINT api_token_revocations_pkey PRIMARY KEY (id)
    )`);
  await queryRunner.query('CREATE INDEX IF NOT EXISTS api_token_revocations_revoked_at_idx ON api_token_revocations (revoked_at)');
}

/**
 * The library's own table, `api_token_policy_changes`: the log of changes that narrow what a kept token
 * may do (a new expiry, as at the end of a rotation's grace; a new rate limit), with the new policy,
 * polled with the revocation log so that an instance that missed the pub/sub message still stops
 * trusting the token's older cache entries. Separate from the revocation log: a 0.2 instance reads
 * every row of that log as a revocation. Idempotent.
 */
async function createPolicyChanges(queryRunner: QueryRunner): Promise<void> {
  await queryRunner.query(`
    CREATE TABLE IF NOT EXISTS api_token_policy_changes (
      id bigserial NOT NULL,
      token varchar(255) NOT NULL,
      scopes varchar(16)[] NOT NULL,
      expires_at timestamp without time zone,
      rate_limit integer,
      rate_window_seconds integer,
      changed_at timestamp without time zone NOT NULL DEFAULT (clock_timestamp() AT TIME ZONE 'UTC'),
      CONSTRAINT api_token_policy_changes_pkey PRIMARY KEY (id)
    )`);
  await queryRunner.query('CREATE INDEX IF NOT EXISTS api_token_policy_changes_changed_at_idx ON api_token_policy_changes (changed_at)');
}

/**
 * The library's own table `api_token_policies`, never Dify's: a token's expiry and rate limit. Its
 * row goes with the token's row (ON DELETE CASCADE), whoever deletes it, Dify included. Idempotent.
 */
async function createPolicies(queryRunner: QueryRunner): Promise<void> {
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

/**
 * Creates `api_tokens` and its indexes when absent (a table Dify already made is left as it is), and
 * the library's own tables: the revocation log, and `api_token_policies` (expiry and rate limit per token). Add it to your DataSource's `migrations` (or run
 * {@link ApiTokenMigration.prototype.up} yourself); see {@link API_TOKEN_MIGRATIONS}.
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
    await createPolicies(queryRunner);
    await createRevocationLog(queryRunner);
    await createPolicyChanges(queryRunner);
  }

  /** Does nothing: the table may be Dify's, and dropping it would take its tokens. */
  async down(): Promise<void> {}
}

/** The library's migration, under a stable name. */
export const ApiTokenMigration = ApiTokenMigration1764000000000;

/**
 * Creates the library's own tables (`api_token_policies`, the revocation log) for a database whose
 * migrations table already records {@link ApiTokenMigration} from 0.1, which had neither (TypeORM
 * never runs a recorded migration again). Does nothing where they exist.
 */
export class ApiTokenOwnTablesMigration1764100000000 implements MigrationInterface {
  name = 'ApiTokenOwnTablesMigration1764100000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await createPolicies(queryRunner);
    await createRevocationLog(queryRunner);
  }

  /**
   * Drops the revocation log (entries older than the cache's life are pruned anyway) and, only while it
   * holds no row, `api_token_policies`: a table of expiries and rate limits is data, and a revert must
   * not delete every token's policy. With rows it fails, saying how to drop the table on purpose.
   */
  async down(queryRunner: QueryRunner): Promise<void> {
    const [{ count }] = (await queryRunner.query('SELECT count(*)::int AS count FROM api_token_policies')) as { count: number }[];
    if (count > 0) {
      throw new Error(
        `ApiTokenOwnTablesMigration1764100000000.down: api_token_policies holds ${count} token polic${count === 1 ? 'y' : 'ies'} (expiries, rate limits) that a revert would delete; ` +
          'nothing was dropped. Drop the table yourself (DROP TABLE api_token_policies) if that is what you want, then revert again.',
      );
    }
    await queryRunner.query('DROP TABLE IF EXISTS api_token_revocations');
    await queryRunner.query('DROP TABLE IF EXISTS api_token_policies');
  }
}

/**
 * Creates the policy-change log (see `createPolicyChanges`) for a database migrated by 0.2. Its
 * revert drops that log alone: its rows only matter for the few minutes a cache entry lives.
 */
export class ApiTokenPolicyChangesMigration1764200000000 implements MigrationInterface {
  name = 'ApiTokenPolicyChangesMigration1764200000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await createPolicyChanges(queryRunner);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('DROP TABLE IF EXISTS api_token_policy_changes');
  }
}

/** Every migration of the library, in order: the value for a DataSource's `migrations`. */
export const API_TOKEN_MIGRATIONS = [ApiTokenMigration1764000000000, ApiTokenOwnTablesMigration1764100000000, ApiTokenPolicyChangesMigration1764200000000];
