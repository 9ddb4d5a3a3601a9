import { Column, Entity, Index, PrimaryColumn } from 'typeorm';

/**
 * The `api_tokens` table, column for column as Dify defines it. The library reads and writes it
 * with SQL of its own (the library's repository) that keeps timestamps as naive UTC text;
 * register the entity only if your own code wants to query the table through TypeORM, and
 * mind that node-postgres reads `timestamp without time zone` in the process's local time.
 */
@Entity({ name: 'api_tokens' })
@Index('api_token_app_id_type_idx', ['appId', 'scope'])
@Index('api_token_token_idx', ['token', 'scope'])
@Index('api_token_tenant_idx', ['tenantId', 'scope'])
export class ApiTokenEntity {
  /** uuid, primary key `api_token_pkey`. */
  @PrimaryColumn({ type: 'uuid', primaryKeyConstraintName: 'api_token_pkey', default: () => 'gen_random_uuid()' })
  id!: string;

  /** `app_id`: the app the token belongs to. */
  @Column({ name: 'app_id', type: 'uuid', nullable: true })
  appId!: string | null;

  /** `tenant_id`: the tenant the token belongs to. */
  @Column({ name: 'tenant_id', type: 'uuid', nullable: true })
  tenantId!: string | null;

  /** The scope (the `type` column): `app`, `dataset`, or another (at most 16 characters). */
  @Column({ name: 'type', type: 'varchar', length: 16 })
  scope!: string;

  /** The token, or `sha256:` and its hash in hashed mode. */
  @Column({ type: 'varchar', length: 255 })
  token!: string;

  /** `last_used_at`, naive UTC, written by the usage flush. */
  @Column({ name: 'last_used_at', type: 'timestamp without time zone', nullable: true })
  lastUsedAt!: Date | null;

  /** `created_at`, naive UTC. */
  @Column({ name: 'created_at', type: 'timestamp without time zone', default: () => 'CURRENT_TIMESTAMP(0)' })
  createdAt!: Date;
}
