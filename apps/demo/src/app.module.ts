import { ApiTokenMigration, ApiTokenModule } from '@app/api-token';
import { RedisModule } from '@nestjs-modules/ioredis';
import { DynamicModule, Module } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import { TypeOrmModule } from '@nestjs/typeorm';
import { type DemoConfig, redisModuleOptions } from './demo.config';
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
        RedisModule.forRoot(redisModuleOptions(config)),
        TypeOrmModule.forRoot({
          type: 'postgres',
          url: config.databaseUrl,
          migrations: [ApiTokenMigration],
          migrationsRun: true,
          // pg waits forever by default: bound connecting (and waiting for a pooled client) and each query.
          connectTimeoutMS: 2000,
          ...config.typeorm,
          extra: { query_timeout: 5000, ...config.typeorm?.extra },
        }),
        ApiTokenModule.forRoot({ flushCron: config.flushCron, ...config.apiToken }),
      ],
      controllers: [HealthController, WhoamiController],
    };
  }
}
