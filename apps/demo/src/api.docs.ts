import type { INestApplication } from '@nestjs/common';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';

/** Where the demo serves Swagger UI; the OpenAPI document is at `${DOCS_PATH}-json`. */
export const DOCS_PATH = 'docs';

/**
 * Serves the OpenAPI document of the demo's routes (the admin API's included) and Swagger UI at
 * `/docs`. Call it before `listen()` / `init()`: routes added later come after the 404 handler.
 */
export function serveApiDocs(app: INestApplication): void {
  const config = new DocumentBuilder()
    .setTitle('nestjs-api-token demo')
    .setDescription('The demo\'s routes and the admin API (`nestjs-api-token/admin`), behind a token of scope `admin`.')
    .addBearerAuth({ type: 'http', scheme: 'bearer', description: 'An admin token: npm run --silent token -- create --scope admin' })
    .build();
  SwaggerModule.setup(DOCS_PATH, app, () => SwaggerModule.createDocument(app, config));
}
