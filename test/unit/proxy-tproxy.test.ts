// TPROXY inbound in the proxy without a namespace: the addon's transparent listener (arguments, errors, a real
// IP_TRANSPARENT socket on loopback when run as root), which listeners become transparent, and how a TPROXY'd
// connection's destination is read and routed. The kernel path (mangle TPROXY + policy routing) is covered in
// test/integration/proxy-tproxy.test.ts.
import { closeSync, openSync, readdirSync, readlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect, createServer, Socket, type AddressInfo, type Server, type SocketConstructorOpts } from 'node:net';
import { constants } from 'node:os';
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { isMeshctlError, type MeshctlError } from '../../src/errors.js';
import { isTransparent, transparentListen, transparentSocket } from '../../src/native/addon.js';
import {
  listenerLabel,
  openTransparentListeners,
  planListeners,
  type TransparentSocketOps,
} from '../../src/proxy/listeners.js';
import { LocalAddresses, routeConnection, transparentDestination } from '../../src/proxy/routing.js';

const binding = createRequire(import.meta.url)('../../build/Release/meshctl_native.node') as {
  transparentListen: (...args: unknown[]) => unknown;
  isTransparent: (...args: unknown[]) => unknown;
  transparentSocket: (...args: unknown[]) => unknown;
};

const base = { proxy: { user: 'nobody' }, safety: { sshPorts: [22] } };
const redirect = configFromObject(base);
const tproxy = configFromObject({ ...base, capture: { inbound: { mode: 'tproxy' } } });
const tproxyOff = configFromObject({ ...base, capture: { inbound: { mode: 'tproxy', enabled: false } } });
const isRoot = process.getuid?.() === 0;

/** The socket fds this process has open (from /proc/self/fd). */
function socketFds(): string[] {
  return readdirSync('/proc/self/fd').flatMap((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:') ? [fd] : [];
    } catch {
      return [];
    }
  });
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected a throw');
}

/** Records what openTransparentListeners asks of the addon; `fail` makes listen() throw for one address. */
function fakeOps(
  options: { fail?: { host: string; code: string; syscall: string }; transparentFds?: readonly number[] } = {},
) {
  let next = 40;
  const calls: string[] = [];
  const closed: number[] = [];
  const ops: TransparentSocketOps = {
    listen(family, address, port, backlog) {
      calls.push(`listen ${family} ${address} ${port} ${backlog}`);
      if (options.fail?.host === address) {
        throw Object.assign(new Error(`${options.fail.syscall} failed`), {
          code: options.fail.code,
          syscall: options.fail.syscall,
          errno: 1,
        });
      }
      return next++;
    },
    isTransparent(fd) {
      calls.push(`isTransparent ${fd}`);
      return (options.transparentFds ?? []).includes(fd);
    },
    close(fd) {
      closed.push(fd);
    },
  };
  return { ops, calls, closed };
}

describe('transparentListen and isTransparent argument validation', () => {
  it.each([
    ['family 5', [5, '0.0.0.0', 15006, 128]],
    ['an IPv6 address for family 4', [4, '::', 15006, 128]],
    ['an IPv4 address for family 6', [6, '0.0.0.0', 15006, 128]],
    ['a host name', [4, 'localhost', 15006, 128]],
    ['port 65536', [4, '0.0.0.0', 65536, 128]],
    ['a fractional port', [4, '0.0.0.0', 1.5, 128]],
    ['a port given as a string', [4, '0.0.0.0', '15006', 128]],
    ['backlog 0', [4, '0.0.0.0', 15006, 0]],
  ])('transparentListen rejects %s with a TypeError before reaching the addon', (_name, args) => {
    expect(() => (transparentListen as (...a: unknown[]) => number)(...args)).toThrow(TypeError);
  });

  it('isTransparent rejects a bad fd or family with a TypeError', () => {
    expect(() => isTransparent(-1, 4)).toThrow(TypeError);
    expect(() => isTransparent(1.5, 4)).toThrow(TypeError);
    expect(() => isTransparent(3, 5 as 4)).toThrow(TypeError);
  });

  it('the addon itself rejects wrong arguments with a TypeError instead of aborting', () => {
    expect(() => binding.transparentListen()).toThrow(TypeError);
    expect(() => binding.transparentListen('4', '0.0.0.0', 1, 1)).toThrow(TypeError);
    expect(() => binding.transparentListen(4, 'not-an-address', 1, 1)).toThrow(TypeError);
    expect(() => binding.transparentListen(6, '127.0.0.1', 1, 1)).toThrow(TypeError);
    expect(() => binding.transparentListen(4, '0.0.0.0', 70000, 1)).toThrow(TypeError);
    expect(() => binding.transparentListen(4, '0.0.0.0', 1, 0)).toThrow(TypeError);
    expect(() => binding.isTransparent()).toThrow(TypeError);
    expect(() => binding.isTransparent(-3, 4)).toThrow(TypeError);
    expect(() => binding.isTransparent(3, 7)).toThrow(TypeError);
  });
});

describe('transparentSocket (the inbound leg from the peer address)', () => {
  it.each([
    ['family 5', [5, '192.0.2.7', 0, '192.0.2.1', 80]],
    ['an IPv6 address for family 4', [4, '::1', 0, '192.0.2.1', 80]],
    ['a destination of the other family', [4, '192.0.2.7', 0, '::1', 80]],
    ['a host name', [6, 'localhost', 0, '::1', 80]],
    ['a negative mark', [4, '192.0.2.7', -1, '192.0.2.1', 80]],
    ['a mark above 32 bits', [4, '192.0.2.7', 2 ** 32, '192.0.2.1', 80]],
    ['destination port 0', [4, '192.0.2.7', 0, '192.0.2.1', 0]],
  ])('rejects %s with a TypeError before reaching the addon', (_name, args) => {
    expect(() => (transparentSocket as (...a: unknown[]) => number)(...args)).toThrow(TypeError);
  });

  it('the addon itself rejects wrong arguments with a TypeError instead of aborting', () => {
    expect(() => binding.transparentSocket()).toThrow(TypeError);
    expect(() => binding.transparentSocket(4, 'nope', 0, '192.0.2.1', 80)).toThrow(TypeError);
    expect(() => binding.transparentSocket(6, '192.0.2.7', 0, '::1', 80)).toThrow(TypeError);
    expect(() => binding.transparentSocket(4, '192.0.2.7', 0, '192.0.2.1', 70000)).toThrow(TypeError);
  });

  it.skipIf(!isRoot).each([
    [4, '192.0.2.77', '127.0.0.1'],
    [6, '2001:db8::77', '::1'],
  ] as const)(
    'binds IPv%s to an address this host does not have, on a port of its own, for Node to connect',
    (family, address, dst) => {
      const fd = transparentSocket(family, address, 0x539, dst, 9);
      const socket = new Socket({ fd, manualStart: true } as SocketConstructorOpts);
      try {
        expect(isTransparent(fd, family)).toBe(true);
        const bound = socket.address() as AddressInfo;
        expect(bound.address).toBe(address);
        expect(bound.port).toBeGreaterThan(0);
      } finally {
        socket.destroy();
      }
    },
  );
});

describe('isTransparent on real sockets', () => {
  it('reports getsockopt on a file as ENOTSOCK with errno and syscall', () => {
    const fd = openSync(new URL(import.meta.url), 'r');
    try {
      expect(caught(() => isTransparent(fd, 4))).toMatchObject({
        errno: constants.errno.ENOTSOCK,
        code: 'ENOTSOCK',
        syscall: 'getsockopt',
      });
    } finally {
      closeSync(fd);
    }
  });

  it('says false for a listener Node opened itself', async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
    try {
      const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
      expect(isTransparent(fd, 4)).toBe(false);
    } finally {
      server.close();
    }
  });
});

describe.skipIf(!isRoot)('transparentListen as root (an IP_TRANSPARENT listener on loopback)', () => {
  it('returns a bound, listening, transparent fd that Node serves with listen({ fd })', async () => {
    const fd = transparentListen(4, '127.0.0.1', 0, 16);
    expect(isTransparent(fd, 4)).toBe(true);
    const server: Server = createServer((socket) => socket.end(`${socket.localPort}`));
    await new Promise<void>((resolve) => server.listen({ fd }, resolve));
    try {
      const { port } = server.address() as AddressInfo;
      expect(port).toBeGreaterThan(0);
      const reply = await new Promise<string>((resolve, reject) => {
        let text = '';
        connect({ host: '127.0.0.1', port })
          .setEncoding('utf8')
          .on('data', (d: string) => (text += d))
          .on('end', () => resolve(text))
          .on('error', reject);
      });
      expect(reply).toBe(String(port));
    } finally {
      server.close();
    }
  });

  it('makes IPv6 listeners v6-only, so the IPv4 listener can own the same port', () => {
    const fd6 = transparentListen(6, '::', 0, 16);
    try {
      expect(isTransparent(fd6, 6)).toBe(true);
    } finally {
      closeSync(fd6);
    }
  });

  it('reports a port already in use as EADDRINUSE from bind and leaves no socket behind', async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
    try {
      const { port } = server.address() as AddressInfo;
      // Sockets are only ever opened on this (main) thread, so the count cannot move under the test's feet.
      const before = socketFds();
      expect(caught(() => transparentListen(4, '127.0.0.1', port, 16))).toMatchObject({
        code: 'EADDRINUSE',
        syscall: 'bind',
        errno: constants.errno.EADDRINUSE,
      });
      expect(socketFds()).toEqual(before);
    } finally {
      server.close();
    }
  });
});

describe('openTransparentListeners', () => {
  it('leaves every listener alone in redirect mode', () => {
    const specs = planListeners(redirect, {}, 1);
    const { ops, calls } = fakeOps();
    expect(openTransparentListeners(redirect, specs, [], ops)).toEqual(specs);
    expect(calls).toEqual([]);
  });

  it('leaves every listener alone when inbound capture is off, even with mode tproxy', () => {
    const specs = planListeners(tproxyOff, {}, 1);
    const { ops, calls } = fakeOps();
    expect(openTransparentListeners(tproxyOff, specs, [], ops)).toEqual(specs);
    expect(calls).toEqual([]);
  });

  it('makes both inbound listeners transparent sockets in tproxy mode and keeps outbound bound by Node', () => {
    const specs = planListeners(tproxy, {}, 1);
    const { ops, calls } = fakeOps();
    const out = openTransparentListeners(tproxy, specs, [], ops);
    expect(calls).toEqual(['listen 4 0.0.0.0 15006 4096', 'listen 6 :: 15006 4096']);
    expect(out.map((s) => [s.name, s.fd, s.transparent ?? false])).toEqual([
      ['outbound', null, false],
      ['inbound', 40, true],
      ['outbound6', null, false],
      ['inbound6', 41, true],
    ]);
    expect(out.map(listenerLabel)).toEqual([
      'outbound 127.0.0.1:15001',
      'inbound 0.0.0.0:15006 (transparent, fd 40)',
      'outbound6 [::1]:15001',
      'inbound6 [::]:15006 (transparent, fd 41)',
    ]);
  });

  it('keeps the transparent listeners of the running config on reload, in either mode, without new sockets', () => {
    const { ops, calls } = fakeOps();
    const running = openTransparentListeners(tproxy, planListeners(tproxy, {}, 1), [], ops);
    calls.length = 0;
    const again = openTransparentListeners(tproxy, planListeners(tproxy, {}, 1), running, ops);
    expect(again).toEqual(running);
    expect(openTransparentListeners(redirect, planListeners(redirect, {}, 1), running, ops)).toEqual(running);
    expect(calls).toEqual([]);
  });

  it('opens a new transparent socket when the inbound port moved', () => {
    const { ops } = fakeOps();
    const running = openTransparentListeners(tproxy, planListeners(tproxy, {}, 1), [], ops);
    const moved = configFromObject({
      ...base,
      proxy: { user: 'nobody', inboundPort: 16006 },
      capture: { inbound: { mode: 'tproxy' } },
    });
    const out = openTransparentListeners(moved, planListeners(moved, {}, 1), running, ops);
    expect(out.filter((s) => s.transparent).map((s) => [s.port, s.fd])).toEqual([
      [16006, 42],
      [16006, 43],
    ]);
  });

  it('fails with LISTEN_FAILED naming IP_TRANSPARENT and CAP_NET_ADMIN without the privilege, closing what it made', () => {
    const { ops, closed } = fakeOps({ fail: { host: '::', code: 'EPERM', syscall: 'setsockopt(IPV6_TRANSPARENT)' } });
    const error = caught(() => openTransparentListeners(tproxy, planListeners(tproxy, {}, 1), [], ops)) as MeshctlError;
    expect(isMeshctlError(error, 'LISTEN_FAILED')).toBe(true);
    expect(error.message).toContain('inbound6 [::]:15006');
    expect(error.message).toContain('setsockopt(IPV6_TRANSPARENT) EPERM');
    expect(error.hint).toContain('CAP_NET_ADMIN');
    expect(error.hint).toContain('Transparent=yes');
    expect(closed).toEqual([40]);
  });

  it('names the port when it is in use', () => {
    const { ops } = fakeOps({ fail: { host: '0.0.0.0', code: 'EADDRINUSE', syscall: 'bind' } });
    const error = caught(() => openTransparentListeners(tproxy, planListeners(tproxy, {}, 1), [], ops)) as MeshctlError;
    expect(error.code).toBe('LISTEN_FAILED');
    expect(error.hint).toContain('another process holds port 15006');
  });

  it('accepts socket-activated inbound fds only when they are transparent', () => {
    const env = { LISTEN_PID: '9', LISTEN_FDS: '4' };
    const activated = planListeners(tproxy, env, 9);
    const good = fakeOps({ transparentFds: [4, 6] });
    expect(openTransparentListeners(tproxy, activated, [], good.ops)).toEqual(activated);
    expect(good.calls).toEqual(['isTransparent 4', 'isTransparent 6']);

    const bad = fakeOps({ transparentFds: [4] });
    const error = caught(() => openTransparentListeners(tproxy, activated, [], bad.ops)) as MeshctlError;
    expect(error.code).toBe('LISTEN_FAILED');
    expect(error.message).toContain('inbound6 (fd 6) is not transparent');
    expect(error.hint).toContain('Transparent=yes');
    // In redirect mode nobody asks.
    const plain = fakeOps();
    expect(openTransparentListeners(redirect, planListeners(redirect, env, 9), [], plain.ops)).toHaveLength(4);
    expect(plain.calls).toEqual([]);
  });
});

describe('TPROXY destinations and routing', () => {
  const proxy = { inboundPassthroughSource: { ipv4: '127.0.0.6', ipv6: '::6' } };
  const ownPorts = new Set([15000, 15001, 15006]);
  const local = new LocalAddresses(['10.1.0.5', 'fd00:1::5']);

  it("takes the accepted socket's local endpoint as the original destination", () => {
    expect(transparentDestination({ localAddress: '10.1.0.5', localPort: 8080 }, 'ipv4', 15006)).toEqual({
      address: '10.1.0.5',
      port: 8080,
      family: 'ipv4',
      via: 'tproxy',
    });
    expect(transparentDestination({ localAddress: 'FD00:1::5', localPort: 443 }, 'ipv6', 15006)).toEqual({
      address: 'fd00:1::5',
      port: 443,
      family: 'ipv6',
      via: 'tproxy',
    });
  });

  it('leaves a connection on the inbound port itself to SO_ORIGINAL_DST (nat path, or a direct connection)', () => {
    expect(transparentDestination({ localAddress: '127.0.0.1', localPort: 15006 }, 'ipv4', 15006)).toBeNull();
    expect(transparentDestination({ localAddress: '10.1.0.5', localPort: 15006 }, 'ipv4', 15006)).toBeNull();
    expect(transparentDestination({ localAddress: '', localPort: 0 }, 'ipv4', 15006)).toBeNull();
  });

  it('connects a TPROXY\'d connection to the local app from the passthrough source, not as "not redirected"', () => {
    const acceptedOn = { localAddress: '10.1.0.5', localPort: 8080 };
    const dst = transparentDestination(acceptedOn, 'ipv4', 15006)!;
    expect(routeConnection('inbound', dst, acceptedOn, ownPorts, local, proxy)).toEqual({
      kind: 'connect',
      host: '10.1.0.5',
      port: 8080,
      localAddress: '127.0.0.6',
    });
    const acceptedOn6 = { localAddress: 'fd00:1::5', localPort: 8080 };
    expect(
      routeConnection(
        'inbound',
        transparentDestination(acceptedOn6, 'ipv6', 15006)!,
        acceptedOn6,
        ownPorts,
        local,
        proxy,
      ),
    ).toEqual({ kind: 'connect', host: 'fd00:1::5', port: 8080, localAddress: '::6' });
  });

  it("connects a TPROXY'd connection from the peer's own address when the peer is known", () => {
    const acceptedOn = { localAddress: '10.1.0.5', localPort: 8080 };
    const dst = transparentDestination(acceptedOn, 'ipv4', 15006)!;
    const peer = { address: '::ffff:10.9.0.2', mark: 0x539 };
    expect(routeConnection('inbound', dst, acceptedOn, ownPorts, local, proxy, peer)).toEqual({
      kind: 'connect',
      host: '10.1.0.5',
      port: 8080,
      localAddress: null,
      transparentSource: { address: '10.9.0.2', mark: 0x539 },
    });
    // A connection that came through nat REDIRECT (the proxy calling its own address) keeps the passthrough source.
    const redirected = { address: '10.1.0.5', port: 8080, family: 'ipv4' as const };
    expect(
      routeConnection(
        'inbound',
        redirected,
        { localAddress: '127.0.0.1', localPort: 15006 },
        ownPorts,
        local,
        proxy,
        peer,
      ),
    ).toMatchObject({ localAddress: '127.0.0.6' });
    expect(
      routeConnection(
        'inbound',
        redirected,
        { localAddress: '127.0.0.1', localPort: 15006 },
        ownPorts,
        local,
        proxy,
        peer,
      ),
    ).not.toHaveProperty('transparentSource');
  });

  it("refuses a TPROXY'd connection aimed at another proxy port as a self-loop", () => {
    for (const port of [15000, 15001]) {
      const acceptedOn = { localAddress: '10.1.0.5', localPort: port };
      expect(
        routeConnection(
          'inbound',
          transparentDestination(acceptedOn, 'ipv4', 15006)!,
          acceptedOn,
          ownPorts,
          local,
          proxy,
        ),
      ).toEqual({ kind: 'refuse', reason: 'self-loop' });
    }
  });
});
