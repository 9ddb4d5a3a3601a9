import { Column, Entity, Index, PrimaryColumn } from 'typeorm';

/**
 * The `api_tokens` table, column for column as Dify defines it. The library reads and writes it
 * with SQL of its own ({@link ApiTokenRepository}) that keeps timestamps as naive UTC text;
 * register the entity only if your own code wants to query the table through TypeORM, and
 * mind that node-postgres reads `timestamp without time zone` in the process's local time.
 */
@Entity({ name: 'api_tokens' })
@Index('api_token_app_id_type_idx', ['appId', 'type'])
@Index('api_token_token_idx', ['token', 'type'])
@Index('api_token_tenant_idx', ['tenantId', 'type'])
export class ApiTokenEntity {
  @PrimaryColumn({ type: 'uuid', primaryKeyConstraintName: 'api_token_pkey', default: () => 'gen_random_uuid()' })
  id!: string;

  @Column({ name: 'app_id', type: 'uuid', nullable: true })
  appId!: string | null;

  @Column({ name: 'tenant_id', type: 'uuid', nullable: true })
  tenantId!: string | null;

  @Column({ type: 'varchar', length: 16 })
  type!: string;

  @Column({ type: 'varchar', length: 255 })
  token!: string;

  @Column({ name: 'last_used_at', type: 'timestamp without time zone', nullable: true })
  lastUsedAt!: Date | null;

  @Column({ name: 'created_at', type: 'timestamp without time zone', default: () => 'CURRENT_TIMESTAMP(0)' })
  createdAt!: Date;
}
