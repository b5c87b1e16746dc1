// loopPeer and markedSocket (src/native/socket_owner.cc): the JS path's self-loop check and the marked upstream of a
// loop suspect, on loopback. A connection made by this process is its own uid's: unmarked a suspect, from a marked
// socket a loop; the same lookup for another uid finds nothing of its own.
import { createServer, Socket, type AddressInfo, type Server, type SocketConstructorOpts } from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAddonAvailable, loopPeer, markedSocket } from '../../src/native/addon.js';
import { socketFd } from '../../src/native/original-dst.js';

const addon = isAddonAvailable();
const uid = process.getuid?.() ?? 0;

describe.skipIf(!addon)('loopPeer and markedSocket', () => {
  let server: Server;
  let port: number;

  beforeAll(async () => {
    server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  });

  afterAll(() => {
    server.close();
  });

  /** Connects `client` to the server and returns the server's end of it. */
  async function accepted(connectClient: () => Socket): Promise<{ client: Socket; peer: Socket }> {
    const seen = once(server, 'connection');
    const client = connectClient();
    await once(client, 'connect');
    const [peer] = (await seen) as [Socket];
    return { client, peer };
  }

  it("finds an unmarked socket of the uid (a suspect), and nothing of another uid's", async () => {
    const { client, peer } = await accepted(() => new Socket().connect({ host: '127.0.0.1', port }));
    try {
      expect(loopPeer(socketFd(peer), 4, '127.0.0.1', port, uid)).toBe('suspect');
      expect(loopPeer(socketFd(peer), 4, '127.0.0.1', port, uid + 1)).toBe('not-own');
      // The peer's endpoint toward another destination is no socket at all.
      expect(loopPeer(socketFd(peer), 4, '127.0.0.1', port === 1 ? 2 : port - 1, uid)).toBe('not-own');
    } finally {
      client.destroy();
      peer.destroy();
    }
  });

  it('finds a socket made by markedSocket marked (a loop)', async () => {
    const { client, peer } = await accepted(() =>
      new Socket({ fd: markedSocket(4), manualStart: true } as SocketConstructorOpts).connect({
        host: '127.0.0.1',
        port,
      }),
    );
    try {
      expect(loopPeer(socketFd(peer), 4, '127.0.0.1', port, uid)).toBe('loop');
    } finally {
      client.destroy();
      peer.destroy();
    }
  });

  it('refuses bad arguments before the kernel sees them', () => {
    expect(() => loopPeer(-1, 4, '127.0.0.1', 80, uid)).toThrow(TypeError);
    expect(() => loopPeer(0, 4, '::1', 80, uid)).toThrow(TypeError);
    expect(() => loopPeer(0, 4, '127.0.0.1', 0, uid)).toThrow(TypeError);
    expect(() => loopPeer(0, 4, '127.0.0.1', 80, -1)).toThrow(TypeError);
    expect(() => markedSocket(5 as 4)).toThrow(TypeError);
  });
});
