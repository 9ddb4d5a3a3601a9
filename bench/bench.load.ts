import autocannon from 'autocannon';
import { Agent, request } from 'node:http';

/** One load run's figures; latencies in milliseconds, from every response (autocannon's own histogram keeps whole ms of 2xx only). */
export interface LoadResult {
  requests: number;
  ok: number;
  unauthorized: number;
  other: number;
  errors: number;
  seconds: number;
  rps: number;
  p50: number;
  p99: number;
}

export interface LoadOptions {
  url: string;
  connections: number;
  /** Seconds; ignored when `amount` or `until` is given. */
  duration?: number;
  /** Stop after this many requests. */
  amount?: number;
  /** Stop when this settles. */
  until?: Promise<unknown>;
  /** A fixed Authorization header. */
  authorization?: string;
  /** An Authorization header per request (overrides `authorization`). */
  nextAuthorization?: () => string;
  /** Other headers of every request. */
  headers?: Record<string, string>;
}

/** Runs autocannon against one URL. */
export async function load(options: LoadOptions): Promise<LoadResult> {
  const latencies: number[] = [];
  const status = { ok: 0, unauthorized: 0, other: 0 };
  const headers = options.authorization || options.headers ? { ...options.headers, ...(options.authorization ? { authorization: options.authorization } : {}) } : undefined;
  const next = options.nextAuthorization;
  let instance!: autocannon.Instance;
  const started = performance.now();
  let last = started;
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    instance = autocannon(
      {
        url: options.url,
        connections: options.connections,
        duration: options.until || options.amount ? 3600 : (options.duration ?? 5),
        amount: options.amount,
        headers,
        requests: next ? [{ setupRequest: (req) => ({ ...req, headers: { ...req.headers, authorization: next() } }) }] : undefined,
      },
      (error, result) => (error ? reject(error) : resolve(result)),
    );
    instance.on('response', (_client: unknown, statusCode: number, _bytes: number, responseTime: number) => {
      latencies.push(responseTime);
      last = performance.now();
      if (statusCode >= 200 && statusCode < 300) status.ok++;
      else if (statusCode === 401) status.unauthorized++;
      else status.other++;
    });
    void options.until?.finally(() => instance.stop());
  });
  // Up to the last answer: autocannon reports 'done' at its next one-second tick, not when the last request ends.
  const seconds = (last - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    requests: latencies.length,
    ...status,
    errors: result.errors + result.timeouts,
    seconds,
    rps: latencies.length / seconds,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
  };
}

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/**
 * Sends `count` requests to each URL at once, over sockets opened beforehand with a request to
 * `warmPath` (so they all arrive together), and resolves with the status codes.
 */
export async function burst(urls: string[], count: number, authorization: string, warmPath: string): Promise<number[]> {
  const agents = urls.map(() => new Agent({ keepAlive: true, maxSockets: count, maxFreeSockets: count }));
  const each = <T>(run: (agent: Agent, url: URL) => Promise<T>) =>
    Promise.all(urls.flatMap((url, i) => Array.from({ length: count }, () => run(agents[i], new URL(url)))));
  try {
    await each((agent, url) => get(agent, new URL(warmPath, url), undefined));
    return await each((agent, url) => get(agent, url, authorization));
  } finally {
    for (const agent of agents) agent.destroy();
  }
}

/** One GET; resolves with the status once the body is read. */
export function get(agent: Agent | undefined, url: URL, authorization: string | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent, headers: authorization ? { authorization } : {} }, (res) => {
      res.resume();
      res.once('end', () => resolve(res.statusCode ?? 0));
    });
    req.once('error', reject);
    req.end();
  });
}

/** The `q` quantile (0 to 1) of numbers sorted ascending: the value at that rank, no interpolation. */
export const quantile = (sorted: readonly number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

/** The median of some numbers. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
