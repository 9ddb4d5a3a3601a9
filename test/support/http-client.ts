import type { INestApplication } from '@nestjs/common';
import { Agent, request } from 'node:http';
import { connect } from 'node:net';

/** The app listening on a loopback port of its own; returns the port. */
export async function listen(app: INestApplication): Promise<number> {
  await app.listen(0, '127.0.0.1');
  return (app.getHttpServer().address() as { port: number }).port;
}

export interface Answer {
  status: number;
  ms: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A keep-alive GET with a bearer token, timed. */
export function get(port: number, path: string, token: string | undefined, agent?: Agent): Promise<Answer> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path, agent, headers: token === undefined ? {} : { authorization: `Bearer ${token}` } },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - started, headers: res.headers, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/**
 * Sends `GET {path}` with the raw bytes of one Authorization header value over a new socket and
 * resolves with the status code of the answer (0 when the connection closed with no answer).
 */
export function rawAuthorization(port: number, path: string, value: Buffer): Promise<{ status: number; raw: string }> {
  return rawRequest(port, path, Buffer.concat([Buffer.from('Authorization: ', 'latin1'), value]));
}

/** Sends `GET {path}` with the raw bytes of its header lines (CRLF-separated, no final CRLF) over a new socket. */
export function rawRequest(port: number, path: string, headerLines: Buffer): Promise<{ status: number; raw: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    socket.setTimeout(5000, () => socket.destroy());
    const chunks: Buffer[] = [];
    socket.on('connect', () => {
      socket.write(
        Buffer.concat([
          Buffer.from(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n`, 'latin1'),
          headerLines,
          Buffer.from('\r\nConnection: close\r\n\r\n', 'latin1'),
        ]),
      );
    });
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', (error: NodeJS.ErrnoException) => (error.code === 'ECONNRESET' || error.code === 'EPIPE' ? undefined : reject(error)));
    socket.on('close', () => {
      const raw = Buffer.concat(chunks).toString('latin1');
      const match = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
      resolve({ status: match ? Number(match[1]) : 0, raw });
    });
  });
}
