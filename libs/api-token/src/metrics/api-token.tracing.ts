import type * as OtelApi from '@opentelemetry/api';
import { ApiTokenStoreError, errorCode } from '../api-token.errors';

/** The tracer's name (OpenTelemetry's instrumentation scope): the package's name. */
export const API_TOKEN_TRACER_NAME = 'nestjs-api-token';

/**
 * The spans the library starts, by name: only for work that costs I/O (an in-process cache hit starts
 * none). All of kind INTERNAL; the Redis and PostgreSQL round trips inside them are the ioredis and pg
 * instrumentations' spans, which nest under these when those instrumentations are on.
 */
export const SPAN = {
  /** A lookup past the in-process cache: Redis, the lookup lock, PostgreSQL. */
  lookup: 'api_token.lookup',
  /** Inside a lookup: the wait for another instance's lookup of the same token (the lookup lock). */
  lockWait: 'api_token.lock_wait',
  /** A usage flush run that held the lock (skipped runs start none). */
  flush: 'api_token.flush',
  /** A revocation (revoke, revokeById, a rotation without grace, the expiry sweep's deletes). */
  revoke: 'api_token.revoke',
  /** A rotation. */
  rotate: 'api_token.rotate',
  /** A run of the expiry sweep. */
  expirySweep: 'api_token.expiry_sweep',
  /** A tenant invalidation. */
  invalidateTenant: 'api_token.invalidate_tenant',
  /** A read of the revocation and policy-change logs that found entries (empty polls start none). */
  revocationLogRead: 'api_token.revocation_log.read',
} as const;

/** The attributes the spans carry, by name; never a token, a part of one, or a Redis key (keys hold tokens). */
export const ATTR = {
  /** The scope looked up or acted on (`any` for none). */
  scope: 'api_token.scope',
  /** The scopes of the rows a revocation deleted. */
  scopes: 'api_token.scopes',
  /** How the span's work ended (values per span: docs/tracing.md). */
  outcome: 'api_token.outcome',
  /** Where a lookup's answer came from: `redis`, `negative` (Redis's cached "no such token"), `postgres`. */
  source: 'api_token.source',
  /** The lookup lock of a lookup that went past Redis: `acquired`, `waited`, `timed_out`, `none` (Redis did not answer). */
  lock: 'api_token.lock',
  /** True when the lookup joined one already under way in the process (single flight). */
  joined: 'api_token.joined',
  /** True when the PostgreSQL lookup waited for a place under `maxConcurrentLookups`. */
  queued: 'api_token.queued',
  /** Whether Redis confirmed every step of a cache invalidation. */
  cacheCleared: 'api_token.cache_cleared',
  /** Rows a revocation deleted. */
  rows: 'api_token.rows',
  /** What a revocation was given: `token` or `id`. */
  target: 'api_token.target',
  /** A rotation's grace, in seconds. */
  graceSeconds: 'api_token.grace_seconds',
  /** The tenant of a tenant invalidation (a UUID). */
  tenantId: 'api_token.tenant_id',
  /** Cache keys dropped (counted, never named). */
  keysDropped: 'api_token.keys_dropped',
  /** Flush: `api_token_active` keys found. */
  keysScanned: 'api_token.flush.keys_scanned',
  /** Flush: keys read and deleted. */
  keysTaken: 'api_token.flush.keys_taken',
  /** Flush: rows whose `last_used_at` moved forward. */
  rowsWritten: 'api_token.flush.rows_written',
  /** Flush: taken keys that could not be used. */
  keysUnusable: 'api_token.flush.keys_dropped',
  /** Expired tokens removed (by the expiry sweep, or after a flush). */
  expiredRemoved: 'api_token.expired_removed',
  /** What started the run: a flush's `schedule` or `manual` (flushNow); an expiry sweep's `timer` (a token's expiry) or `flush` (after a usage flush). */
  trigger: 'api_token.trigger',
  /** Revocation-log read: revocations read. */
  revocations: 'api_token.revocation_log.revocations',
  /** Revocation-log read: policy changes read. */
  policyChanges: 'api_token.revocation_log.policy_changes',
  /** Revocation-log read: the read at start-up, before the application takes requests. */
  initial: 'api_token.revocation_log.initial',
  /** A failure's driver or Node error code (SQLSTATE, `ECONNREFUSED`), when it has one of that shape. */
  errorCode: 'api_token.error_code',
  /** A failure's class (OpenTelemetry's `error.type`). */
  errorType: 'error.type',
} as const;

/** An attribute's value, as OpenTelemetry takes it. */
export type TraceValue = string | number | boolean | string[];
/** Attributes by name. */
export type TraceAttributes = Record<string, TraceValue>;

/** What the code in a span may do to it: a real span, or {@link NO_SPAN} when nothing records. */
export interface TraceSpan {
  setAttribute(name: string, value: TraceValue): unknown;
  setAttributes(attributes: TraceAttributes): unknown;
}

/** The span handed to the work when tracing is off: does nothing. */
export const NO_SPAN: TraceSpan = { setAttribute: () => undefined, setAttributes: () => undefined };

type Api = typeof OtelApi;

/**
 * `@opentelemetry/api`, an optional peer dependency: required once, on the first span, and null when it
 * is not installed or does not load (tracing must never break authentication).
 */
let api: Api | null | undefined;
let version: string | undefined;

function loadApi(): Api | null {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    api = require('@opentelemetry/api') as Api;
  } catch {
    api = null;
  }
  try {
    // The package's version, as the instrumentation scope's: ../../package.json from src/metrics and from dist/metrics alike.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    version = (require('../../package.json') as { version?: string }).version;
  } catch {
    version = undefined;
  }
  return api;
}

/**
 * The tracer of the registered SDK, or undefined when there is none: the API is not installed, or no
 * tracer provider was registered (the API's own proxy then has no delegate). Asked at each span, so an
 * SDK registered after the module started is used from then on.
 */
function activeTracer(): OtelApi.Tracer | undefined {
  const otel = api === undefined ? loadApi() : api;
  if (otel === null) return undefined;
  const provider = otel.trace.getTracerProvider() as OtelApi.TracerProvider & Partial<Pick<OtelApi.ProxyTracerProvider, 'getDelegateTracer'>>;
  // The global provider is the API's proxy: its delegate is the SDK's, if one is registered. Duck-typed,
  // as the proxy may come from another copy of the API than the one required here.
  return typeof provider.getDelegateTracer === 'function' ? provider.getDelegateTracer(API_TOKEN_TRACER_NAME, version) : provider.getTracer(API_TOKEN_TRACER_NAME, version);
}

/** Whether an SDK's tracer provider is registered (spans would be recorded, subject to its sampler). */
export function tracingEnabled(): boolean {
  return activeTracer() !== undefined;
}

/**
 * Runs `work` inside a span named `name` (kind INTERNAL, the active span while it runs, so the ioredis
 * and pg instrumentations' spans nest under it), ended when `work` settles. A failure is recorded by
 * {@link recordFailure} and rethrown. With no SDK registered, `work` runs with {@link NO_SPAN}: no span,
 * no context switch. `startTime`: when the work began, if before this call (`Date.now()` milliseconds).
 */
export function inSpan<T>(name: string, attributes: TraceAttributes, work: (span: TraceSpan) => Promise<T>, startTime?: number): Promise<T> {
  const tracer = activeTracer();
  if (tracer === undefined) return work(NO_SPAN);
  const kind = (api as Api).SpanKind.INTERNAL;
  return tracer.startActiveSpan(name, { kind, attributes: attributes as OtelApi.Attributes, startTime }, async (span) => {
    try {
      return await work(span);
    } catch (error) {
      if (!failed.has(span)) recordFailure(span, error);
      throw error;
    } finally {
      span.end();
    }
  });
}

/** Spans whose failure the work recorded itself (with an outcome of its own): not recorded twice. */
const failed = new WeakSet<TraceSpan>();

/** An error class name as written in code; anything else is not repeated. */
const ERROR_NAME = /^[A-Za-z_$][\w$]{0,63}$/;
/**
 * An error code of the shapes drivers use (SQLSTATE `57P01`, Node's `ECONNREFUSED`, Redis's `NOSCRIPT`):
 * upper case, digits and `_` only, so no fragment of a token's mixed-case random part passes.
 */
const ERROR_CODE = /^[A-Z0-9_]{1,32}$/;

/**
 * Marks a span failed without the error's message or stack (a driver's message may quote a key, and keys
 * hold tokens): status ERROR with no description, `error.type` the class, `api_token.error_code` the
 * code when it has a code's shape, an `exception` event with `exception.type` only, and `outcome`
 * (default: `unavailable` for a store error, PostgreSQL did not answer or the lookup budget shed it; else `error`).
 */
export function recordFailure(span: TraceSpan, error: unknown, outcome?: string): void {
  if (span === NO_SPAN || api == null) return;
  failed.add(span);
  const name = error instanceof Error && ERROR_NAME.test(error.name) ? error.name : error instanceof Error ? 'Error' : typeof error;
  const code = errorCode(error);
  const attributes: TraceAttributes = {
    [ATTR.errorType]: name,
    [ATTR.outcome]: outcome ?? (error instanceof ApiTokenStoreError ? 'unavailable' : 'error'),
  };
  if (code !== undefined && ERROR_CODE.test(code)) attributes[ATTR.errorCode] = code;
  const real = span as OtelApi.Span;
  real.setAttributes(attributes as OtelApi.Attributes);
  real.addEvent('exception', { 'exception.type': name });
  real.setStatus({ code: api.SpanStatusCode.ERROR });
}
