// Which listeners the proxy opens: bound ports by default, systemd socket-activated fds when LISTEN_* say so.
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { isMeshctlError } from '../../src/errors.js';
import { planListeners, sameListeners } from '../../src/proxy/listeners.js';

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

  it('tells a changed port apart from an unchanged listener set', () => {
    expect(sameListeners(planListeners(config, {}, 1), planListeners(config, {}, 2))).toBe(true);
    expect(sameListeners(planListeners(config, {}, 1), planListeners(v4only, {}, 1))).toBe(false);
  });
});
