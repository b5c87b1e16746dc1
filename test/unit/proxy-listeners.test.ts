// Which listeners the proxy opens: bound ports by default, systemd socket-activated fds when LISTEN_* say so.
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { isMeshctlError } from '../../src/errors.js';
import {
  isTunnelListener,
  openTransparentListeners,
  planListeners,
  sameListeners,
  splitActivatedFds,
} from '../../src/proxy/listeners.js';

const config = configFromObject({ proxy: { user: 'nobody' }, safety: { sshPorts: [22] } });
const v4only = configFromObject({
  proxy: { user: 'nobody', outboundPort: 16001 },
  capture: { ipv6: 'off' },
  safety: { sshPorts: [22] },
});

describe('planListeners', () => {
  it('binds outbound on loopback and inbound on all addresses, for both families', () => {
    expect(planListeners(config, {}, 100).map((s) => [s.name, s.host, s.port, s.fd])).toEqual([
      ['outbound', '127.0.0.1', 15001, null],
      ['inbound', '0.0.0.0', 15006, null],
      ['outbound6', '::1', 15001, null],
      ['inbound6', '::', 15006, null],
    ]);
  });

  it('opens no IPv6 listeners when IPv6 is not intercepted', () => {
    expect(planListeners(v4only, {}, 100).map((s) => `${s.name}:${s.port}`)).toEqual([
      'outbound:16001',
      'inbound:15006',
    ]);
  });

  it('uses socket-activated fds by name when LISTEN_PID is this process', () => {
    const env = { LISTEN_PID: '100', LISTEN_FDS: '3', LISTEN_FDNAMES: 'inbound:outbound:outbound6' };
    expect(planListeners(config, env, 100).map((s) => [s.name, s.direction, s.family, s.fd])).toEqual([
      ['inbound', 'inbound', 'ipv4', 3],
      ['outbound', 'outbound', 'ipv4', 4],
      ['outbound6', 'outbound', 'ipv6', 5],
    ]);
  });

  it('takes activated fds in positional order when systemd gave no listener names', () => {
    const env = { LISTEN_PID: '7', LISTEN_FDS: '2', LISTEN_FDNAMES: 'meshctl-proxy.socket:meshctl-proxy.socket' };
    expect(planListeners(config, env, 7).map((s) => [s.name, s.fd])).toEqual([
      ['outbound', 3],
      ['inbound', 4],
    ]);
  });

  it('ignores LISTEN_FDS meant for another process', () => {
    expect(planListeners(config, { LISTEN_PID: '99', LISTEN_FDS: '2' }, 100).every((s) => s.fd === null)).toBe(true);
  });

  it.each([
    ['too many fds', { LISTEN_PID: '1', LISTEN_FDS: '5' }],
    ['zero fds', { LISTEN_PID: '1', LISTEN_FDS: '0' }],
    ['a name systemd and meshctl disagree on', { LISTEN_PID: '1', LISTEN_FDS: '2', LISTEN_FDNAMES: 'outbound:dns' }],
    ['a listener named twice', { LISTEN_PID: '1', LISTEN_FDS: '2', LISTEN_FDNAMES: 'outbound:outbound' }],
  ])('rejects activation with %s as LISTEN_FAILED', (_name, env) => {
    let caught: unknown;
    try {
      planListeners(config, env, 1);
    } catch (error) {
      caught = error;
    }
    expect(isMeshctlError(caught, 'LISTEN_FAILED')).toBe(true);
  });

  describe('the mTLS tunnel listener', () => {
    const identity = {
      certificate: '/etc/meshctl/id/cert.pem',
      key: '/etc/meshctl/id/key.pem',
      bundle: '/etc/meshctl/id/b.pem',
    };
    const strict = configFromObject({
      proxy: { user: 'nobody' },
      mtls: { inbound: 'strict', tunnelPort: 15108, identity },
      safety: { sshPorts: [22] },
    });

    it('is not listed when the proxy binds its ports itself (the tunnel server binds mtls.tunnelPort)', () => {
      expect(planListeners(strict, {}, 1).some(isTunnelListener)).toBe(false);
    });

    it('takes the fds after the listeners positionally, on mtls.tunnelPort', () => {
      const specs = planListeners(strict, { LISTEN_PID: '5', LISTEN_FDS: '6' }, 5);
      expect(specs.filter(isTunnelListener).map((s) => [s.name, s.family, s.port, s.fd])).toEqual([
        ['tunnel', 'ipv4', 15108, 7],
        ['tunnel6', 'ipv6', 15108, 8],
      ]);
      expect(specs.filter((s) => !isTunnelListener(s)).map((s) => s.fd)).toEqual([3, 4, 5, 6]);
    });

    it('takes them by name too, and an older unit without them still starts (the tunnel binds its port)', () => {
      const env = { LISTEN_PID: '5', LISTEN_FDS: '3', LISTEN_FDNAMES: 'tunnel:outbound:inbound' };
      expect(planListeners(strict, env, 5).map((s) => [s.name, s.port, s.fd])).toEqual([
        ['tunnel', 15108, 3],
        ['outbound', 15001, 4],
        ['inbound', 15006, 5],
      ]);
      expect(planListeners(strict, { LISTEN_PID: '5', LISTEN_FDS: '4' }, 5).some(isTunnelListener)).toBe(false);
    });

    it('splits the fds into listeners, tunnel and DNS by the counts service install renders', () => {
      const dns = configFromObject({
        proxy: { user: 'nobody' },
        capture: { ipv6: 'off', dns: { enabled: true } },
        mtls: { inbound: 'permissive', identity },
        safety: { sshPorts: [22] },
      });
      expect(splitActivatedFds(dns, 5)).toEqual({ listeners: 2, tunnel: 1, dns: 2 });
      expect(splitActivatedFds(dns, 3)).toEqual({ listeners: 2, tunnel: 1, dns: 0 });
      expect(splitActivatedFds(dns, 4)).toEqual({ listeners: 2, tunnel: 0, dns: 2 });
      expect(splitActivatedFds(dns, 2)).toEqual({ listeners: 2, tunnel: 0, dns: 0 });
      expect(splitActivatedFds(config, 3)).toEqual({ listeners: 3, tunnel: 0, dns: 0 });
    });

    it('refuses a tunnel fd named while mtls.inbound is disable (LISTEN_FAILED)', () => {
      let caught: unknown;
      try {
        planListeners(config, { LISTEN_PID: '1', LISTEN_FDS: '3', LISTEN_FDNAMES: 'outbound:inbound:tunnel' }, 1);
      } catch (error) {
        caught = error;
      }
      expect(isMeshctlError(caught, 'LISTEN_FAILED')).toBe(true);
      expect((caught as Error).message).toContain('mtls.inbound is "disable"');
    });

    it('is never made transparent for TPROXY (the tunnel port is not captured)', () => {
      const tproxy = configFromObject({
        proxy: { user: 'nobody' },
        capture: { inbound: { mode: 'tproxy' } },
        mtls: { inbound: 'strict', identity },
        safety: { sshPorts: [22] },
      });
      const specs = planListeners(tproxy, { LISTEN_PID: '5', LISTEN_FDS: '6' }, 5);
      const checked: number[] = [];
      const ops = {
        listen: () => {
          throw new Error('nothing to bind');
        },
        isTransparent: (fd: number) => {
          checked.push(fd);
          return true;
        },
        close: () => {},
      };
      expect(openTransparentListeners(tproxy, specs, [], ops)).toEqual(specs);
      expect(checked).toEqual([4, 6]);
    });
  });

  it('tells a changed port apart from an unchanged listener set', () => {
    expect(sameListeners(planListeners(config, {}, 1), planListeners(config, {}, 2))).toBe(true);
    expect(sameListeners(planListeners(config, {}, 1), planListeners(v4only, {}, 1))).toBe(false);
  });
});
