import { ApiTokenRepository, ApiTokenService, ApiTokenUsageFlushService } from '../libs/api-token/src';
import { ApiTokenStoreError } from '../libs/api-token/src/api-token.errors';
import type { INestApplication } from '@nestjs/common';
import { getDataSourceToken } from '@nestjs/typeorm';
import { inspect } from 'node:util';
import { Client } from 'pg';
import { type DataSource, EventSubscriber, type EntitySubscriberInterface, type BeforeQueryEvent, type AfterQueryEvent } from 'typeorm';
import { CapturingLogger, CapturingTypeOrmLogger } from './support/capturing-logger';
import { type Answer, get, listen } from './support/http-client';
import { suiteFixture } from './support/suite-fixture';

/** What TypeORM hands its subscribers around each query it runs (the parameters included). */
const seenBySubscribers: string[] = [];

@EventSubscriber()
class QuerySpy implements EntitySubscriberInterface {
  beforeQuery(event: BeforeQueryEvent): void {
    seenBySubscribers.push(`before ${event.query} ${inspect(event.parameters)}`);
  }
  afterQuery(event: AfterQueryEvent): void {
    seenBySubscribers.push(`after ${event.query} ${inspect(event.parameters)} ${inspect(event.error, { depth: 10, showHidden: true })}`);
  }
}

/**
 * TypeORM logs what runs through it, parameters included (`logging: 'all'`), hands the same to its
 * subscribers, and puts them in the `QueryFailedError` it throws. The library's statements carry
 * tokens as parameters: with TypeORM's logging all on, a capturing TypeORM logger, a query
 * subscriber, and statements that fail (a table locked past the statement timeout, a column renamed
 * away), no 8-character piece of any token may appear in what TypeORM logged or handed out, in
 * Nest's logs, in an answer, or in an error the library threw.
 */
describe('tokens never reach TypeORM: logging all on, statements failing', () => {
  const suite = suiteFixture();
  const typeormLogger = new CapturingTypeOrmLogger();
  const nestLogger = new CapturingLogger();
  const written: string[] = [];
  const made: string[] = [];
  let app: INestApplication;
  let port: number;
  let dataSource: DataSource;

  const collect = (answer: Answer) => {
    written.push(answer.body, JSON.stringify(answer.headers));
    return answer;
  };
  /** Awaits a call that must fail with an ApiTokenStoreError of this SQLSTATE; keeps every rendering of the error. */
  const failure = async (call: Promise<unknown>, code: string) => {
    const error = await call.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ApiTokenStoreError);
    expect((error as ApiTokenStoreError).code).toBe(code);
    written.push(String(error), (error as Error).stack ?? '', JSON.stringify(error), inspect(error, { depth: 10, showHidden: true }));
  };
  const create = async (scope: string) => {
    const created = await app.get(ApiTokenService).create({ scope });
    made.push(created.token);
    return created;
  };

  beforeAll(async () => {
    app = await suite.app({
      logger: nestLogger,
      apiToken: { localCacheMax: 0, flushCron: false },
      // statement_timeout: a statement that waits on a lock fails (57014) instead of hanging the test.
      typeorm: { logging: 'all', logger: typeormLogger, maxQueryExecutionTime: 1, subscribers: [QuerySpy], extra: { statement_timeout: 300 } },
    });
    port = await listen(app);
    dataSource = app.get<DataSource>(getDataSourceToken());
  });

  it('TypeORM logs a parameter, and hands it to subscribers, when a statement goes through it (the control)', async () => {
    const marker = 'control-parameter-4f7c1a';
    await dataSource.query('SELECT $1::text AS marker', [marker]);
    expect(typeormLogger.lines.some((line) => line.includes(marker))).toBe(true);
    expect(seenBySubscribers.some((line) => line.includes(marker))).toBe(true);
  });

  it('runs lookups, a list, a revocation and a flush, then the same with statements failing', async () => {
    const [a, b, c, d] = [await create('app'), await create('app'), await create('dataset'), await create('app')];
    const repository = app.get(ApiTokenRepository);
    const flush = app.get(ApiTokenUsageFlushService);

    expect(collect(await get(port, '/app/whoami', a.token)).status).toBe(200);
    expect(collect(await get(port, '/dataset/whoami', c.token)).status).toBe(200);
    expect((await repository.findByToken(b.token, 'app'))?.id).toBe(b.id);
    expect(await repository.list({ limit: 10 })).toHaveLength(4);
    await suite.redis.set(`api_token_active:app:${a.token}`, '2026-02-03T10:00:00', 'EX', 60);
    await suite.redis.set(`api_token_active:None:${c.token}`, '2026-02-03T10:00:00', 'EX', 60);
    expect(await flush.flushNow()).toMatchObject({ updated: 2 });
    await app.get(ApiTokenService).revoke(d.token);

    // The table locked by another session: every statement on it runs into the statement timeout.
    const locker = new Client({ connectionString: suite.db.url });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE');
      expect(collect(await get(port, '/app/whoami', b.token)).status).toBe(503);
      await failure(repository.findByToken(b.token, 'app'), '57014');
      await failure(app.get(ApiTokenService).revoke(b.token), '57014');
      await suite.redis.set(`api_token_active:app:${b.token}`, '2026-02-03T11:00:00', 'EX', 60);
      written.push(inspect(await flush.flushNow().catch((e: unknown) => e), { depth: 10, showHidden: true }));
      await locker.query('ROLLBACK');
    } finally {
      await locker.end();
    }

    // The token column renamed away: every statement naming it fails (42703, undefined_column).
    await dataSource.query('ALTER TABLE api_tokens RENAME COLUMN token TO token_renamed');
    try {
      const e = await create('app').catch((error: unknown) => error);
      written.push(String(e), inspect(e, { depth: 10, showHidden: true }));
      expect(collect(await get(port, '/app/whoami', b.token)).status).toBe(503);
      await failure(repository.findByToken(b.token, 'app'), '42703');
      await failure(app.get(ApiTokenService).revoke(b.token), '42703');
      await suite.redis.set(`api_token_active:app:${b.token}`, '2026-02-03T12:00:00', 'EX', 60);
      written.push(inspect(await flush.flushNow().catch((error: unknown) => error), { depth: 10, showHidden: true }));
    } finally {
      await dataSource.query('ALTER TABLE api_tokens RENAME COLUMN token_renamed TO token');
    }
    // The flush's failure was reported (so the scan below reads a real failure's lines).
    expect(nestLogger.matching(/Usage flush failed/).length).toBeGreaterThan(0);
  });

  it('finds no piece of any token in what TypeORM logged or handed out, in Nest logs, answers or errors', () => {
    const everything = [...typeormLogger.lines, ...seenBySubscribers, ...nestLogger.lines.map((l) => `${l.level} ${l.text}`), ...written].join('\n');
    expect(made.length).toBeGreaterThanOrEqual(4);
    expect(typeormLogger.lines.length).toBeGreaterThan(0);
    const leaks: string[] = [];
    for (const token of made) {
      for (let i = 0; i + 8 <= token.length; i++) {
        const piece = token.slice(i, i + 8);
        // `app-` and `dataset-` prefixes are not secret; every piece with a character of the secret is.
        if (i + 8 > token.indexOf('-') + 1 && everything.includes(piece)) leaks.push(piece);
      }
    }
    expect(leaks).toEqual([]);
  });
});
