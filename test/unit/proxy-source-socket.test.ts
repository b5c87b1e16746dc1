// sourceSocket (src/native/socket_options.cc): the inbound passthrough leg's socket, bound to 127.0.0.6 with
// IP_BIND_ADDRESS_NO_PORT so the kernel picks its port at connect() for the whole 4-tuple. Loopback only.
import { createServer, Socket, type AddressInfo, type SocketConstructorOpts } from 'node:net';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { isAddonAvailable, sourceSocket } from '../../src/native/addon.js';

const addon = isAddonAvailable();

describe.skipIf(!addon)('sourceSocket', () => {
  it('binds the address without a port; connect picks the port and the peer sees the address', async () => {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const seen = once(server, 'connection');
    const fd = sourceSocket(4, '127.0.0.6');
    const socket = new Socket({ fd, manualStart: true } as SocketConstructorOpts);
    try {
      // Bound, but no port yet: bind() alone would have taken one (and could not reuse one in TIME_WAIT).
      expect(socket.address()).toMatchObject({ address: '127.0.0.6', port: 0 });
      socket.connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port });
      await once(socket, 'connect');
      const [peer] = (await seen) as [Socket];
      expect(peer.remoteAddress).toBe('127.0.0.6');
      expect(peer.remotePort).toBe(socket.localPort);
      expect(socket.localPort).toBeGreaterThan(0);
      peer.destroy();
    } finally {
      socket.destroy();
      server.close();
    }
  });

  it('says EADDRNOTAVAIL for an address this host does not have (the caller connects without it)', () => {
    expect(() => sourceSocket(4, '192.0.2.77')).toThrow(
      expect.objectContaining({ code: 'EADDRNOTAVAIL', syscall: 'bind' }),
    );
  });

  it('refuses an address of the other family before the kernel sees it', () => {
    expect(() => sourceSocket(4, '::6')).toThrow(TypeError);
    expect(() => sourceSocket(6, '127.0.0.6')).toThrow(TypeError);
  });
});
