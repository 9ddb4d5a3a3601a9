import { ApiTokenRepository, ApiTokenService } from 'nestjs-api-token';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module';
import { loadDemoConfig } from './demo.settings';

/** The app id the demo's own token belongs to. */
export const DEMO_APP_ID = '00000000-0000-4000-8000-00000000de70';

async function bootstrap(): Promise<void> {
  const config = loadDemoConfig();
  const app = await NestFactory.create(AppModule.forRoot(config));
  app.enableShutdownHooks();
  await app.listen(config.port);
  const repository = app.get(ApiTokenRepository);
  const [existing] = await repository.list({ appId: DEMO_APP_ID, type: 'app' });
  const token = existing?.token ?? (await app.get(ApiTokenService).create({ scope: 'app', appId: DEMO_APP_ID })).token;
  process.stdout.write(
    `\nDemo listening on port ${config.port}, with ${existing ? 'its' : 'a newly created'} demo token; try:\n\n` +
      `  curl -H 'Authorization: Bearer ${token}' http://localhost:${config.port}/app/whoami\n\n`,
  );
}

bootstrap().catch((error: unknown) => {
  process.stderr.write(`Demo failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
