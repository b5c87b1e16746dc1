// Where an accepted connection goes: outbound to its original destination, inbound to the local app from the
// passthrough source, refused when not redirected or aimed at the proxy's own ports.
import { describe, expect, it } from 'vitest';
import { LocalAddresses, routeConnection } from '../../src/proxy/routing.js';
import { hostAddresses } from '../../src/proxy/worker.js';
import type { OriginalDst } from '../../src/native/original-dst.js';

const proxy = { inboundPassthroughSource: { ipv4: '127.0.0.6', ipv6: '::6' } };
const ownPorts = new Set([15001, 15006, 15000]);
const local = new LocalAddresses(['10.1.0.5', 'fd00:1::5', 'fe80::1%eth0']);
const v4 = (address: string, port: number): OriginalDst => ({ address, port, family: 'ipv4' });
const v6 = (address: string, port: number): OriginalDst => ({ address, port, family: 'ipv6' });

describe('routeConnection', () => {
  it('connects outbound connections to their original destination without a source address', () => {
    expect(
      routeConnection(
        'outbound',
        v4('10.2.0.9', 5432),
        { localAddress: '127.0.0.1', localPort: 15001 },
        ownPorts,
        local,
        proxy,
      ),
    ).toEqual({ kind: 'connect', host: '10.2.0.9', port: 5432, localAddress: null });
  });

  it('connects inbound connections to the local app from 127.0.0.6, and from ::6 for IPv6', () => {
    expect(
      routeConnection(
        'inbound',
        v4('10.1.0.5', 8080),
        { localAddress: '10.1.0.5', localPort: 15006 },
        ownPorts,
        local,
        proxy,
      ),
    ).toEqual({ kind: 'connect', host: '10.1.0.5', port: 8080, localAddress: '127.0.0.6' });
    expect(
      routeConnection(
        'inbound',
        v6('fd00:1::5', 8080),
        { localAddress: 'fd00:1::5', localPort: 15006 },
        ownPorts,
        local,
        proxy,
      ),
    ).toEqual({ kind: 'connect', host: 'fd00:1::5', port: 8080, localAddress: '::6' });
  });

  it('refuses a connection whose original destination is the listener itself as not redirected', () => {
    expect(
      routeConnection(
        'outbound',
        v4('127.0.0.1', 15001),
        { localAddress: '127.0.0.1', localPort: 15001 },
        ownPorts,
        local,
        proxy,
      ),
    ).toEqual({ kind: 'refuse', reason: 'not-redirected' });
    expect(
      routeConnection(
        'outbound',
        v4('127.0.0.1', 15001),
        { localAddress: '::ffff:127.0.0.1', localPort: 15001 },
        ownPorts,
        local,
        proxy,
      ),
    ).toEqual({ kind: 'refuse', reason: 'not-redirected' });
  });

  it("refuses original destinations on the proxy's own ports at a local address as a self-loop", () => {
    for (const dst of [
      v4('10.1.0.5', 15006),
      v4('127.0.0.1', 15000),
      v4('127.0.0.53', 15001),
      v6('::1', 15001),
      v6('fd00:1::5', 15006),
      v6('fe80::1', 15001),
      v4('0.0.0.0', 15001),
    ]) {
      expect(
        routeConnection('outbound', dst, { localAddress: '127.0.0.1', localPort: 15001 }, ownPorts, local, proxy),
      ).toEqual({ kind: 'refuse', reason: 'self-loop' });
    }
  });

  it("lets a remote host's port that happens to equal a proxy port through", () => {
    expect(
      routeConnection(
        'outbound',
        v4('10.2.0.9', 15001),
        { localAddress: '127.0.0.1', localPort: 15001 },
        ownPorts,
        local,
        proxy,
      ),
    ).toEqual({ kind: 'connect', host: '10.2.0.9', port: 15001, localAddress: null });
  });
});

describe('LocalAddresses', () => {
  it('treats loopback, unspecified and IPv4-mapped forms of local addresses as local', () => {
    expect(local.has('127.9.9.9')).toBe(true);
    expect(local.has('::ffff:10.1.0.5')).toBe(true);
    expect(local.has('FD00:1::5')).toBe(true);
    expect(local.has('10.1.0.6')).toBe(false);
  });

  it("takes the host's interface addresses as the worker reads them", () => {
    const addresses = hostAddresses();
    expect(addresses).toContain('127.0.0.1');
    const other = addresses.find((a) => !a.startsWith('127.') && a !== '::1');
    if (other) expect(new LocalAddresses(addresses).has(other)).toBe(true);
  });
});
