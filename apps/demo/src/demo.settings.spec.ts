import { loadDemoConfig } from './demo.settings';

describe('loadDemoConfig', () => {
  it('reads PORT, API_TOKEN_FLUSH_CRON and API_TOKEN_ERROR_FORMAT', () => {
    expect(loadDemoConfig({})).toEqual({ port: 3000, flushCron: undefined, errorFormat: undefined });
    expect(loadDemoConfig({ PORT: '0', API_TOKEN_FLUSH_CRON: '*/5 * * * * *', API_TOKEN_ERROR_FORMAT: 'dify' })).toEqual({
      port: 0,
      flushCron: '*/5 * * * * *',
      errorFormat: 'dify',
    });
  });

  it.each([
    [{ PORT: '70000' }, /PORT must be a port number/],
    [{ PORT: 'app-secretvalue' }, /PORT must be a port number/],
    [{ API_TOKEN_ERROR_FORMAT: 'Dify' }, /API_TOKEN_ERROR_FORMAT must be "nest" or "dify"$/],
  ])('refuses %p, naming the variable and not its value', (env, message) => {
    expect(() => loadDemoConfig(env)).toThrow(message);
    expect(() => loadDemoConfig(env)).not.toThrow(Object.values(env)[0]);
  });
});
