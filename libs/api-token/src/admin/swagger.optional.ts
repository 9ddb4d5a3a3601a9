import type * as Swagger from '@nestjs/swagger';
import { errorCode } from '../api-token.errors';

/** The decorators of `@nestjs/swagger` the admin controllers use. */
type SwaggerDecorators = Pick<
  typeof Swagger,
  | 'ApiBadRequestResponse'
  | 'ApiBearerAuth'
  | 'ApiBody'
  | 'ApiCreatedResponse'
  | 'ApiExtraModels'
  | 'ApiForbiddenResponse'
  | 'ApiNotFoundResponse'
  | 'ApiOkResponse'
  | 'ApiOperation'
  | 'ApiParam'
  | 'ApiProperty'
  | 'ApiPropertyOptional'
  | 'ApiQuery'
  | 'ApiTags'
  | 'ApiUnauthorizedResponse'
>;

/** A decorator factory that decorates nothing: what every one above is when `@nestjs/swagger` is absent. */
const nothing = () => () => undefined;

/**
 * `@nestjs/swagger` is an optional peer dependency: the admin API works without it, and only an
 * application that serves an OpenAPI document installs it. Required when the admin entry point loads,
 * never by the main one.
 * @internal
 */
export const swagger: SwaggerDecorators = loadSwagger();

function loadSwagger(): SwaggerDecorators {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('@nestjs/swagger') as typeof Swagger;
  } catch (error) {
    // Only the package itself missing; a broken install of it (one of its own dependencies missing) is reported.
    if (errorCode(error) !== 'MODULE_NOT_FOUND' || !String((error as Error).message).includes("'@nestjs/swagger'")) throw error;
    return new Proxy({} as SwaggerDecorators, { get: () => nothing });
  }
}
