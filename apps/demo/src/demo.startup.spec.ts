import { loadDemoConfig } from './demo.config';
import { describeDatabaseFailure, isTransientDatabaseError, maskUrl } from './demo.startup';

describe('maskUrl', () => {
  it.each([
    ['postgres://postgres:postgres@localhost:5432/postgres', 'postgres://postgres:****@localhost:5432/postgres'],
    ['postgres://u@db/x?sslpassword=p1&password=p2&ssl=true', 'postgres://u@db/x?sslpassword=****&password=****&ssl=true'],
    ['redis://:pw@127.0.0.1:6379/2', 'redis://:****@127.0.0.1:6379/2'],
    ['redis://127.0.0.1:6379', 'redis://127.0.0.1:6379'],
  ])('%s', (url, masked) => expect(maskUrl(url)).toBe(masked));

  it('shows nothing of what is not a URL (it may hold a password anywhere)', () => {
    expect(maskUrl('user:secret at host')).toBeUndefined();
    expect(describeDatabaseFailure(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }), 'user:secret at host')).toContain('at the address in DATABASE_URL');
  });
});

describe('describeDatabaseFailure', () => {
  const url = 'postgres://me:pw@db:5432/app';
  const failure = (code?: string, message = 'failed') => Object.assign(new Error(message), code ? { code } : {});

  it.each([
    [failure('ECONNREFUSED'), /^PostgreSQL did not answer at postgres:\/\/me:\*\*\*\*@db:5432\/app \(ECONNREFUSED\): start it with "docker compose up -d"/],
    [failure(undefined, 'Connection terminated due to connection timeout'), /did not answer .* \(timeout\)/],
    [failure('28P01'), /refused the login \(28P01\): check the user and password in DATABASE_URL/],
    [failure('3D000'), /has no such database \(3D000\)/],
  ])('%s', (error, line) => {
    const text = describeDatabaseFailure(error, url);
    expect(text).toMatch(line);
    expect(text).not.toContain(':pw@');
  });

  it('leaves other errors to the caller, and retries only what may answer soon', () => {
    expect(describeDatabaseFailure(failure('42501'), url)).toBeUndefined();
    expect(describeDatabaseFailure(new Error('bug'), url)).toBeUndefined();
    expect([failure('ECONNREFUSED'), failure('57P03'), failure('28P01'), new Error('bug')].map(isTransientDatabaseError)).toEqual([true, true, false, false]);
  });
});

describe('loadDemoConfig: start-up settings', () => {
  it('reads DATABASE_RETRY_ATTEMPTS and API_TOKEN_ERROR_FORMAT', () => {
    expect(loadDemoConfig({})).toMatchObject({ databaseRetryAttempts: undefined, apiToken: undefined });
    expect(loadDemoConfig({ DATABASE_RETRY_ATTEMPTS: '30', API_TOKEN_ERROR_FORMAT: 'dify' })).toMatchObject({
      databaseRetryAttempts: 30,
      apiToken: { errorFormat: 'dify' },
    });
  });

  it.each([
    [{ DATABASE_RETRY_ATTEMPTS: '0' }, /DATABASE_RETRY_ATTEMPTS/],
    [{ DATABASE_RETRY_ATTEMPTS: '2.5' }, /DATABASE_RETRY_ATTEMPTS/],
    [{ API_TOKEN_ERROR_FORMAT: 'Dify' }, /API_TOKEN_ERROR_FORMAT must be "nest" or "dify"$/],
  ])('refuses %p, naming the variable and not its value', (env, message) => {
    expect(() => loadDemoConfig(env)).toThrow(message);
    expect(() => loadDemoConfig(env)).not.toThrow(Object.values(env)[0]);
  });
});
