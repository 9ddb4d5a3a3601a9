import { ApiTokenMigration, ApiTokenModule, ApiTokenStoreError, ApiTokenUsageFlushService, type UsageFlushStats } from '../libs/api-token/src';
import { ApiTokenRepository } from '../libs/api-token/src/store/api-token.repository';
import { ApiTokenUsageRecorder } from '../libs/api-token/src/usage/usage.recorder';
import { FLUSH_JOB_NAME, FLUSH_LOCK_KEY } from '../libs/api-token/src/usage/usage-flush.service';
import { generateApiToken } from '../libs/api-token/src/tokens/token.generator';
import { RedisModule } from '@nestjs-modules/ioredis';
import { type Cluster, Pipeline } from 'ioredis';
import type { INestApplication } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';
import { Redlock } from '@sesamecare-oss/redlock';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from 'pg';
import request from 'supertest';
import { CapturingLogger } from './support/capturing-logger';
import { QueryCounter } from './support/query-counter';
import { clearLibraryKeys, commandCalls } from './support/redis';
import { REDIS_CLUSTER_NODES, REDIS_TEST_DB, REDIS_TEST_URL } from './support/servers';
import { redisModuleOptions } from '../libs/api-token/src/env/stores.modules';
import { createTestApp } from './support/test-app';
import { until } from './support/until';
import { ACTIVE_INDEX_KEY, INDEXES_CHECKED_KEY, LISTED_INDEXES_KEY, activeIndexKey, indexesToDrain, writeUses } from '../libs/api-token/src/usage/usage.index';
import calculateSlot from 'cluster-key-slot';
import { gate } from './support/gate';
import { setIfNewer } from '../libs/api-token/src/redis/redis.commands';
import { suiteFixture } from './support/suite-fixture';

jest.setTimeout(60_000);

const NAIVE_MS = (ms: number) => new Date(ms).toISOString().slice(0, 23) + '000';
const LAST_USED = `to_char(last_used_at, 'YYYY-MM-DD"T"HH24:MI:SS.US') AS last_used_at`;
const UPDATES = /^\s*UPDATE api_tokens/;

describe('usage flush', () => {
  const suite = suiteFixture();
  const logger = new CapturingLogger();

  const lastUsed = async (token: string): Promise<string | null> =>
    ((await suite.db.query(`SELECT ${LAST_USED} FROM api_tokens WHERE token = $1`, [token]))[0]?.last_used_at as string | null) ?? null;
  const activeKeys = async (): Promise<string[]> => {
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, page] = await suite.redis.scan(cursor, 'MATCH', 'api_token_active:*', 'COUNT', 1000);
      cursor = next;
      keys.push(...page);
    } while (cursor !== '0');
    return keys;
  };

  beforeEach(async () => {
    await clearLibraryKeys(suite.redis);
    logger.lines.length = 0;
  });

  describe('on demand', () => {
    let app: INestApplication;
    let flush: ApiTokenUsageFlushService;
    let repository: ApiTokenRepository;
    const counter = new QueryCounter();
    const newToken = async (scope = 'app') => (await repository.insert({ token: generateApiToken(scope), type: scope })).token;

    beforeAll(async () => {
      app = await createTestApp({ databaseUrl: suite.db.url, counter, logger, apiToken: { flushCron: false, usageWriteIntervalMs: 60_000 } });
      flush = app.get(ApiTokenUsageFlushService);
      repository = app.get(ApiTokenRepository);
    });

    afterAll(() => app?.close());

    it('writes this process\'s pending uses before it flushes', async () => {
      const token = await newToken();
      const whoami = () => request(app.getHttpServer()).get('/app/whoami').set('Authorization', `Bearer ${token}`);
      expect((await whoami()).status).toBe(200);
      await sleep(5); // distinct milliseconds: the first use's time, left by a lost pending use, shows
      const before = Date.now();
      expect((await whoami()).status).toBe(200); // coalesced: pending in the process, not in Redis yet
      const after = Date.now();
      const stats = await flush.flushNow();
      expect(stats).toMatchObject({ scanned: 1, taken: 1, updated: 1, dropped: 0 });
      const written = Date.parse(`${await lastUsed(token)}Z`);
      // A pending use is dated by the monotonic clock plus the wall clock's lead in whole milliseconds: up to 1 ms early.
      expect(written).toBeGreaterThanOrEqual(before - 1);
      expect(written).toBeLessThanOrEqual(after);
      expect(await activeKeys()).toEqual([]);
    });

    it('flushes 20,000 keys completely, one UPDATE per page of 1,000', async () => {
      const n = 20_000;
      const base = Date.parse('2026-03-01T00:00:00Z');
      await suite.db.query(
        `INSERT INTO api_tokens (type, token) SELECT 'app', 'app-bulk' || lpad(i::text, 20, '0') FROM generate_series(1, ${n}) AS i`,
      );
      const token = (i: number) => `app-bulk${String(i).padStart(20, '0')}`;
      for (let start = 1; start <= n; start += 5000) {
        const writes: Promise<unknown>[] = [];
        for (let i = start; i < start + 5000; i++) writes.push(suite.redis.set(`api_token_active:app:${token(i)}`, NAIVE_MS(base + i), 'EX', 3600));
        await Promise.all(writes);
      }
      counter.reset();
      const stats = await flush.flushNow();
      expect(stats).toMatchObject({ scanned: n, taken: n, updated: n, dropped: 0 });
      expect(counter.count(UPDATES)).toBe(n / 1000);
      const rows = await suite.db.query(`SELECT token, ${LAST_USED} FROM api_tokens WHERE token LIKE 'app-bulk%'`);
      expect(rows).toHaveLength(n);
      const wrong = rows.filter((r) => r.last_used_at !== NAIVE_MS(base + Number((r.token as string).slice(8))));
      expect(wrong).toEqual([]);
      expect(await activeKeys()).toEqual([]);
    });

    it('takes its own uses a page at a time, however many Cluster slots (and so index sets) they sit in', async () => {
      const n = 2_500;
      await suite.db.query(
        `INSERT INTO api_tokens (type, token) SELECT 'app', 'app-slots' || lpad(i::text, 20, '0') FROM generate_series(1, ${n}) AS i`,
      );
      // A first (empty) run readies the app's connections: on a cold Cluster client under load the lock's
      // first call can outlast its bound, and that run answers null (skipped) instead of flushing.
      await until('a flush runs', async () => (await flush.flushNow()) !== null);
      // Written as the recorder writes them (the key and its index entry in one script), from the test's
      // client: the app's 100 ms request-path bound would make a cold Cluster write flaky on a loaded machine.
      for (let from = 1; from <= n; from += 500) {
        const uses: [string, string][] = [];
        for (let i = from; i < from + 500; i++) {
          uses.push([`api_token_active:app:app-slots${String(i).padStart(20, '0')}`, NAIVE_MS(Date.parse('2026-03-01T00:00:00Z') + i)]);
        }
        await writeUses(suite.redis, uses, 3600);
      }
      // Each page the run reads is one pipeline of GETs (and its index reads one more): the pipelines
      // count the pages. On a Cluster the uses sit in ~2,200 slots' indexes; a page per index sent
      // thousands.
      const exec = jest.spyOn(Pipeline.prototype, 'exec');
      counter.reset();
      const stats = await flush.flushNow();
      const pipelines = exec.mock.calls.length;
      exec.mockRestore();
      expect(stats).toMatchObject({ scanned: n, taken: n, updated: n, dropped: 0 });
      expect(counter.count(UPDATES)).toBe(Math.ceil(n / 1000));
      // Per page its index read and its GETs (a page per 1,000 uses, and on a Cluster up to one short page
      // more per master), the deletes after each UPDATE, and a few more (the SCARDs, the walk's cursor).
      expect(pipelines).toBeLessThanOrEqual(3 * (Math.ceil(n / 1000) + 3) + 10);
      expect(await activeKeys()).toEqual([]);
    });

    it('only moves last_used_at forward, and reads Dify\'s None scope as every scope', async () => {
      const [older, newer, anyScope] = [await newToken(), await newToken(), await newToken('dataset')];
      const t2 = '2026-05-01T12:00:00.500000';
      await suite.db.query(`UPDATE api_tokens SET last_used_at = $1 WHERE token = ANY($2)`, [t2, [older, newer]]);
      await suite.redis.set(`api_token_active:app:${older}`, '2026-05-01T11:59:59.999000', 'EX', 3600);
      await suite.redis.set(`api_token_active:app:${newer}`, '2026-05-01T12:00:00.501000', 'EX', 3600);
      await suite.redis.set(`api_token_active:None:${anyScope}`, '2026-05-02T00:00:00+02:00', 'EX', 3600);
      const stats = await flush.flushNow();
      expect(stats).toMatchObject({ taken: 3, updated: 2, dropped: 0 });
      expect(await lastUsed(older)).toBe(t2);
      expect(await lastUsed(newer)).toBe('2026-05-01T12:00:00.501000');
      expect(await lastUsed(anyScope)).toBe('2026-05-01T22:00:00.000000');
      expect(await activeKeys()).toEqual([]);
    });

    it('writes the newest of two uses of one row (Dify\'s None scope and the row\'s own), whichever is newer', async () => {
      const [noneNewer, appNewer] = [await newToken(), await newToken()];
      const [older, newer] = ['2026-05-03T10:00:00.100000', '2026-05-03T10:00:07.900000'];
      await suite.redis.set(`api_token_active:None:${noneNewer}`, newer, 'EX', 3600);
      await suite.redis.set(`api_token_active:app:${noneNewer}`, older, 'EX', 3600);
      await suite.redis.set(`api_token_active:None:${appNewer}`, older, 'EX', 3600);
      await suite.redis.set(`api_token_active:app:${appNewer}`, newer, 'EX', 3600);
      expect(await flush.flushNow()).toMatchObject({ taken: 4, updated: 2, dropped: 0 });
      expect([await lastUsed(noneNewer), await lastUsed(appNewer)]).toEqual([newer, newer]);
    });

    it('checks use times against Redis\'s clock, not this instance\'s: a clock 20 minutes behind drops nothing', async () => {
      const token = await newToken();
      const now = NAIVE_MS(Date.now());
      await suite.redis.set(`api_token_active:app:${token}`, now, 'EX', 3600);
      const realNow = Date.now.bind(Date);
      jest.spyOn(Date, 'now').mockImplementation(() => realNow() - 20 * 60_000);
      try {
        expect(await flush.flushNow()).toMatchObject({ taken: 1, updated: 1, dropped: 0 });
      } finally {
        jest.restoreAllMocks();
      }
      expect(await lastUsed(token)).toBe(now);
    });

    it('deletes a key only once its use is written, and only while it holds that use: one recorded meanwhile stays', async () => {
      const tokens = [await newToken(), await newToken(), await newToken()];
      const [t, newer] = ['2026-05-04T00:00:00.000000', '2026-05-04T00:00:09.000000'];
      for (const token of tokens) await suite.redis.set(`api_token_active:app:${token}`, t, 'EX', 3600);
      const during: (string | null)[] = [];
      const update = repository.updateLastUsed.bind(repository);
      jest.spyOn(repository, 'updateLastUsed').mockImplementation(async (page) => {
        for (const token of tokens) during.push(await suite.redis.get(`api_token_active:app:${token}`));
        await suite.redis.set(`api_token_active:app:${tokens[0]}`, newer, 'EX', 3600); // a use recorded during the run
        return update(page);
      });
      try {
        expect(await flush.flushNow()).toMatchObject({ taken: 3, updated: 3 });
      } finally {
        jest.restoreAllMocks();
      }
      expect(during).toEqual([t, t, t]); // read, not taken: a run that stopped here would have lost nothing
      expect(await lastUsed(tokens[0])).toBe(t);
      expect(await suite.redis.get(`api_token_active:app:${tokens[0]}`)).toBe(newer);
      for (const token of tokens.slice(1)) expect(await suite.redis.exists(`api_token_active:app:${token}`)).toBe(0);
      expect(await flush.flushNow()).toMatchObject({ taken: 1, updated: 1 });
      expect(await lastUsed(tokens[0])).toBe(newer);
      expect(await activeKeys()).toEqual([]);
    });

    it('drops and counts bad keys without stopping good ones, and logs no token', async () => {
      const [good, badTime, badDate] = [await newToken(), await newToken(), await newToken()];
      const t = '2026-06-01T08:00:00.250000';
      await suite.redis.set(`api_token_active:app:${good}`, t, 'EX', 3600);
      await suite.redis.set(`api_token_active:app:${badTime}`, 'last tuesday', 'EX', 3600);
      await suite.redis.set(`api_token_active:app:${badDate}`, '2026-13-01T00:00:00', 'EX', 3600);
      await suite.redis.set('api_token_active:app', t, 'EX', 3600);
      await suite.redis.set(`api_token_active::${good}`, t, 'EX', 3600);
      const stats = await flush.flushNow();
      expect(stats).toMatchObject({ scanned: 5, taken: 5, updated: 1, dropped: 4 });
      expect(await lastUsed(good)).toBe(t);
      expect(await lastUsed(badTime)).toBeNull();
      expect(await activeKeys()).toEqual([]);
      const lines = logger.matching(/Usage flush/);
      expect(lines.map((l) => l.text)).toEqual([expect.stringMatching(/scanned=5 taken=5 updated=1 dropped=4 elapsed=\d+ms/)]);
      for (const secret of [good, badTime, badDate]) expect(logger.lines.filter((l) => l.text.includes(secret.slice(4)))).toEqual([]);
    });

    it('answers null while another instance holds the lock', async () => {
      const other = new Redlock([suite.redis], { retryCount: 0, db: REDIS_TEST_DB });
      const lock = await other.acquire([FLUSH_LOCK_KEY], 10_000);
      const token = await newToken();
      await suite.redis.set(`api_token_active:app:${token}`, '2026-07-01T00:00:00', 'EX', 3600);
      expect(await flush.flushNow()).toBeNull();
      expect(await suite.redis.exists(`api_token_active:app:${token}`)).toBe(1);
      await lock.release();
      expect(await flush.flushNow()).toMatchObject({ taken: 1, updated: 1 });
    });

    it('leaves the uses in Redis when the database fails, and a newer one recorded meanwhile wins', async () => {
      const [a, b] = [await newToken(), await newToken()];
      const [ta, tb, newer] = ['2026-08-01T00:00:00.100000', '2026-08-01T00:00:00.200000', '2026-08-01T00:00:09.900000'];
      await suite.redis.set(`api_token_active:app:${a}`, ta, 'EX', 3600);
      await suite.redis.set(`api_token_active:app:${b}`, tb, 'EX', 3600);
      const blocker = new Client({ connectionString: suite.db.url });
      await blocker.connect();
      try {
        await blocker.query('BEGIN');
        await blocker.query('LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE');
        const run = flush.flushNow().then(
          () => undefined,
          (error: unknown) => error,
        );
        let pid: number | undefined;
        // From another connection: inside the blocker's transaction pg_stat_activity is a frozen snapshot.
        await until('the flush UPDATE waits on the table lock', async () => {
          const rows = await suite.db.query(
            `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%UPDATE api_tokens%'`,
          );
          pid = rows[0]?.pid as number | undefined;
          return pid !== undefined;
        });
        expect(await suite.redis.get(`api_token_active:app:${a}`)).toBe(ta); // read, still there
        await suite.redis.set(`api_token_active:app:${a}`, newer, 'EX', 3600); // a use recorded during the run
        await blocker.query('SELECT pg_terminate_backend($1)', [pid]);
        const error = await run;
        expect(error).toBeInstanceOf(ApiTokenStoreError);
        expect(String((error as Error).message)).not.toContain(a.slice(4));
      } finally {
        await blocker.query('ROLLBACK').catch(() => undefined);
        await blocker.end();
      }
      expect(await suite.redis.get(`api_token_active:app:${a}`)).toBe(newer);
      expect(await suite.redis.get(`api_token_active:app:${b}`)).toBe(tb);
      expect(await lastUsed(a)).toBeNull();
      expect(logger.matching(/Usage flush failed: .*update last_used_at failed \(57P01\); 2 uses left in Redis/)).toHaveLength(1);
      expect(await flush.flushNow()).toMatchObject({ taken: 2, updated: 2 });
      expect([await lastUsed(a), await lastUsed(b)]).toEqual([newer, tb]);
    });

    it('loses nothing of a writer that keeps setting newer times for 40 tokens while flushes run', async () => {
      const tokens: string[] = [];
      for (let i = 0; i < 40; i++) tokens.push(await newToken());
      const base = Date.parse('2026-09-01T00:00:00Z');
      const rounds = 60;
      let writing = true;
      const writer = (async () => {
        for (let r = 1; r <= rounds; r++) {
          await Promise.all(tokens.map((token, i) => suite.redis.set(`api_token_active:app:${token}`, NAIVE_MS(base + r * 1000 + i), 'EX', 3600)));
          await sleep(2);
        }
        writing = false;
      })();
      const runs: UsageFlushStats[] = [];
      while (writing) {
        const stats = await flush.flushNow();
        if (stats) runs.push(stats);
      }
      await writer;
      runs.push((await flush.flushNow())!);
      expect(runs.filter((s) => s.taken > 0).length).toBeGreaterThan(2);
      const rows = await suite.db.query(`SELECT token, ${LAST_USED} FROM api_tokens WHERE token = ANY($1)`, [tokens]);
      const got = Object.fromEntries(rows.map((r) => [r.token, r.last_used_at]));
      expect(tokens.map((token) => got[token])).toEqual(tokens.map((_, i) => NAIVE_MS(base + rounds * 1000 + i)));
      expect(await activeKeys()).toEqual([]);
    });
  });

  // Which of the 16,384 slot indexes a run asks (issue 23): the ones the list names, every one each half hour.
  (REDIS_CLUSTER_NODES ? describe : describe.skip)('on a Cluster, the list of indexes with uses', () => {
    let app: INestApplication;
    let flush: ApiTokenUsageFlushService;
    const T = '2026-10-01T00:00:00.100000';
    /** A token whose usage key sits in `slot` (the i-th found), with its row. */
    const tokenInSlot = async (slot: number, from = 0): Promise<string> => {
      for (let i = from; ; i++) {
        const token = `app-slotmate-${i}`;
        if (calculateSlot(`api_token_active:app:${token}`) !== slot) continue;
        await suite.db.query(`INSERT INTO api_tokens (type, token) VALUES ('app', $1) ON CONFLICT DO NOTHING`, [token]);
        return token;
      }
    };
    const newToken = async () => {
      const token = generateApiToken('app');
      await suite.db.query(`INSERT INTO api_tokens (type, token) VALUES ('app', $1)`, [token]);
      return token;
    };
    const scards = () => commandCalls(suite.redis, 'scard');

    beforeAll(async () => {
      app = await createTestApp({ databaseUrl: suite.db.url, logger, apiToken: { flushCron: false, usageWriteIntervalMs: 60_000 } });
      flush = app.get(ApiTokenUsageFlushService);
    });
    afterAll(() => app?.close());

    beforeEach(async () => {
      // The pass over every index runs first (the marker was cleared), so each test starts from a
      // run that reads the list. The walk for Dify's keys would find any usage key the index path
      // missed in a Redis this small: it is off here, so these tests see the index path alone.
      await until('a flush runs', async () => (await flush.flushNow()) !== null);
      jest.spyOn(flush as unknown as { scanSlice: () => Promise<void> }, 'scanSlice').mockResolvedValue(undefined);
    });
    afterEach(() => jest.restoreAllMocks());

    it('asks only the listed slots\' indexes, not all 16,384, and writes their uses', async () => {
      const tokens = [await newToken(), await newToken(), await newToken()];
      await writeUses(suite.redis, tokens.map((t) => [`api_token_active:app:${t}`, T]), 3600);
      const slots = new Set(tokens.map((t) => calculateSlot(`api_token_active:app:${t}`))).size;
      const before = await scards();
      expect(await flush.flushNow()).toMatchObject({ scanned: 3, taken: 3, updated: 3 });
      expect((await scards()) - before).toBe(slots);
      expect(await Promise.all(tokens.map(lastUsed))).toEqual([T, T, T]);
      expect(await suite.redis.exists(LISTED_INDEXES_KEY)).toBe(0);
    });

    it('a burst of first uses lists its indexes in a few transactions on the list\'s master, not one per use', async () => {
      const tokens = await Promise.all(Array.from({ length: 200 }, () => newToken()));
      const recorder = app.get(ApiTokenUsageRecorder);
      const before = await commandCalls(suite.redis, 'exec');
      for (const token of tokens) recorder.record('app', token); // each token's first use: written at once
      await recorder.flushPending();
      expect((await commandCalls(suite.redis, 'exec')) - before).toBeLessThanOrEqual(5);
      expect(await flush.flushNow()).toMatchObject({ taken: 200, updated: 200 });
    });

    it('a name listed while a run takes the list is drained by that run or stays listed for the next', async () => {
      const first = await newToken();
      await writeUses(suite.redis, [[`api_token_active:app:${first}`, T]], 3600);
      const slot = calculateSlot(`api_token_active:app:${first}`);
      const [mate, other] = [await tokenInSlot(slot), await newToken()];
      // The run's read of the list answers; it is held before it takes the names it read off the list.
      const read = gate();
      const resume = gate();
      let calls = 0;
      const taking = indexesToDrain(suite.redis, async (send) => {
        const reply = await send();
        if (++calls === 1) {
          read.open();
          await resume.promise;
        }
        return reply;
      });
      await read.promise;
      await writeUses(suite.redis, [[`api_token_active:app:${mate}`, T], [`api_token_active:app:${other}`, T]], 3600);
      resume.open();
      const { drain } = await taking;
      // The held run drains the first slot (both uses in it: written before the run reads the index);
      // the other slot was listed after its read, so it stays listed for the next run.
      const drained = (suite.redis as unknown as Cluster).nodes('master').flatMap((node) => drain(node));
      expect(drained).toEqual([activeIndexKey(suite.redis, `api_token_active:app:${first}`)]);
      expect(await suite.redis.smembers(LISTED_INDEXES_KEY)).toEqual([activeIndexKey(suite.redis, `api_token_active:app:${other}`)]);
      // The next run drains it (the held run, which this test plays by hand, would drain the first slot).
      expect(await flush.flushNow()).toMatchObject({ taken: 1, updated: 1 });
      expect(await lastUsed(other)).toBe(T);
    });

    it('an index nobody listed (a 0.2 instance\'s write) waits for the pass over every index', async () => {
      const token = await newToken();
      const key = `api_token_active:app:${token}`;
      await setIfNewer(suite.redis, key, T, 3600, activeIndexKey(suite.redis, key));
      expect(await flush.flushNow()).toMatchObject({ taken: 0 });
      expect(await lastUsed(token)).toBeNull();
      await suite.redis.del(INDEXES_CHECKED_KEY); // the hour is up
      const before = await scards();
      expect(await flush.flushNow()).toMatchObject({ taken: 1, updated: 1 });
      expect((await scards()) - before).toBe(16_384);
      expect(await lastUsed(token)).toBe(T);
    });

    it('marks the pass over every index only once it has drained them all, for half a key\'s life', async () => {
      await suite.redis.del(INDEXES_CHECKED_KEY);
      // A run's reads: the pass is due, and nothing marks it yet (a run that stops now leaves it due).
      const { all } = await indexesToDrain(suite.redis, (send) => send());
      expect(all).toBe(true);
      expect(await suite.redis.exists(INDEXES_CHECKED_KEY)).toBe(0);
      expect(await flush.flushNow()).not.toBeNull();
      const ttl = await suite.redis.ttl(INDEXES_CHECKED_KEY);
      expect(ttl).toBeGreaterThan(1700);
      expect(ttl).toBeLessThanOrEqual(1800);
    });

    it('after a run that took names from the list and failed, the next run asks every index', async () => {
      const token = await newToken();
      await writeUses(suite.redis, [[`api_token_active:app:${token}`, T]], 3600);
      const repository = app.get(ApiTokenRepository);
      jest.spyOn(repository, 'updateLastUsed').mockRejectedValueOnce(new ApiTokenStoreError('update last_used_at', new Error('test')));
      await expect(flush.flushNow()).rejects.toBeInstanceOf(ApiTokenStoreError);
      expect([await suite.redis.exists(LISTED_INDEXES_KEY), await suite.redis.exists(INDEXES_CHECKED_KEY)]).toEqual([0, 0]);
      expect(await flush.flushNow()).toMatchObject({ taken: 1, updated: 1 });
      expect(await lastUsed(token)).toBe(T);
    });
  });

  describe('on a schedule', () => {
    const zone = process.env.TZ;
    beforeAll(() => {
      process.env.TZ = 'Asia/Kolkata'; // UTC+05:30: a local-time slip would show
    });
    afterAll(() => {
      if (zone === undefined) delete process.env.TZ;
      else process.env.TZ = zone;
    });

    it('gives a used token its last_used_at within a tick, in UTC, and removes its key', async () => {
      const app = await createTestApp({ databaseUrl: suite.db.url, logger, flushCron: '* * * * * *' });
      try {
        expect(app.get(SchedulerRegistry).getCronJob(FLUSH_JOB_NAME).cronTime.source).toBe('* * * * * *');
        const { token } = await app.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
        const before = Date.now();
        expect((await request(app.getHttpServer()).get('/app/whoami').set('Authorization', `Bearer ${token}`)).status).toBe(200);
        const after = Date.now();
        await until('last_used_at is set', async () => (await lastUsed(token)) !== null);
        const written = Date.parse(`${await lastUsed(token)}Z`);
        expect(written).toBeGreaterThanOrEqual(before);
        expect(written).toBeLessThanOrEqual(after);
        expect(await suite.redis.exists(`api_token_active:app:${token}`)).toBe(0);
        expect(logger.matching(/Usage flush tick=\d+: scanned=1 taken=1 updated=1/).length).toBeGreaterThanOrEqual(1);
      } finally {
        await app.close();
      }
    });

    it('runs once per tick across two instances on one schedule, even for an instance that ticks late', async () => {
      const apps = [
        await createTestApp({ databaseUrl: suite.db.url, logger, flushCron: '* * * * * *' }),
        await createTestApp({ databaseUrl: suite.db.url, logger, flushCron: '* * * * * *' }),
      ];
      try {
        const runs = () => logger.matching(/Usage flush tick=\d+:/);
        const lateSkips = () => logger.matching(/Usage flush skipped: tick \d+ already ran/);
        let late = 0;
        while (runs().length < 6 || late < 3) {
          const seen = runs().length;
          await until('the next scheduled run', () => runs().length > seen);
          const tick = Number(/tick=(\d+)/.exec(runs()[runs().length - 1].text)![1]);
          // An instance whose timer fires late (a busy event loop, another host): same tick, after the run ended.
          if (Date.now() > tick * 1000 + 400) continue;
          late++;
          for (const app of apps) await app.get(ApiTokenUsageFlushService).onSchedule();
        }
        const ticks = runs().map((l) => /tick=(\d+)/.exec(l.text)![1]);
        expect(new Set(ticks).size).toBe(ticks.length);
        expect(lateSkips().length).toBeGreaterThanOrEqual(late);
        expect(logger.matching(/Usage flush skipped: another instance holds the lock/).length).toBeGreaterThanOrEqual(1);
      } finally {
        await Promise.all(apps.map((app) => app.close()));
      }
    });
  });
  describe('lifecycle', () => {
    it('writes the pending uses to Redis when the application closes', async () => {
      const app = await createTestApp({ databaseUrl: suite.db.url, apiToken: { flushCron: false, usageWriteIntervalMs: 60_000 } });
      const { token } = await app.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
      const whoami = () => request(app.getHttpServer()).get('/app/whoami').set('Authorization', `Bearer ${token}`);
      expect((await whoami()).status).toBe(200);
      await until('the first use is in Redis', async () => (await suite.redis.exists(`api_token_active:app:${token}`)) === 1);
      await sleep(5); // distinct milliseconds: the first use's time, left by a lost pending use, shows
      const before = Date.now();
      expect((await whoami()).status).toBe(200);
      await app.close();
      const written = Date.parse(`${await suite.redis.get(`api_token_active:app:${token}`)}Z`);
      // Pending, so dated up to 1 ms early (see above).
      expect(written).toBeGreaterThanOrEqual(before - 1);
    });

    it('without ScheduleModule: warns at start-up, and flushNow() still flushes', async () => {
      const moduleRef = await Test.createTestingModule({
        imports: [
          RedisModule.forRoot(redisModuleOptions({ redisUrl: REDIS_TEST_URL, redisClusterNodes: REDIS_CLUSTER_NODES })),
          TypeOrmModule.forRoot({ type: 'postgres', url: suite.db.url, migrations: [ApiTokenMigration], migrationsRun: true }),
          ApiTokenModule.forRoot({}),
        ],
      }).compile();
      const app = moduleRef.createNestApplication({ logger });
      await app.init();
      try {
        await until('the warning', () => logger.matching(/No flush job is scheduled \(import ScheduleModule.forRoot\(\)/).length === 1);
        const { token } = await app.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
        await suite.redis.set(`api_token_active:app:${token}`, '2026-10-01T00:00:00.001000', 'EX', 3600);
        expect(await app.get(ApiTokenUsageFlushService).flushNow()).toMatchObject({ taken: 1, updated: 1 });
        expect(await lastUsed(token)).toBe('2026-10-01T00:00:00.001000');
      } finally {
        await app.close();
      }
    });
  });

  // Issue 29: the flush took each key with GETDEL; a page whose replies came after the flush gave up on
  // it had taken the uses from Redis all the same, and they were lost without a count. Now a key leaves
  // Redis only after its use is written. A proxy picks the command: a single node only.
  (REDIS_CLUSTER_NODES ? describe.skip : describe)('replies that come late or not at all', () => {
    const setUp = async () => {
      const proxy = await suite.proxy(REDIS_TEST_URL, { resp: true });
      const app = await suite.app({ redisUrl: proxy.proxied(REDIS_TEST_URL), logger, apiToken: { flushCron: false, usageWriteIntervalMs: 60_000 } });
      const { token } = await app.get(ApiTokenRepository).insert({ token: generateApiToken('app'), type: 'app' });
      const key = `api_token_active:app:${token}`;
      const time = '2026-11-01T00:00:00.001000';
      await suite.redis.set(key, time, 'EX', 3600);
      await suite.redis.sadd(ACTIVE_INDEX_KEY, key);
      return { proxy, flush: app.get(ApiTokenUsageFlushService), token, key, time };
    };

    it('a page of reads answered after its timeout takes nothing; the next run writes the uses', async () => {
      const { proxy, flush, token, key, time } = await setUp();
      // The read of a use, GETDEL before the fix and GET after it; its reply is held past every bound.
      const held = proxy.fault({ match: /^GET(DEL)? api_token_active:/, action: 'hold-reply', times: 10 });
      const stats = await flush.flushNow();
      await held.hit;
      expect(stats).toMatchObject({ taken: 0, updated: 0 });
      expect(await lastUsed(token)).toBeNull();
      expect(await suite.redis.get(key)).toBe(time); // nothing left Redis unwritten (a GETDEL had run here)
      held.release(); // the late replies reach the client
      await held.replied;
      proxy.clearFaults();
      expect(await flush.flushNow()).toMatchObject({ taken: 1, updated: 1 });
      expect(await lastUsed(token)).toBe(time);
      expect(await suite.redis.exists(key, ACTIVE_INDEX_KEY)).toBe(0);
    });

    it('a delete that fails after the write leaves the use in Redis, written again (no change) and deleted next run', async () => {
      const { proxy, flush, token, key, time } = await setUp();
      // The delete-if-unchanged script (EVALSHA, or EVAL) never reaches Redis: the index, then the keys
      // (the recorder's set-if-newer names the key first, and records nothing here).
      const failed = proxy.fault({ match: /^EVAL(SHA)? [\s\S]* \d+ api_token_active_index api_token_active:/, action: 'error', times: 10 });
      expect(await flush.flushNow()).toMatchObject({ taken: 1, updated: 1 });
      expect(failed.hits).toBeGreaterThanOrEqual(1);
      expect(await lastUsed(token)).toBe(time);
      expect(await suite.redis.get(key)).toBe(time);
      proxy.clearFaults();
      expect(await flush.flushNow()).toMatchObject({ taken: 1, updated: 0 });
      expect(await suite.redis.exists(key, ACTIVE_INDEX_KEY)).toBe(0);
    });
  });
});
