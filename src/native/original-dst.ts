// Reads where an accepted, REDIRECTed connection was originally going: the one place touching Node internals.
// net.Socket has no public fd accessor (nodejs/node#4763, #8974), so `_handle.fd` is read here and nowhere else.
import { isIPv6, type Socket } from 'node:net';
import type { Family } from '../values/ip.js';
import { MeshctlError } from '../errors.js';
import { originalDst } from './addon.js';

export interface OriginalDst {
  readonly address: string;
  readonly port: number;
  readonly family: Family;
  /** 'tproxy': the accepted socket's own local endpoint (TPROXY rewrites nothing); absent: SO_ORIGINAL_DST. */
  readonly via?: 'tproxy';
}

/** The OS file descriptor of a connected socket, or -1 when it has none (closed, or not a TCP handle). */
export function socketFd(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/** The address family of the socket itself (an IPv4-mapped IPv6 address counts as IPv4). */
function socketFamily(socket: Socket): Family {
  const local = socket.localAddress;
  return local !== undefined && isIPv6(local) && !local.startsWith('::ffff:') ? 'ipv6' : 'ipv4';
}

/**
 * The original destination of `socket` (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST through the addon).
 * Throws MeshctlError NO_ORIGINAL_DST when the socket has no fd or the kernel has no NAT record for it
 * (the error's `cause` is the system error, `code` 'ENOENT' for a connection that was not tracked), and
 * ADDON_UNAVAILABLE when the addon is not built.
 */
export function readOriginalDst(socket: Socket, knownFamily?: Family): OriginalDst {
  const fd = socketFd(socket);
  // The caller may know the family (its listener's): socketFamily() costs a getsockname() per connection.
  const family = knownFamily ?? socketFamily(socket);
  const peer = () => `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
  if (fd < 0) {
    throw new MeshctlError('NO_ORIGINAL_DST', `the connection from ${peer()} has no file descriptor (already closed?)`);
  }
  try {
    const { address, port } = originalDst(fd, family === 'ipv6' ? 6 : 4);
    return { address, port, family };
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('E')) {
      throw new MeshctlError(
        'NO_ORIGINAL_DST',
        `no original destination for the connection from ${peer()} to ${socket.localAddress ?? '?'}:${socket.localPort ?? '?'} (${code})`,
        'only connections redirected by the meshctl capture rules can be proxied; check `meshctl status`',
        { cause: error },
      );
    }
    throw error;
  }
}
