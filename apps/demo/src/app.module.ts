import { ApiTokenGuard, ApiTokenModule } from 'nestjs-api-token';
import { ApiTokenAdminModule } from 'nestjs-api-token/admin';
import { apiTokenStoresFromEnv } from 'nestjs-api-token/env';
import { DynamicModule, Module } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import { TerminusModule } from '@nestjs/terminus';
import type { DemoConfig } from './demo.settings';
import { HealthController } from './health.controller';
import { MetricsController } from './metrics.controller';
import { WhoamiController } from './whoami.controller';

/** The demo application: the library wired the way a service would wire it. */
@Module({})
export class AppModule {
  static forRoot(config: DemoConfig): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ScheduleModule.forRoot(),
        // The stores where the token command line (the package's bin) finds them: one reading of the env for both.
        ...apiTokenStoresFromEnv(),
        ApiTokenModule.forRoot({ flushCron: config.flushCron, errorFormat: config.errorFormat }),
        // The admin HTTP API under /admin, for tokens of scope admin (made with `token -- create --scope admin`).
        ApiTokenAdminModule.register({ path: 'admin', guards: [ApiTokenGuard('admin')] }),
        TerminusModule,
      ],
      controllers: [HealthController, MetricsController, WhoamiController],
    };
  }
}
