import { readStoresEnv } from './stores.env';
import { describeDatabaseFailure, isTransientDatabaseError, maskUrl } from './stores.startup';

describe('maskUrl', () => {
  it.each([
    ['postgres://postgres:postgres@localhost:5432/postgres', 'postgres://postgres:****@localhost:5432/postgres'],
    ['postgres://u@db/x?sslpassword=p1&password=p2&ssl=true', 'postgres://u@db/x?sslpassword=****&password=****&ssl=true'],
    ['redis://:pw@127.0.0.1:6379/2', 'redis://:****@127.0.0.1:6379/2'],
    ['redis://127.0.0.1:6379', 'redis://127.0.0.1:6379'],
  ])('%s', (url, masked) => expect(maskUrl(url)).toBe(masked));

  it('shows nothing of what is not a URL (it may hold a password anywhere)', () => {
    expect(maskUrl('user:secret at host')).toBeUndefined();
    expect(describeDatabaseFailure(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }), { DATABASE_URL: 'user:secret at host' })).toContain('at the address in DATABASE_URL');
  });
});

describe('describeDatabaseFailure', () => {
  const env = { DATABASE_URL: 'postgres://me:pw@db:5432/app' };
  const failure = (code?: string, message = 'failed') => Object.assign(new Error(message), code ? { code } : {});

  it.each([
    [failure('ECONNREFUSED'), /^PostgreSQL did not answer at postgres:\/\/me:\*\*\*\*@db:5432\/app \(ECONNREFUSED\): start it with "docker compose up -d"/],
    [failure(undefined, 'Connection terminated due to connection timeout'), /did not answer .* \(timeout\)/],
    [failure('28P01'), /refused the login \(28P01\): check the user and password in DATABASE_URL/],
    [failure('3D000'), /has no such database \(3D000\)/],
  ])('%s', (error, line) => {
    const text = describeDatabaseFailure(error, env);
    expect(text).toMatch(line);
    expect(text).not.toContain(':pw@');
  });

  it('leaves other errors to the caller, and retries only what may answer soon', () => {
    expect(describeDatabaseFailure(failure('42501'), env)).toBeUndefined();
    expect(describeDatabaseFailure(new Error('bug'), env)).toBeUndefined();
    expect([failure('ECONNREFUSED'), failure('57P03'), failure('28P01'), new Error('bug')].map(isTransientDatabaseError)).toEqual([true, true, false, false]);
  });
});

describe('readStoresEnv', () => {
  it('reads DATABASE_RETRY_ATTEMPTS', () => {
    expect(readStoresEnv({}).databaseRetryAttempts).toBeUndefined();
    expect(readStoresEnv({ DATABASE_RETRY_ATTEMPTS: '30' }).databaseRetryAttempts).toBe(30);
  });

  it.each([
    [{ DATABASE_RETRY_ATTEMPTS: '0' }, /DATABASE_RETRY_ATTEMPTS/],
    [{ DATABASE_RETRY_ATTEMPTS: '2.5' }, /DATABASE_RETRY_ATTEMPTS/],
    [{ REDIS_CLUSTER_NODES: '127.0.0.1:7000,app-secretvalue' }, /REDIS_CLUSTER_NODES must be host:port.*entry 2/],
  ])('refuses %p, naming the variable and not its value', (env, message) => {
    expect(() => readStoresEnv(env)).toThrow(message);
    expect(() => readStoresEnv(env)).not.toThrow(Object.values(env)[0]);
  });
});
