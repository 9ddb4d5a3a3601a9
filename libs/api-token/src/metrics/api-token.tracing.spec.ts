import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemoryTracing, spanText } from '../../../../test/support/tracing';
import { ApiTokenStoreError } from '../api-token.errors';
import { API_TOKEN_TRACER_NAME, ATTR, NO_SPAN, inSpan, recordFailure, tracingEnabled } from './api-token.tracing';

describe('inSpan', () => {
  describe('with no SDK registered', () => {
    it('runs the work with the span that does nothing, and says tracing is off', async () => {
      expect(tracingEnabled()).toBe(false);
      let given: unknown;
      await expect(inSpan('api_token.test', { [ATTR.scope]: 'app' }, async (span) => ((given = span), 7))).resolves.toBe(7);
      expect(given).toBe(NO_SPAN);
    });

    it('passes a failure through untouched', async () => {
      const error = new Error('boom');
      await expect(inSpan('api_token.test', {}, () => Promise.reject(error))).rejects.toBe(error);
    });
  });

  describe('with an SDK registered', () => {
    let tracing: InMemoryTracing;
    beforeEach(() => (tracing = InMemoryTracing.start()));
    afterEach(() => tracing.stop());

    it('records an INTERNAL span of the tracer nestjs-api-token, with its attributes, ended when the work settles', async () => {
      expect(tracingEnabled()).toBe(true);
      await inSpan('api_token.test', { [ATTR.scope]: 'app' }, async (span) => {
        span.setAttribute(ATTR.outcome, 'valid');
        expect(tracing.spans()).toHaveLength(0);
      });
      const [span] = tracing.spans();
      expect(span.name).toBe('api_token.test');
      expect(span.kind).toBe(SpanKind.INTERNAL);
      expect(span.instrumentationScope.name).toBe(API_TOKEN_TRACER_NAME);
      expect(span.instrumentationScope.version).toMatch(/^\d+\.\d+\.\d+/);
      expect(span.attributes).toEqual({ [ATTR.scope]: 'app', [ATTR.outcome]: 'valid' });
      expect(span.status.code).toBe(SpanStatusCode.UNSET);
    });

    it('makes the span the active one, so spans started inside (a driver instrumentation) nest under it', async () => {
      await inSpan('api_token.outer', {}, () => inSpan('api_token.inner', {}, async () => undefined));
      const [inner, outer] = tracing.spans();
      expect(inner.parentSpanContext?.spanId).toBe(outer.spanContext().spanId);
    });

    it('starts the span at the time given', async () => {
      const started = Date.now() - 5000;
      await inSpan('api_token.test', {}, async () => undefined, started);
      const [seconds] = tracing.spans()[0].startTime;
      expect(seconds).toBe(Math.floor(started / 1000));
    });

    it('records a failure by class and code, never by message or stack, and rethrows it', async () => {
      const secret = 'app-SECRETsecret12345678ab';
      const driver = Object.assign(new Error(`duplicate key api_token:app:${secret}`), { name: 'ReplyError', code: 'ERR_TEST' });
      await expect(inSpan('api_token.test', {}, () => Promise.reject(driver))).rejects.toBe(driver);
      const [span] = tracing.spans();
      expect(span.status).toEqual({ code: SpanStatusCode.ERROR });
      expect(span.attributes).toEqual({ 'error.type': 'ReplyError', [ATTR.errorCode]: 'ERR_TEST', [ATTR.outcome]: 'error' });
      expect(span.events.map((e) => [e.name, e.attributes])).toEqual([['exception', { 'exception.type': 'ReplyError' }]]);
      expect(spanText(tracing.spans())).not.toContain('SECRET');
    });

    it('calls a store error unavailable, and repeats no code or class name of an unusual shape', async () => {
      const span = { setAttributes: jest.fn(), setAttribute: jest.fn(), addEvent: jest.fn(), setStatus: jest.fn() };
      recordFailure(span, new ApiTokenStoreError('lookup', { code: '57P01' }));
      expect(span.setAttributes).toHaveBeenCalledWith({ 'error.type': 'ApiTokenStoreError', [ATTR.outcome]: 'unavailable', [ATTR.errorCode]: '57P01' });
      span.setAttributes.mockClear();
      // A mixed-case code (it could be a piece of a token) and a name that is no class name are left out.
      recordFailure(span, Object.assign(new Error('x'), { name: 'app-Xy12 token', code: 'aB3dEf9hIj' }));
      expect(span.setAttributes).toHaveBeenCalledWith({ 'error.type': 'Error', [ATTR.outcome]: 'error' });
      recordFailure(span, 'a thrown string');
      expect(span.setAttributes).toHaveBeenLastCalledWith({ 'error.type': 'string', [ATTR.outcome]: 'error' });
    });

    it('does nothing to the span that does nothing', () => {
      expect(() => recordFailure(NO_SPAN, new Error('x'))).not.toThrow();
    });
  });

  it('uses an SDK registered after the first span, and stops when it is unregistered', async () => {
    await inSpan('api_token.before', {}, async () => undefined);
    const tracing = InMemoryTracing.start();
    try {
      await inSpan('api_token.during', {}, async () => undefined);
      expect(tracing.spans().map((s) => s.name)).toEqual(['api_token.during']);
    } finally {
      await tracing.stop();
    }
    expect(tracingEnabled()).toBe(false);
  });

  it('without @opentelemetry/api installed, loads and runs the work untraced', async () => {
    // An SDK is registered (through the real API): only a failed require can keep the wrapper from using it.
    const tracing = InMemoryTracing.start();
    // Each require of the optional peer fails as it does when the package is absent.
    jest.resetModules();
    jest.doMock('@opentelemetry/api', () => {
      throw Object.assign(new Error("Cannot find module '@opentelemetry/api'"), { code: 'MODULE_NOT_FOUND' });
    });
    try {
      const isolated = jest.requireActual<typeof import('./api-token.tracing')>('./api-token.tracing');
      expect(isolated.tracingEnabled()).toBe(false);
      let given: unknown;
      await expect(isolated.inSpan('api_token.test', {}, async (span) => ((given = span), 'done'))).resolves.toBe('done');
      expect(given).toBe(isolated.NO_SPAN);
      expect(() => isolated.recordFailure(isolated.NO_SPAN, new Error('x'))).not.toThrow();
      expect(tracing.spans()).toEqual([]);
      // The same calls through the module that loaded the API are traced: the check above is not vacuous.
      await inSpan('api_token.test', {}, async () => undefined);
      expect(tracing.spans()).toHaveLength(1);
    } finally {
      jest.dontMock('@opentelemetry/api');
      jest.resetModules();
      await tracing.stop();
    }
  });
});
