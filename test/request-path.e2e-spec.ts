import { ApiTokenRepository, generateApiToken } from '@app/api-token';
import type { INestApplication } from '@nestjs/common';
import type Redis from 'ioredis';
import request from 'supertest';
import { createTestDatabase, type TestDatabase } from './support/database';
import { QueryCounter } from './support/query-counter';
import { clearLibraryKeys, testRedis } from './support/redis';
import { createTestApp } from './support/test-app';

describe('request path (Express)', () => {
  let db: TestDatabase;
  let app: INestApplication;
  let redis: Redis;
  const counter = new QueryCounter();

  beforeAll(async () => {
    db = await createTestDatabase();
    redis = testRedis();
    await clearLibraryKeys(redis);
    app = await createTestApp({ databaseUrl: db.url, counter });
  });

  afterAll(async () => {
    await app?.close();
    await clearLibraryKeys(redis);
    redis.disconnect();
    await db?.drop();
  });

  it('answers 200 with the demo JSON for a valid token of the right scope', async () => {
    const record = await app.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
    const res = await request(app.getHttpServer()).get('/app/whoami').set('Authorization', `Bearer ${record.token}`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ id: record.id, appId: null, tenantId: null, type: 'app' });
    expect(counter.count()).toBe(1);
  });
});
