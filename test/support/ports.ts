import { once } from 'node:events';
import { createServer } from 'node:net';

/** A free TCP port on the loopback interface (free when asked; the caller binds it soon after). */
export async function sparePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

/** Whether nothing listens on `port` of the loopback interface. */
export async function isFree(port: number): Promise<boolean> {
  const server = createServer();
  server.listen(port, '127.0.0.1');
  try {
    await Promise.race([once(server, 'listening'), once(server, 'error').then(([e]) => Promise.reject(e))]);
    server.close();
    await once(server, 'close');
    return true;
  } catch {
    return false;
  }
}
