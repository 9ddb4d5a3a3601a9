import { type ConfigurableModuleAsyncOptions, ConfigurableModuleBuilder } from '@nestjs/common';
import { getRedisConnectionToken } from '@nestjs-modules/ioredis';
import { getDataSourceToken } from '@nestjs/typeorm';
import { API_TOKEN_DATA_SOURCE, API_TOKEN_REDIS } from './api-token.constants';
import type { ApiTokenModuleOptions } from './api-token.options';

/** Set once per registration, outside the (possibly async) options: they decide which providers are injected. */
export interface ApiTokenModuleExtras {
  /** Register the module globally, so `ApiTokenGuard` works in every module. Default true. */
  isGlobal?: boolean;
  /** Name of the `@nestjs-modules/ioredis` connection to use. Default: the default connection. */
  redisConnection?: string;
  /** Name of the `@nestjs/typeorm` data source to use. Default: the default data source. */
  dataSource?: string;
}

/** The base class of `ApiTokenModule` (`forRoot`, `forRootAsync`), as Nest's `ConfigurableModuleBuilder` makes it. */
export const {
  /** The base class of `ApiTokenModule` (`forRoot`, `forRootAsync`); exported so the module's type can be named. */
  ConfigurableModuleClass,
  MODULE_OPTIONS_TOKEN,
  OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<ApiTokenModuleOptions>({ moduleName: 'ApiToken' })
  .setClassMethodName('forRoot')
  .setExtras<ApiTokenModuleExtras>({ isGlobal: true }, (definition, extras) => ({
    ...definition,
    global: extras.isGlobal ?? true,
    providers: [
      ...(definition.providers ?? []),
      { provide: API_TOKEN_REDIS, useExisting: getRedisConnectionToken(extras.redisConnection) },
      { provide: API_TOKEN_DATA_SOURCE, useExisting: getDataSourceToken(extras.dataSource) },
    ],
  }))
  .build();

/** What `ApiTokenModule.forRoot(options)` takes: the module's options and {@link ApiTokenModuleExtras}. */
export type ApiTokenModuleForRootOptions = ApiTokenModuleOptions & ApiTokenModuleExtras;
/** What `ApiTokenModule.forRootAsync(options)` takes: `useFactory`/`useClass`/`useExisting`, `imports`, `inject`, and the extras. */
export interface ApiTokenModuleAsyncOptions extends ConfigurableModuleAsyncOptions<ApiTokenModuleOptions, 'create'>, ApiTokenModuleExtras {}
