import { ApiTokenMigration, ApiTokenModule } from '@app/api-token';
import { RedisModule } from '@nestjs-modules/ioredis';
import { DynamicModule, Module } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import { TypeOrmModule } from '@nestjs/typeorm';
import type { DemoConfig } from './demo.config';
import { HealthController } from './health.controller';
import { WhoamiController } from './whoami.controller';

/** The demo application: the library wired the way a service would wire it. */
@Module({})
export class AppModule {
  static forRoot(config: DemoConfig): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ScheduleModule.forRoot(),
        RedisModule.forRoot({
          type: 'single',
          url: config.redisUrl,
          options: { maxRetriesPerRequest: 1, commandTimeout: 1000 },
        }),
        TypeOrmModule.forRoot({
          type: 'postgres',
          url: config.databaseUrl,
          migrations: [ApiTokenMigration],
          migrationsRun: true,
          ...config.typeorm,
        }),
        ApiTokenModule.forRoot({ ...config.apiToken }),
      ],
      controllers: [HealthController, WhoamiController],
    };
  }
}
