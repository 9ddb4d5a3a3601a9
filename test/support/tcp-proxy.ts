import { once } from 'node:events';
import { type Server, type Socket, connect, createServer } from 'node:net';

/**
 * A TCP proxy on a loopback port that the test controls, between the app and a server.
 * `cut('refuse')` resets every connection and every new one; `cut('hang')` keeps connections open
 * but passes nothing (a network black hole); `restore()` forwards again.
 */
export class TcpProxy {
  private mode: 'open' | 'refuse' | 'hang' = 'open';
  private readonly sockets = new Set<Socket>();
  private acceptedCount = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(targetHost: string, targetPort: number): Promise<TcpProxy> {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const proxy = new TcpProxy(server, (server.address() as { port: number }).port);
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
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  }
}
