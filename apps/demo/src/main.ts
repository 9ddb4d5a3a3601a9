import { ApiTokenService } from 'nestjs-api-token';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module';
import { loadDemoConfig } from './demo.config';
import { demoTokenNotice } from './demo.token';

async function bootstrap(): Promise<void> {
  const config = loadDemoConfig();
  const app = await NestFactory.create(AppModule.forRoot(config));
  app.enableShutdownHooks();
  await app.listen(config.port);
  process.stdout.write(await demoTokenNotice(app.get(ApiTokenService), config.port));
}

bootstrap().catch((error: unknown) => {
  process.stderr.write(`Demo failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
