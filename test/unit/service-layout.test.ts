// The drop-ins and default config `meshctl service install` writes, checked against the shipped units and the
// proxy's own reading of socket activation (positional LISTEN_FDS order).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { activatedDnsListeners } from '../../src/dns/server.js';
import type { HostFacts } from '../../src/config/host-facts.js';
import { activatedDnsCount, planListeners } from '../../src/proxy/listeners.js';
import {
  DEFAULT_CONFIG_TEXT,
  DEFAULT_LAYOUT,
  PACKAGE_ROOT,
  SHIPPED_UNIT_DIR,
  UNITS,
  captureEnvText,
  listenStreams,
  renderDropIns,
  stopTimeoutSeconds,
} from '../../src/service/layout.js';

const host: HostFacts = {
  userDb: {
    user: (ref) => (ref === 'meshproxy' || ref === 997 ? { name: 'meshproxy', uid: 997, gid: 997 } : null),
    group: () => ({ name: 'meshproxy', gid: 997 }),
  },
  detectSshPorts: () => ({ ports: [22], source: 'default' }),
};
const config = (raw: Record<string, unknown> = {}) =>
  configFromObject({ ...raw, proxy: { user: 'meshproxy', ...(raw.proxy as object | undefined) } }, { host });
const shipped = (unit: string) => readFileSync(join(SHIPPED_UNIT_DIR, unit), 'utf8');
const values = (text: string, key: string) =>
  text
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));

describe('service layout', () => {
  it("lists the shipped socket unit's listeners in the order the proxy reads them positionally", () => {
    const defaults = config();
    expect(values(shipped(UNITS.socket), 'ListenStream')).toEqual(listenStreams(defaults));
    const specs = planListeners(
      defaults,
      {
        LISTEN_PID: '42',
        LISTEN_FDS: '4',
        LISTEN_FDNAMES: 'meshctl-proxy.socket:meshctl-proxy.socket:meshctl-proxy.socket:meshctl-proxy.socket',
      },
      42,
    );
    expect(specs.map((s) => `${s.name}:${s.port}:${s.fd}`)).toEqual([
      'outbound:15001:3',
      'inbound:15006:4',
      'outbound6:15001:5',
      'inbound6:15006:6',
    ]);
    // Each ListenStream's port is the port of the listener at the same position.
    expect(values(shipped(UNITS.socket), 'ListenStream').map((s) => Number(s.split(':').pop()))).toEqual(
      specs.map((s) => s.port),
    );
  });

  it('opens IPv4 listeners only when IPv6 is not intercepted, on the configured ports', () => {
    const c = config({ proxy: { outboundPort: 16001, inboundPort: 16006 }, capture: { ipv6: 'block' } });
    const socket = renderDropIns(c, DEFAULT_LAYOUT).find((d) => d.unit === UNITS.socket)!;
    expect(socket.path).toBe('/etc/systemd/system/meshctl-proxy.socket.d/10-meshctl-config.conf');
    expect(values(socket.text, 'ListenStream')).toEqual(['', '127.0.0.1:16001', '0.0.0.0:16006']);
  });

  it("adds the DNS server's stream and datagram sockets after the listeners when DNS is captured, where the proxy reads them", () => {
    const c = config({ capture: { dns: { enabled: true, port: 15053 } } });
    const text = renderDropIns(c, DEFAULT_LAYOUT).find((d) => d.unit === UNITS.socket)!.text;
    const listens = text.split('\n').filter((l) => /^Listen(Stream|Datagram)=./.test(l));
    expect(listens).toEqual([
      ...listenStreams(c).map((s) => `ListenStream=${s}`),
      'ListenStream=127.0.0.1:15053',
      'ListenDatagram=127.0.0.1:15053',
      'ListenStream=[::1]:15053',
      'ListenDatagram=[::1]:15053',
    ]);
    const env = { LISTEN_PID: '42', LISTEN_FDS: String(listens.length) };
    expect(planListeners(c, env, 42).map((s) => [s.name, s.fd])).toEqual([
      ['outbound', 3],
      ['inbound', 4],
      ['outbound6', 5],
      ['inbound6', 6],
    ]);
    expect(activatedDnsListeners(c, env, 42, activatedDnsCount(c, listens.length))).toEqual([
      { family: 'ipv4', host: '127.0.0.1', port: 15053, tcpFd: 7, udpFd: 8 },
      { family: 'ipv6', host: '::1', port: 15053, tcpFd: 9, udpFd: 10 },
    ]);
    expect(renderDropIns(config(), DEFAULT_LAYOUT).find((d) => d.unit === UNITS.socket)!.text).not.toContain(
      'ListenDatagram',
    );
  });

  it('adds the mTLS tunnel port per family after the listeners (before DNS) while mtls.inbound is not disable, where the proxy reads it', () => {
    const identity = {
      certificate: '/etc/meshctl/id/cert.pem',
      key: 'credential:mtls-key',
      bundle: '/etc/meshctl/id/b.pem',
    };
    const c = config({
      mtls: { inbound: 'strict', tunnelPort: 15108, identity },
      capture: { dns: { enabled: true, port: 15053 } },
    });
    const text = renderDropIns(c, DEFAULT_LAYOUT).find((d) => d.unit === UNITS.socket)!.text;
    const listens = text.split('\n').filter((l) => /^Listen(Stream|Datagram)=./.test(l));
    expect(listens).toEqual([
      ...listenStreams(c).map((s) => `ListenStream=${s}`),
      'ListenStream=0.0.0.0:15108',
      'ListenStream=[::]:15108',
      'ListenStream=127.0.0.1:15053',
      'ListenDatagram=127.0.0.1:15053',
      'ListenStream=[::1]:15053',
      'ListenDatagram=[::1]:15053',
    ]);
    const names = listens.map(() => 'meshctl-proxy.socket').join(':');
    const env = { LISTEN_PID: '42', LISTEN_FDS: String(listens.length), LISTEN_FDNAMES: names };
    expect(planListeners(c, env, 42).map((s) => [s.name, s.direction, s.family, s.port, s.fd])).toEqual([
      ['outbound', 'outbound', 'ipv4', 15001, 3],
      ['inbound', 'inbound', 'ipv4', 15006, 4],
      ['outbound6', 'outbound', 'ipv6', 15001, 5],
      ['inbound6', 'inbound', 'ipv6', 15006, 6],
      ['tunnel', 'inbound', 'ipv4', 15108, 7],
      ['tunnel6', 'inbound', 'ipv6', 15108, 8],
    ]);
    expect(activatedDnsListeners(c, env, 42, activatedDnsCount(c, listens.length))).toEqual([
      { family: 'ipv4', host: '127.0.0.1', port: 15053, tcpFd: 9, udpFd: 10 },
      { family: 'ipv6', host: '::1', port: 15053, tcpFd: 11, udpFd: 12 },
    ]);
    // IPv4 only: one tunnel socket; permissive opens it as strict does.
    const v4 = config({ mtls: { inbound: 'permissive', identity }, capture: { ipv6: 'block' } });
    const v4Listens = values(
      renderDropIns(v4, DEFAULT_LAYOUT).find((d) => d.unit === UNITS.socket)!.text,
      'ListenStream',
    );
    expect(v4Listens).toEqual(['', '127.0.0.1:15001', '0.0.0.0:15006', '0.0.0.0:15008']);
    expect(
      planListeners(v4, { LISTEN_PID: '9', LISTEN_FDS: '3' }, 9).map((s) => `${s.name}:${s.port}:${s.fd}`),
    ).toEqual(['outbound:15001:3', 'inbound:15006:4', 'tunnel:15008:5']);
    // mtls.inbound disable: no tunnel listener, so no tunnel socket.
    const off = config({ mtls: { inbound: 'disable', identity } });
    expect(renderDropIns(off, DEFAULT_LAYOUT).find((d) => d.unit === UNITS.socket)!.text).not.toContain('15008');
  });

  it('binds capture to the proxy only in fail-open mode', () => {
    const capture = (mode: 'open' | 'closed') =>
      renderDropIns(config({ safety: { onProxyDown: mode } }), DEFAULT_LAYOUT).find((d) => d.unit === UNITS.capture)!
        .text;
    expect(values(capture('open'), 'BindsTo')).toEqual(['meshctl-proxy.service']);
    expect(capture('closed')).not.toMatch(/^(BindsTo|Requires|PartOf)=/m);
    // The shipped unit itself only Wants= the proxy, so a proxy restart never takes capture down in closed mode.
    expect(shipped(UNITS.capture)).not.toMatch(/^(BindsTo|Requires|PartOf)=/m);
    expect(values(shipped(UNITS.capture), 'Wants')).toEqual(['meshctl-proxy.service']);
    expect(values(shipped(UNITS.capture), 'After')[0]).toContain('meshctl-proxy.service');
  });

  it('bounds the proxy stop by the drain timeout plus 5 s, in the shipped unit and the drop-in', () => {
    expect(values(shipped(UNITS.proxy), 'TimeoutStopSec')).toEqual([`${stopTimeoutSeconds(config())}s`]);
    const long = config({ proxy: { drainTimeout: '90s' } });
    const proxy = renderDropIns(long, DEFAULT_LAYOUT).find((d) => d.unit === UNITS.proxy)!.text;
    expect(values(proxy, 'TimeoutStopSec')).toEqual(['95s']);
  });

  it('relaxes ProtectHome only when meshctl itself lives under a home directory', () => {
    const proxyDropIn = (root: string) =>
      renderDropIns(config(), DEFAULT_LAYOUT, root).find((d) => d.unit === UNITS.proxy)!.text;
    expect(values(proxyDropIn('/root/meshctl/'), 'ProtectHome')).toEqual(['read-only']);
    expect(values(proxyDropIn('/home/ann/src/meshctl'), 'ProtectHome')).toEqual(['read-only']);
    expect(values(proxyDropIn('/opt/meshctl/'), 'ProtectHome')).toEqual([]);
    expect(values(proxyDropIn('/homework/meshctl/'), 'ProtectHome')).toEqual([]);
  });

  it('relaxes ProtectHome for capture too when meshctl lives under a home directory', () => {
    const captureDropIn = (root: string) =>
      renderDropIns(config(), DEFAULT_LAYOUT, root).find((d) => d.unit === UNITS.capture)!.text;
    expect(values(shipped(UNITS.capture), 'ProtectHome')).toEqual(['yes']);
    expect(values(captureDropIn('/home/ann/src/meshctl'), 'ProtectHome')).toEqual(['read-only']);
    expect(captureDropIn('/home/ann/src/meshctl')).toMatch(/^\[Service\]$/m);
    expect(captureDropIn('/opt/meshctl/')).not.toMatch(/^\[Service\]$/m);
  });

  it('sandboxes capture to what the firewall needs, with a stateDir elsewhere made writable by the drop-in', () => {
    const unit = shipped(UNITS.capture);
    expect(values(unit, 'CapabilityBoundingSet')).toEqual(['CAP_NET_ADMIN CAP_NET_RAW']);
    expect(values(unit, 'ProtectSystem')).toEqual(['strict']);
    expect(values(unit, 'StateDirectory')).toEqual(['meshctl']);
    expect(`/var/lib/${values(unit, 'StateDirectory')[0]}`).toBe(config().stateDir);
    expect(values(unit, 'ReadWritePaths')).toEqual(['-/run/xtables.lock']);
    expect(values(unit, 'RestrictAddressFamilies')).toEqual(['AF_UNIX AF_NETLINK AF_INET AF_INET6']);
    expect(values(unit, 'ProtectKernelTunables')).toEqual(['yes']);
    const capture = (stateDir: string) =>
      renderDropIns(config({ stateDir }), DEFAULT_LAYOUT, '/opt/meshctl/').find((d) => d.unit === UNITS.capture)!.text;
    expect(values(capture('/var/lib/meshctl/'), 'ReadWritePaths')).toEqual([]);
    expect(values(capture('/srv/meshctl-state'), 'ReadWritePaths')).toEqual(['/srv/meshctl-state']);
    expect(capture('/srv/meshctl-state')).toMatch(
      /^\[Service\]\n# stateDir = \/srv\/meshctl-state: .*\nReadWritePaths=\/srv\/meshctl-state\n$/m,
    );
  });

  it('grants the proxy CAP_NET_ADMIN and transparent sockets only in tproxy mode; every other mode stays capability-free', () => {
    const dropIns = (raw: Record<string, unknown>) => {
      const all = renderDropIns(config(raw), DEFAULT_LAYOUT, '/opt/meshctl/');
      return {
        proxy: all.find((d) => d.unit === UNITS.proxy)!.text,
        socket: all.find((d) => d.unit === UNITS.socket)!.text,
      };
    };
    const tproxy = dropIns({ capture: { inbound: { mode: 'tproxy' } } });
    expect(values(tproxy.proxy, 'AmbientCapabilities')).toEqual(['CAP_NET_ADMIN']);
    expect(values(tproxy.proxy, 'CapabilityBoundingSet')).toEqual(['CAP_NET_ADMIN']);
    // A private user namespace would keep the capability away from the host's network namespace.
    expect(values(tproxy.proxy, 'PrivateUsers')).toEqual(['no']);
    // sock_diag (self-loop check, admin API, TPROXY's port check) is netlink: the shipped unit allows it in every mode.
    expect(values(tproxy.proxy, 'RestrictAddressFamilies')).toEqual([]);
    expect(values(shipped(UNITS.proxy), 'RestrictAddressFamilies')).toEqual(['AF_INET AF_INET6 AF_UNIX AF_NETLINK']);
    expect(values(tproxy.socket, 'Transparent')).toEqual(['yes']);
    for (const raw of [
      {},
      { capture: { inbound: { mode: 'redirect' } } },
      { capture: { inbound: { mode: 'tproxy', enabled: false } } },
      { capture: { ipv6: 'block', dns: { enabled: true } } },
    ]) {
      const other = dropIns(raw);
      expect(other.proxy, JSON.stringify(raw)).not.toMatch(
        /^(AmbientCapabilities|CapabilityBoundingSet|PrivateUsers|RestrictAddressFamilies)=/m,
      );
      expect(other.socket, JSON.stringify(raw)).not.toMatch(/^Transparent=/m);
    }
    // The shipped unit grants nothing; only the tproxy drop-in above overrides that.
    expect(values(shipped(UNITS.proxy), 'AmbientCapabilities')).toEqual(['']);
    expect(values(shipped(UNITS.proxy), 'CapabilityBoundingSet')).toEqual(['']);
  });

  it('writes a default config that loads and names the sysusers user', () => {
    const c = configFromObject(parse(DEFAULT_CONFIG_TEXT), { host });
    expect(c.proxy.user.name).toBe('meshproxy');
    expect(c.safety.onProxyDown).toBe('closed');
    expect(readFileSync(join(SHIPPED_UNIT_DIR, 'meshctl.sysusers.conf'), 'utf8')).toMatch(/^u\s+meshproxy\s/m);
    expect(values(shipped(UNITS.proxy), 'User')).toEqual(['meshproxy']);
  });

  it('passes --confirm-within to the next capture start only through the /run environment file', () => {
    expect(captureEnvText('60s')).toContain('MESHCTL_INSTALL_ARGS=--confirm-within 60s\n');
    expect(captureEnvText(null)).toMatch(/^MESHCTL_INSTALL_ARGS=$/m);
    expect(DEFAULT_LAYOUT.captureEnvFile.startsWith('/run/')).toBe(true);
    expect(values(shipped(UNITS.capture), 'EnvironmentFile')).toEqual([`-${DEFAULT_LAYOUT.captureEnvFile}`]);
    expect(PACKAGE_ROOT.endsWith('/')).toBe(true);
  });
});
