import { ApiTokenScopeSweep } from '../libs/api-token/src/cache/scope.sweep';
import { ApiTokenService } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { ApiTokenUsageRecorder } from '../libs/api-token/src/usage/usage.recorder';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { hashToken } from '../libs/api-token/src/tokens/token.hash';
import type { INestApplication } from '@nestjs/common';
import Redis from 'ioredis';
import { get, listen } from './support/http-client';
import { PrivateRedisServer } from './support/redis-server';
import { QueryCounter } from './support/query-counter';
import { createTestApp } from './support/test-app';
import { suiteFixture } from './support/suite-fixture';

const TENANT = '6f1c2f5e-1111-4a2b-8c3d-000000000001';

/** `hashTokens: true` end to end: the table and Redis hold SHA-256 hex, never a token or a piece of one. */
describe('hashed mode', () => {
  const suite = suiteFixture({ redis: false });
  let server: PrivateRedisServer;
  let app: INestApplication;
  let port: number;
  let redis: Redis;
  const tokens: string[] = [];

  beforeAll(async () => {
    server = await PrivateRedisServer.start();
    suite.cleanup(() => server.kill());
    redis = new Redis(server.url());
    suite.cleanup(() => redis.disconnect());
    // Unknown tokens take the usual path here (negatives in Redis under the hash); the filter has its own suite.
    app = await suite.app({ redisUrl: server.url(), apiToken: { hashTokens: true, membershipFilterRebuildMs: 0 } });
    port = await listen(app);
    for (let i = 0; i < 3; i++) tokens.push((await app.get(ApiTokenService).create({ scope: 'app', tenantId: TENANT })).token);
  });

  const allKeys = async () => {
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, page] = await redis.scan(cursor, 'COUNT', 1000);
      cursor = next;
      keys.push(...page);
    } while (cursor !== '0');
    return keys;
  };
  const pieces = (token: string) => {
    const secret = token.slice(token.indexOf('-') + 1);
    return Array.from({ length: secret.length - 7 }, (_, i) => secret.slice(i, i + 8));
  };

  it('authenticates by the token while the table holds only its SHA-256', async () => {
    for (const token of tokens) expect((await get(port, '/app/whoami', token)).status).toBe(200);
    expect((await get(port, '/app/whoami', generateApiToken('app'))).status).toBe(401);
    const rows = await suite.db.query('SELECT token FROM api_tokens ORDER BY token');
    expect(rows.map((r) => r.token)).toEqual(tokens.map(hashToken).sort());
  });

  it('keeps hits, negatives, the tenant index and usage in Redis under the hash', async () => {
    const unknown = generateApiToken('app');
    expect((await get(port, '/app/whoami', unknown)).status).toBe(401);
    await app.get(ApiTokenUsageRecorder).flushPending();
    const hash = hashToken(tokens[0]);
    expect(await redis.exists(`api_token:app:${hash}`)).toBe(1);
    expect(await redis.exists(`api_token_active:app:${hash}`)).toBe(1);
    expect(await redis.get(`api_token:app:${hashToken(unknown)}`)).toBe('null');
    expect(await redis.sismember(`tenant_tokens:${TENANT}`, `api_token:app:${hash}`)).toBe(1);
    expect(JSON.parse((await redis.get(`api_token:app:${hash}`)) as string).token).toBe(hash);

    const stored = [...(await allKeys())];
    for (const key of stored) if ((await redis.type(key)) === 'string') stored.push((await redis.get(key)) as string);
    for (const key of [`tenant_tokens:${TENANT}`]) stored.push(...(await redis.smembers(key)));
    const text = stored.join('\n');
    const leaks = [...tokens, unknown].flatMap(pieces).filter((piece) => text.includes(piece));
    expect(leaks).toEqual([]);
  });

  it('does not accept a row holding the token itself (not Dify-compatible)', async () => {
    const plain = (await app.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' })).token;
    expect((await get(port, '/app/whoami', plain)).status).toBe(401);
  });

  it('stores sha256: and hex, which an instance in plain mode on the same stores refuses with no I/O', async () => {
    const stored = hashToken(tokens[0]);
    expect(stored).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(await suite.db.query('SELECT count(*)::int AS n FROM api_tokens WHERE token = $1', [stored])).toEqual([{ n: 1 }]);
    const counter = new QueryCounter();
    const plain = await createTestApp({ databaseUrl: suite.db.url, redisUrl: server.url(), counter });
    try {
      const plainPort = await listen(plain);
      expect((await get(plainPort, '/app/whoami', stored)).status).toBe(401);
      expect(counter.count()).toBe(0);
    } finally {
      await plain.close();
    }
  });

  it('revokes by the token', async () => {
    await app.get(ApiTokenService).revoke(tokens[1]);
    // The every-scope sweep revoke() starts in the background deletes every entry of the token, the
    // negative the next request writes included if it walks after it: let it finish first.
    await app.get(ApiTokenScopeSweep).drain();
    expect((await get(port, '/app/whoami', tokens[1])).status).toBe(401);
    expect(await redis.get(`api_token:app:${hashToken(tokens[1])}`)).toBe('null');
    // The revocation log holds the hash too, never the token.
    expect(await suite.db.query('SELECT token FROM api_token_revocations')).toEqual([{ token: hashToken(tokens[1]) }]);
  });
});
