// The proxy's listening sockets: which ones to open (bound ports, or fds handed over by systemd socket
// activation) and opening them. Under node:cluster a worker's listen() is served by the primary, which binds
// the port (or wraps the inherited fd) once and shares it, so the same code runs with 1 or N processes.
// TPROXY inbound needs IP_TRANSPARENT listeners, which Node cannot make: the addon makes them (as root, before
// the proxy drops to proxy.user) and they travel as fds, exactly like socket-activated ones. The mTLS tunnel's
// listeners (`tunnel`, `tunnel6`) travel in the same list when systemd passed them; the worker hands them to the
// tunnel server instead of the plaintext accept path (a tunnel listener the proxy binds itself is not listed).
import { closeSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import type { Config } from '../config/types.js';
import type { Family } from '../values/ip.js';
import { MeshctlError } from '../errors.js';
import { isTransparent, transparentListen } from '../native/addon.js';
import type { Direction } from './metrics.js';

export type ListenerName = 'outbound' | 'inbound' | 'outbound6' | 'inbound6' | 'tunnel' | 'tunnel6';
const LISTENER_NAMES: readonly ListenerName[] = ['outbound', 'inbound', 'outbound6', 'inbound6'];
const TUNNEL_NAMES: readonly ListenerName[] = ['tunnel', 'tunnel6'];
const ALL_NAMES: readonly ListenerName[] = [...LISTENER_NAMES, ...TUNNEL_NAMES];

/** Whether `spec` is an activated mTLS tunnel listener (served by the tunnel server, not the plaintext path). */
export function isTunnelListener(spec: Pick<ListenerSpec, 'name'>): boolean {
  return spec.name === 'tunnel' || spec.name === 'tunnel6';
}

export interface ListenerSpec {
  readonly name: ListenerName;
  readonly direction: Direction;
  readonly family: Family;
  /** Bind address and port; for an activated fd, the port the config expects (informational). */
  readonly host: string;
  readonly port: number;
  /** A listening fd inherited from systemd (LISTEN_FDS) or made by openTransparentListeners, or null to bind host:port. */
  readonly fd: number | null;
  /** True when `fd` is an IP_TRANSPARENT socket this process made for TPROXY (bound to host:port). */
  readonly transparent?: boolean;
}

/** First fd systemd passes (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;
const BACKLOG = 4096;

function describe(name: ListenerName): { direction: Direction; family: Family } {
  return {
    // The tunnel serves inbound connections from peers.
    direction: name.startsWith('outbound') ? 'outbound' : 'inbound',
    family: name.endsWith('6') ? 'ipv6' : 'ipv4',
  };
}

/** How many of the activated fds are the proxy's listeners, the mTLS tunnel's and the DNS server's. */
export interface ActivatedSplit {
  readonly listeners: number;
  readonly tunnel: number;
  readonly dns: number;
}

/**
 * How `total` activated fds divide, in the order a socket unit rendered by `meshctl service install` lists them
 * (src/service/layout.ts): the proxy's TCP listeners (outbound, inbound, then outbound6, inbound6 with IPv6
 * intercept), the mTLS tunnel's (tunnel, then tunnel6; while mtls.inbound is not disable), the DNS server's
 * (capture.dns.enabled: per family a stream and a datagram socket). A unit without the tunnel's or the DNS
 * server's sockets is recognised by its count (the tunnel listener then binds its port itself); any other count
 * is taken as the proxy's listeners alone.
 */
export function splitActivatedFds(config: Pick<Config, 'capture' | 'mtls'>, total: number): ActivatedSplit {
  const families = config.capture.ipv6 === 'intercept' ? 2 : 1;
  const listeners = families * 2;
  const tunnel = config.mtls.inbound !== 'disable' ? families : 0;
  const dns = config.capture.dns.enabled ? families * 2 : 0;
  for (const split of [
    { listeners, tunnel, dns },
    { listeners, tunnel, dns: 0 },
    { listeners, tunnel: 0, dns },
  ]) {
    if (split.listeners + split.tunnel + split.dns === total) return split;
  }
  return { listeners: total, tunnel: 0, dns: 0 };
}

/**
 * The listeners for `config`. With systemd socket activation (LISTEN_PID = this process, LISTEN_FDS = n) the
 * fds 3..3+n-1 are used, named by LISTEN_FDNAMES (`outbound`, `inbound`, `outbound6`, `inbound6`, `tunnel`,
 * `tunnel6`), or taken in the order of splitActivatedFds when systemd gave no such names. Otherwise: outbound on
 * loopback (REDIRECT from OUTPUT rewrites to 127.0.0.1 / ::1), inbound on all addresses; IPv6 only when
 * capture.ipv6 is `intercept`; the tunnel listener binds mtls.tunnelPort itself (not listed).
 * Throws MeshctlError LISTEN_FAILED for inconsistent activation variables.
 */
export function planListeners(
  config: Pick<Config, 'proxy' | 'capture' | 'mtls'>,
  env: NodeJS.ProcessEnv,
  pid: number,
): ListenerSpec[] {
  const { proxy } = config;
  const portOf = (name: ListenerName) =>
    name.startsWith('outbound')
      ? proxy.outboundPort
      : name.startsWith('tunnel')
        ? config.mtls.tunnelPort
        : proxy.inboundPort;
  if (env.LISTEN_FDS !== undefined && env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) === pid) {
    // The DNS server's sockets, when the unit passes them, follow these (src/dns/server.ts activatedDnsListeners).
    const total = Number(env.LISTEN_FDS);
    const split = splitActivatedFds(config, total);
    const count = split.listeners + split.tunnel;
    if (!Number.isInteger(count) || split.listeners < 1 || split.listeners > LISTENER_NAMES.length) {
      throw new MeshctlError(
        'LISTEN_FAILED',
        `LISTEN_FDS=${env.LISTEN_FDS} from systemd socket activation: expected 1 to ${LISTENER_NAMES.length} sockets, plus the mTLS tunnel's (${TUNNEL_NAMES.join(', ')}) and the DNS server's`,
        'give the proxy socket unit one ListenStream= per listener (outbound, inbound, outbound6, inbound6), then the tunnel port per family; `meshctl service install` writes them',
      );
    }
    const given = (env.LISTEN_FDNAMES ?? '')
      .split(':')
      .filter((n) => n !== '')
      .slice(0, count);
    const known = given.filter((n): n is ListenerName => (ALL_NAMES as readonly string[]).includes(n));
    let names: ListenerName[];
    if (known.length === 0) {
      names = [...LISTENER_NAMES.slice(0, split.listeners), ...TUNNEL_NAMES.slice(0, split.tunnel)];
    } else if (known.length === count && given.length === count && new Set(known).size === count) {
      names = known;
    } else {
      throw new MeshctlError(
        'LISTEN_FAILED',
        `LISTEN_FDNAMES=${env.LISTEN_FDNAMES ?? ''} does not name ${count} distinct listeners`,
        `set FileDescriptorName= to one of ${ALL_NAMES.join(', ')} on every socket, or to none of them (positional order)`,
      );
    }
    if (names.some((n) => TUNNEL_NAMES.includes(n)) && config.mtls.inbound === 'disable') {
      throw new MeshctlError(
        'LISTEN_FAILED',
        `systemd passed the mTLS tunnel listener (LISTEN_FDNAMES=${env.LISTEN_FDNAMES ?? ''}), but mtls.inbound is "disable"`,
        'remove the tunnel port from the proxy socket unit (`meshctl service install` rewrites it), or set mtls.inbound',
      );
    }
    return names.map((name, i) => ({
      name,
      ...describe(name),
      host: '',
      port: portOf(name),
      fd: LISTEN_FDS_START + i,
    }));
  }
  const specs: ListenerSpec[] = [
    { name: 'outbound', ...describe('outbound'), host: '127.0.0.1', port: proxy.outboundPort, fd: null },
    { name: 'inbound', ...describe('inbound'), host: '0.0.0.0', port: proxy.inboundPort, fd: null },
  ];
  if (config.capture.ipv6 === 'intercept') {
    specs.push({ name: 'outbound6', ...describe('outbound6'), host: '::1', port: proxy.outboundPort, fd: null });
    specs.push({ name: 'inbound6', ...describe('inbound6'), host: '::', port: proxy.inboundPort, fd: null });
  }
  return specs;
}

/** How many of `total` activated fds are the DNS server's (the last ones; splitActivatedFds). */
export function activatedDnsCount(config: Pick<Config, 'capture' | 'mtls'>, total: number): number {
  return splitActivatedFds(config, total).dns;
}

/** Whether two listener sets bind the same sockets (so a reload can keep them). */
export function sameListeners(a: readonly ListenerSpec[], b: readonly ListenerSpec[]): boolean {
  return (
    a.length === b.length &&
    a.every((s, i) => s.name === b[i]!.name && s.host === b[i]!.host && s.port === b[i]!.port && s.fd === b[i]!.fd)
  );
}

export function listenerLabel(spec: ListenerSpec): string {
  const bound = `${spec.name} ${spec.family === 'ipv6' ? `[${spec.host}]` : spec.host}:${spec.port}`;
  if (spec.transparent) return `${bound} (transparent, fd ${spec.fd})`;
  if (spec.fd !== null) return `${spec.name} (fd ${spec.fd})`;
  return bound;
}

/** The addon calls openTransparentListeners uses (injectable for tests). */
export interface TransparentSocketOps {
  listen(family: 4 | 6, address: string, port: number, backlog: number): number;
  isTransparent(fd: number, family: 4 | 6): boolean;
  close(fd: number): void;
}

/**
 * For capture.inbound.mode `tproxy`: TPROXY delivers only to sockets with IP_TRANSPARENT, so the bound inbound
 * listeners become transparent sockets made by the addon (this needs CAP_NET_ADMIN or CAP_NET_RAW: call it
 * before dropping root). A transparent listener in `current` with the same name, host and port is kept as it
 * is, in any mode (a reload after root was dropped; it serves REDIRECTed connections just as well). Outbound
 * listeners are returned unchanged; socket-activated inbound fds are checked instead (the socket unit must set
 * Transparent=yes). Throws MeshctlError LISTEN_FAILED, after closing the sockets it made, when a socket cannot
 * be made or an activated one is not transparent.
 */
export function openTransparentListeners(
  config: Pick<Config, 'proxy' | 'capture' | 'mtls'>,
  specs: readonly ListenerSpec[],
  current: readonly ListenerSpec[] = [],
  ops: TransparentSocketOps = { listen: transparentListen, isTransparent, close: closeFd },
): ListenerSpec[] {
  const tproxy = config.capture.inbound.enabled && config.capture.inbound.mode === 'tproxy';
  const made: number[] = [];
  try {
    return specs.map((spec) => {
      // The tunnel port is never captured: its listener needs no IP_TRANSPARENT.
      if (spec.direction !== 'inbound' || isTunnelListener(spec)) return spec;
      const family = spec.family === 'ipv6' ? 6 : 4;
      if (spec.fd !== null) {
        if (tproxy && !ops.isTransparent(spec.fd, family)) {
          throw new MeshctlError(
            'LISTEN_FAILED',
            `the socket-activated ${listenerLabel(spec)} is not transparent, but capture.inbound.mode is "tproxy": TPROXY would drop every inbound connection`,
            'add Transparent=yes to the [Socket] section of the proxy socket unit (meshctl-proxy.socket) and restart the socket',
          );
        }
        return spec;
      }
      const kept = current.find(
        (c) => c.transparent && c.name === spec.name && c.host === spec.host && c.port === spec.port,
      );
      if (kept) return kept;
      if (!tproxy) return spec;
      let fd: number;
      try {
        fd = ops.listen(family, spec.host, spec.port, BACKLOG);
      } catch (error) {
        const e = error as NodeJS.ErrnoException;
        const code = e.code ?? e.message;
        const denied = code === 'EPERM' || code === 'EACCES';
        throw new MeshctlError(
          'LISTEN_FAILED',
          `cannot open the transparent inbound listener ${listenerLabel(spec)} for capture.inbound.mode "tproxy": ${e.syscall ?? 'socket'} ${code}`,
          denied
            ? 'IP_TRANSPARENT needs CAP_NET_ADMIN: start the proxy as root (it switches to proxy.user after opening its listeners), grant it AmbientCapabilities=CAP_NET_ADMIN, or use systemd socket activation with Transparent=yes; a running proxy cannot switch to tproxy on reload, restart it'
            : code === 'EADDRINUSE'
              ? `another process holds port ${spec.port}; stop it or change proxy.inboundPort`
              : 'check that the address exists on this host',
          { cause: error },
        );
      }
      made.push(fd);
      return { ...spec, fd, transparent: true };
    });
  } catch (error) {
    for (const fd of made) ops.close(fd);
    throw error;
  }
}

function closeFd(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

export interface OpenListener {
  readonly spec: ListenerSpec;
  readonly server: Server;
}

/**
 * Opens one listener. Accepted sockets start paused (read nothing until the upstream is connected), half-open
 * allowed, Nagle off. Rejects with MeshctlError LISTEN_FAILED naming the address and errno.
 */
export function openListener(
  spec: ListenerSpec,
  onConnection: (socket: Socket, spec: ListenerSpec) => void,
): Promise<OpenListener> {
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) =>
    onConnection(socket, spec),
  );
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      reject(
        new MeshctlError(
          'LISTEN_FAILED',
          `cannot listen on ${listenerLabel(spec)}: ${error.code ?? error.message}`,
          error.code === 'EADDRINUSE'
            ? `another process holds port ${spec.port}; stop it or change proxy.${spec.direction}Port`
            : spec.fd !== null
              ? 'check the socket unit: the fd must be a listening TCP stream socket'
              : 'check that the address exists on this host',
          { cause: error },
        ),
      );
    };
    server.once('error', onError);
    const ready = () => {
      server.off('error', onError);
      resolve({ spec, server });
    };
    if (spec.fd !== null) server.listen({ fd: spec.fd, backlog: BACKLOG }, ready);
    else server.listen({ host: spec.host, port: spec.port, backlog: BACKLOG, ipv6Only: spec.family === 'ipv6' }, ready);
  });
}
