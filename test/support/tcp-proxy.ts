import { once } from 'node:events';
import { type Server, type Socket, connect, createServer } from 'node:net';

/**
 * What the proxy does to the next command(s) whose words, joined by spaces, the command name in
 * upper case (`DEL api_token:app:…`), match: `error` answers `-{reply}` in its place (Redis never sees it); `hold-command` keeps it and
 * everything after it on that connection from Redis until released; `hold-reply` sends it but keeps
 * its reply and every later one on that connection from the client until released; `drop` resets the
 * connection. `times` (default 1) commands are hit.
 */
export interface RedisFault {
  match: RegExp;
  action: 'error' | 'hold-command' | 'hold-reply' | 'drop';
  reply?: string;
  times?: number;
}

/** A fault the test armed: when it was hit, and (holds) the release. */
export interface ArmedFault {
  /** Resolves when a matching command reached the proxy. */
  readonly hit: Promise<void>;
  /** Lets a held command or reply go on. */
  release(): void;
  /** Resolves once the reply to the (first) matching command has reached the client. */
  readonly replied: Promise<void>;
  /** Commands hit so far. */
  readonly hits: number;
  /** Stops hitting further commands. */
  disarm(): void;
}

interface Pending {
  /** Answered by the proxy in the command's place. */
  error?: string;
  /** The reply waits for this. */
  hold?: Promise<void>;
  /** Tells the fault its (first) command was answered. */
  replied?: () => void;
}

interface Armed extends RedisFault {
  left: number;
  hits: number;
  onHit: () => void;
  onReplied: () => void;
  released: Promise<void>;
  doRelease: () => void;
}

/** One proxied Redis connection, with RESP framing both ways so faults can pick one command and its reply. */
class RedisStream {
  private requests = Buffer.alloc(0);
  private replies = Buffer.alloc(0);
  /** One entry per command sent or answered in its place, in order: what to do with its reply. */
  private readonly pending: Pending[] = [];
  private readonly replyQueue: Buffer[] = [];
  private heldCommands: Buffer[] | null = null;
  private blocked = false;

  constructor(
    private readonly client: Socket,
    private readonly upstream: Socket,
    private readonly faults: () => Armed[],
  ) {}

  fromClient(chunk: Buffer): void {
    this.requests = Buffer.concat([this.requests, chunk]);
    for (;;) {
      const end = frameEnd(this.requests, 0);
      if (end < 0) break;
      const raw = this.requests.subarray(0, end);
      this.requests = this.requests.subarray(end);
      this.command(raw);
    }
  }

  fromServer(chunk: Buffer): void {
    this.replies = Buffer.concat([this.replies, chunk]);
    for (;;) {
      const end = frameEnd(this.replies, 0);
      if (end < 0) break;
      this.replyQueue.push(this.replies.subarray(0, end));
      this.replies = this.replies.subarray(end);
    }
    this.pump();
  }

  private command(raw: Buffer): void {
    if (this.heldCommands) {
      this.heldCommands.push(raw);
      return;
    }
    const words = commandWords(raw);
    const fault = this.faults().find((f) => f.left > 0 && f.match.test(words));
    if (!fault) return this.send(raw);
    fault.left--;
    fault.hits++;
    const replied = fault.hits === 1 ? fault.onReplied : undefined;
    fault.onHit();
    switch (fault.action) {
      case 'drop':
        this.client.resetAndDestroy();
        return;
      case 'error':
        this.pending.push({ error: fault.reply ?? 'ERR injected by the test proxy', replied });
        return this.pump();
      case 'hold-reply':
        return this.send(raw, { hold: fault.released, replied });
      case 'hold-command':
        this.heldCommands = [raw];
        void fault.released.then(() => {
          const [own, ...rest] = this.heldCommands ?? [];
          this.heldCommands = null;
          this.send(own, { replied });
          for (const next of rest) this.command(next);
        });
    }
  }

  private send(raw: Buffer, entry: Pending = {}): void {
    this.pending.push(entry);
    this.upstream.write(raw);
  }

  /** Delivers replies in order: injected errors in their place, held replies once released. */
  private pump(): void {
    while (!this.blocked) {
      const head = this.pending[0];
      if (head?.error !== undefined) {
        this.pending.shift();
        this.client.write(`-${head.error}\r\n`);
        head.replied?.();
        continue;
      }
      const reply = this.replyQueue[0];
      if (!reply) return;
      if (head?.hold) {
        const hold = head.hold;
        head.hold = undefined;
        this.blocked = true;
        void hold.then(() => {
          this.blocked = false;
          this.pump();
        });
        return;
      }
      this.replyQueue.shift();
      // Replies with no command waiting are pub/sub messages.
      if (head) this.pending.shift();
      this.client.write(reply);
      head?.replied?.();
    }
  }
}

/** The words of one RESP command (`*N` then N bulk strings), joined by spaces, the name in upper case. */
function commandWords(raw: Buffer): string {
  const text = raw.toString('latin1');
  if (!text.startsWith('*')) return text.trim();
  const words: string[] = [];
  let at = text.indexOf('\r\n') + 2;
  while (at < text.length) {
    const line = text.indexOf('\r\n', at);
    const length = Number(text.slice(at + 1, line));
    words.push(text.slice(line + 2, line + 2 + length));
    at = line + 2 + length + 2;
  }
  // Clients send command names in either case (ioredis: lower case); faults match them in upper case.
  if (words.length) words[0] = words[0].toUpperCase();
  return words.join(' ');
}

/** Where the RESP2 frame starting at `at` ends, or -1 when it is not complete yet. */
function frameEnd(buffer: Buffer, at: number): number {
  if (at >= buffer.length) return -1;
  const line = buffer.indexOf('\r\n', at, 'latin1');
  if (line < 0) return -1;
  const type = String.fromCharCode(buffer[at]);
  const count = Number(buffer.toString('latin1', at + 1, line));
  let end = line + 2;
  if (type === '$') return count < 0 ? end : end + count + 2 <= buffer.length ? end + count + 2 : -1;
  if (type === '*') {
    for (let i = 0; i < count; i++) {
      end = frameEnd(buffer, end);
      if (end < 0) return -1;
    }
    return end;
  }
  if ('+-:_,#'.includes(type)) return end;
  // An inline command (redis-cli style): one line.
  return end;
}

/**
 * A TCP proxy on a loopback port that the test controls, between the app and a server.
 * `cut('refuse')` resets every connection and every new one; `cut('hang')` keeps connections open
 * but passes nothing (a network black hole); `restore()` forwards again. For a Redis server,
 * {@link fault} picks single commands to stall, answer with an error, or drop.
 */
export class TcpProxy {
  private mode: 'open' | 'refuse' | 'hang' = 'open';
  private readonly sockets = new Set<Socket>();
  private acceptedCount = 0;
  private readonly faults: Armed[] = [];

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly resp: boolean,
  ) {}

  /** `resp`: the target is a Redis server; frame its protocol so that {@link fault} works. */
  static async start(targetHost: string, targetPort: number, { resp = false } = {}): Promise<TcpProxy> {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const proxy = new TcpProxy(server, (server.address() as { port: number }).port, resp);
    server.on('connection', (client) => proxy.accept(client, targetHost, targetPort));
    return proxy;
  }

  /** The given URL with its host and port replaced by the proxy's. */
  proxied(url: string): string {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(this.port);
    return u.toString();
  }

  get connections(): number {
    return this.sockets.size;
  }

  /** Client connections accepted since the start, refused ones included. */
  get accepted(): number {
    return this.acceptedCount;
  }

  /** Releases every held command and reply and disarms every fault (between tests). */
  clearFaults(): void {
    for (const fault of this.faults.splice(0)) {
      fault.left = 0;
      fault.doRelease();
    }
  }

  /** Arms a fault on the next matching Redis command(s) of any connection (see {@link RedisFault}). */
  fault(fault: RedisFault): ArmedFault {
    if (!this.resp) throw new Error('TcpProxy.fault needs a proxy started with { resp: true }');
    let onHit!: () => void;
    let onReplied!: () => void;
    let doRelease!: () => void;
    const hit = new Promise<void>((resolve) => (onHit = resolve));
    const replied = new Promise<void>((resolve) => (onReplied = resolve));
    const released = new Promise<void>((resolve) => (doRelease = resolve));
    const armed: Armed = { ...fault, left: fault.times ?? 1, hits: 0, onHit, onReplied, released, doRelease };
    this.faults.push(armed);
    return {
      hit,
      replied,
      release: () => doRelease(),
      get hits() {
        return armed.hits;
      },
      disarm: () => {
        armed.left = 0;
      },
    };
  }

  cut(mode: 'refuse' | 'hang' = 'refuse'): void {
    this.mode = mode;
    for (const socket of this.sockets) {
      if (mode === 'refuse') socket.resetAndDestroy();
      else socket.pause().removeAllListeners('data');
    }
  }

  restore(): void {
    this.mode = 'open';
    for (const socket of this.sockets) socket.resetAndDestroy();
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    this.server.close();
    await once(this.server, 'close');
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
  }

  private accept(client: Socket, host: string, port: number): void {
    this.acceptedCount++;
    this.track(client);
    if (this.mode === 'refuse') {
      client.resetAndDestroy();
      return;
    }
    if (this.mode === 'hang') return;
    const upstream = connect(port, host);
    this.track(upstream);
    if (this.resp) {
      const stream = new RedisStream(client, upstream, () => this.faults);
      client.on('data', (chunk: Buffer) => stream.fromClient(chunk));
      upstream.on('data', (chunk: Buffer) => stream.fromServer(chunk));
    } else {
      client.pipe(upstream);
      upstream.pipe(client);
    }
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  }
}
