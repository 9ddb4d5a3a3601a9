import { ApiTokenGuard, ApiTokenModule, type ApiTokenModuleOptions } from '../../libs/api-token/src';
import { ApiTokenAdminModule, type ApiTokenAdminOptions } from '../../libs/api-token/src/admin';
import type { ApiTokenStoresEnv } from '../../libs/api-token/src/env/stores.env';
import { type ApiTokenStoresOptions, storeModules } from '../../libs/api-token/src/env/stores.modules';
import { type DynamicModule, Module } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import { TerminusModule } from '@nestjs/terminus';
import { HealthController } from '../../apps/demo/src/health.controller';
import { MetricsController } from '../../apps/demo/src/metrics.controller';
import { WhoamiController } from '../../apps/demo/src/whoami.controller';
import { GuardExtrasController } from './guard-extras.controller';

/** What a suite or a benchmark chooses: where the stores are, the library's options, extra TypeORM options. */
export interface TestAppConfig {
  stores: ApiTokenStoresEnv;
  apiToken?: ApiTokenModuleOptions;
  /** Extra TypeORM options (a counting pg client in `extra.Client`, the pool size). */
  typeorm?: ApiTokenStoresOptions['typeorm'];
  /** The admin API's options; default: the demo's (under `/admin`, behind `ApiTokenGuard('admin')`). */
  admin?: Partial<ApiTokenAdminOptions>;
}

/**
 * The application the end-to-end suites and the benchmarks run (as @nestjs/throttler's test/app):
 * the library wired like the demo, with options of the test's choosing, so the demo's own
 * configuration carries nothing for tests. It serves the demo's controllers, whose routes
 * (`/app/whoami`, `/dataset/whoami`, `/health`, `/metrics`, and the admin API under `/admin`) are the contract the suites check.
 */
@Module({})
export class TestAppModule {
  static forRoot(config: TestAppConfig): DynamicModule {
    return {
      module: TestAppModule,
      imports: [
        ScheduleModule.forRoot(),
        ...storeModules(config.stores, { typeorm: config.typeorm }),
        ApiTokenModule.forRoot(config.apiToken ?? {}),
        ApiTokenAdminModule.register({ path: 'admin', guards: [ApiTokenGuard('admin')], ...config.admin }),
        TerminusModule,
      ],
      controllers: [HealthController, MetricsController, WhoamiController, GuardExtrasController],
    };
  }
}
