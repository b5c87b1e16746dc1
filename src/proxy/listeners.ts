// The proxy's listening sockets: which ones to open (bound ports, or fds handed over by systemd socket
// activation) and opening them. Under node:cluster a worker's listen() is served by the primary, which binds
// the port (or wraps the inherited fd) once and shares it, so the same code runs with 1 or N processes.
import { createServer, type Server, type Socket } from 'node:net';
import type { Config } from '../config/types.js';
import type { Family } from '../capture/model.js';
import { MeshctlError } from '../errors.js';
import type { Direction } from './metrics.js';

export type ListenerName = 'outbound' | 'inbound' | 'outbound6' | 'inbound6';
export const LISTENER_NAMES: readonly ListenerName[] = ['outbound', 'inbound', 'outbound6', 'inbound6'];

export interface ListenerSpec {
  readonly name: ListenerName;
  readonly direction: Direction;
  readonly family: Family;
  /** Bind address and port; for an activated fd, the port the config expects (informational). */
  readonly host: string;
  readonly port: number;
  /** A listening fd inherited from systemd (LISTEN_FDS), or null to bind host:port. */
  readonly fd: number | null;
}

/** First fd systemd passes (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;
const BACKLOG = 4096;

function describe(name: ListenerName): { direction: Direction; family: Family } {
  return { direction: name.startsWith('outbound') ? 'outbound' : 'inbound', family: name.endsWith('6') ? 'ipv6' : 'ipv4' };
}

/**
 * The listeners for `config`. With systemd socket activation (LISTEN_PID = this process, LISTEN_FDS = n) the
 * fds 3..3+n-1 are used, named by LISTEN_FDNAMES (`outbound`, `inbound`, `outbound6`, `inbound6`), or taken
 * in that order when systemd gave no such names. Otherwise: outbound on loopback (REDIRECT from OUTPUT
 * rewrites to 127.0.0.1 / ::1), inbound on all addresses; IPv6 only when capture.ipv6 is `intercept`.
 * Throws MeshctlError LISTEN_FAILED for inconsistent activation variables.
 */
export function planListeners(config: Pick<Config, 'proxy' | 'capture'>, env: NodeJS.ProcessEnv, pid: number): ListenerSpec[] {
  const { proxy } = config;
  const portOf = (name: ListenerName) => (name.startsWith('outbound') ? proxy.outboundPort : proxy.inboundPort);
  if (env.LISTEN_FDS !== undefined && env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) === pid) {
    const count = Number(env.LISTEN_FDS);
    if (!Number.isInteger(count) || count < 1 || count > LISTENER_NAMES.length) {
      throw new MeshctlError('LISTEN_FAILED', `LISTEN_FDS=${env.LISTEN_FDS} from systemd socket activation: expected 1 to ${LISTENER_NAMES.length} sockets`,
        'give the proxy socket unit one ListenStream= per listener (outbound, inbound, outbound6, inbound6)');
    }
    const given = (env.LISTEN_FDNAMES ?? '').split(':').filter((n) => n !== '');
    const known = given.filter((n): n is ListenerName => (LISTENER_NAMES as readonly string[]).includes(n));
    let names: ListenerName[];
    if (known.length === 0) {
      names = LISTENER_NAMES.slice(0, count);
    } else if (known.length === count && given.length === count && new Set(known).size === count) {
      names = known;
    } else {
      throw new MeshctlError('LISTEN_FAILED', `LISTEN_FDNAMES=${env.LISTEN_FDNAMES ?? ''} does not name ${count} distinct listeners`,
        `set FileDescriptorName= to one of ${LISTENER_NAMES.join(', ')} on every socket, or to none of them (positional order)`);
    }
    return names.map((name, i) => ({ name, ...describe(name), host: '', port: portOf(name), fd: LISTEN_FDS_START + i }));
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

/** Whether two listener sets bind the same sockets (so a reload can keep them). */
export function sameListeners(a: readonly ListenerSpec[], b: readonly ListenerSpec[]): boolean {
  return a.length === b.length && a.every((s, i) => s.name === b[i]!.name && s.host === b[i]!.host && s.port === b[i]!.port && s.fd === b[i]!.fd);
}

export function listenerLabel(spec: ListenerSpec): string {
  if (spec.fd !== null) return `${spec.name} (fd ${spec.fd})`;
  return `${spec.name} ${spec.family === 'ipv6' ? `[${spec.host}]` : spec.host}:${spec.port}`;
}

export interface OpenListener {
  readonly spec: ListenerSpec;
  readonly server: Server;
}

/**
 * Opens one listener. Accepted sockets start paused (read nothing until the upstream is connected), half-open
 * allowed, Nagle off. Rejects with MeshctlError LISTEN_FAILED naming the address and errno.
 */
export function openListener(spec: ListenerSpec, onConnection: (socket: Socket, spec: ListenerSpec) => void): Promise<OpenListener> {
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) => onConnection(socket, spec));
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      reject(new MeshctlError('LISTEN_FAILED', `cannot listen on ${listenerLabel(spec)}: ${error.code ?? error.message}`,
        error.code === 'EADDRINUSE'
          ? `another process holds port ${spec.port}; stop it or change proxy.${spec.direction}Port`
          : spec.fd !== null ? 'check the socket unit: the fd must be a listening TCP stream socket' : 'check that the address exists on this host',
        { cause: error }));
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
