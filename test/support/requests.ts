import type { INestApplication } from '@nestjs/common';
import request from 'supertest';

/**
 * `GET /{scope}/whoami` on the app with `token` as the bearer: the guarded route of the test app,
 * the request most tests make to see whether a token is let in.
 */
export const whoami = (app: INestApplication, token: string, scope = 'app') =>
  request(app.getHttpServer()).get(`/${scope}/whoami`).set('Authorization', `Bearer ${token}`);
