// Typed loader for the native addon (build/Release/meshctl_native.node, built by `npm ci` through node-gyp):
// originalDst for REDIRECTed connections, transparentListen / isTransparent for TPROXY's inbound listeners,
// transparentSocket (TPROXY's inbound leg from the peer's address) with keepCapabilities / retainNetAdmin (the
// capability it needs, kept across the switch to proxy.user), peerOwner (who made a connection: the proxy's
// self-loop check), trimMalloc (freed memory back to the kernel), and the Relay thread (src/native/relay.cc)
// that moves the bytes of established connections, with its table of end codes.
// All argument validation happens here, before the C++ side sees a value; the addon's own errors carry
// `errno` and `syscall`, and this module adds Node's usual `code` ('ENOENT', ...) to them.
import { createRequire } from 'node:module';
import { isIPv4, isIPv6 } from 'node:net';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { MeshctlError } from '../errors.js';

export type AddonFamily = 4 | 6;

export interface OriginalDstResult {
  readonly address: string;
  readonly port: number;
}

/** A failed system call in the addon, shaped like Node's own system errors. */
export interface NativeSystemError extends Error {
  errno: number;
  code: string;
  syscall: string;
}

/**
 * The addon's relay thread (src/native/relay.cc). `onEnded` receives finished pairs as a flat Float64Array,
 * relayRecordFields() numbers each: id, bytes from client, bytes from upstream, end code, side (0 client,
 * 1 upstream), errno.
 */
export interface NativeRelay {
  /** Takes duplicates of both fds (the caller closes its own); bounds in ms, -1 = none; keepalive in s, -1 = off. */
  adopt(
    id: number,
    clientFd: number,
    upstreamFd: number,
    maxRemainingMs: number,
    idleMs: number,
    halfCloseMs: number,
    keepaliveSec: number,
  ): void;
  /** Closes the pair now (RST to both peers when `reset`); false if it had already ended. */
  abort(id: number, reset: boolean): boolean;
  /** Fills `out` with [bytes from client, bytes from upstream, 1 if one direction ended]; false if it has ended. */
  snapshot(id: number, out: Float64Array): boolean;
  setSweepInterval(ms: number): void;
  ref(): void;
  unref(): void;
  close(): void;
}

/** How the relay thread says a pair ended. The names are the contract; the numbers come from the addon (relayEndCodes). */
export const RELAY_ENDS = [
  'fin',
  'reset',
  'error',
  'keepalive',
  'idle',
  'halfClose',
  'maxDuration',
  'aborted',
  'adoptFailed',
] as const;
export type RelayEnd = (typeof RELAY_ENDS)[number];

interface NativeBinding {
  Relay: new (onEnded: (records: Float64Array) => void, sweepMs: number) => NativeRelay;
  /** relay.cc's EndCode by name. */
  relayEndCodes: unknown;
  relayRecordFields: number;
  originalDst(fd: number, family: AddonFamily): OriginalDstResult;
  transparentListen(family: AddonFamily, address: string, port: number, backlog: number): number;
  isTransparent(fd: number, family: AddonFamily): boolean;
  transparentSocket(family: AddonFamily, address: string, mark: number, dstAddress: string, dstPort: number): number;
  keepCapabilities(): void;
  retainNetAdmin(): void;
  peerOwner(fd: number, family: AddonFamily, dstAddress: string, dstPort: number): number;
  /** Absent from an addon built before it. */
  trimMalloc?(): boolean;
}

// Same relative path from src/native (vitest) and dist/native (built CLI): both sit two levels below the root.
export const ADDON_PATH = fileURLToPath(new URL('../../build/Release/meshctl_native.node', import.meta.url));

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

let binding: NativeBinding | undefined;

function loadBinding(): NativeBinding {
  if (binding) return binding;
  try {
    binding = createRequire(import.meta.url)(ADDON_PATH) as NativeBinding;
  } catch (error) {
    throw new MeshctlError(
      'ADDON_UNAVAILABLE',
      `the native addon could not be loaded from ${ADDON_PATH}`,
      'run `npm ci` (or `npx node-gyp rebuild`) in the meshctl directory; it needs g++, make and Node headers',
      { cause: error },
    );
  }
  return binding;
}

/** True when the addon file exists and loads; never throws. */
export function isAddonAvailable(): boolean {
  try {
    loadBinding();
    return true;
  } catch {
    return false;
  }
}

/**
 * getsockopt(SO_ORIGINAL_DST) (family 4) or getsockopt(IP6T_SO_ORIGINAL_DST) (family 6) on `fd`.
 * Throws TypeError for bad arguments, MeshctlError ADDON_UNAVAILABLE when the addon is not built, and the
 * system error (`errno`, `code`, `syscall`) from the kernel otherwise (ENOENT: the connection was not NATed).
 */
export function originalDst(fd: number, family: AddonFamily): OriginalDstResult {
  checkFd('originalDst', fd);
  checkFamily('originalDst', family);
  return withErrnoCode(() => loadBinding().originalDst(fd, family));
}

/**
 * A listening TCP socket with IP_TRANSPARENT (family 4) or IPV6_TRANSPARENT (family 6; also IPV6_V6ONLY), the
 * only kind TPROXY delivers to: SO_REUSEADDR, non-blocking, close-on-exec, bound to address:port, listening.
 * Returns the fd for `server.listen({ fd })`; the caller owns it. Setting the option needs CAP_NET_ADMIN (or
 * CAP_NET_RAW): create these sockets before dropping root. Throws TypeError for bad arguments and the system
 * error otherwise (`syscall` 'setsockopt(IP_TRANSPARENT)' with EPERM without the capability, 'bind' with
 * EADDRINUSE, ...).
 */
export function transparentListen(family: AddonFamily, address: string, port: number, backlog: number): number {
  checkFamily('transparentListen', family);
  if (typeof address !== 'string' || !(family === 4 ? isIPv4(address) : isIPv6(address))) {
    throw new TypeError(`transparentListen: address must be an IPv${family} address, got ${String(address)}`);
  }
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new TypeError(`transparentListen: port must be an integer between 0 and 65535, got ${String(port)}`);
  }
  if (typeof backlog !== 'number' || !Number.isInteger(backlog) || backlog < 1 || backlog > 0x7fffffff) {
    throw new TypeError(`transparentListen: backlog must be a positive integer, got ${String(backlog)}`);
  }
  return withErrnoCode(() => loadBinding().transparentListen(family, address, port, backlog));
}

/** Whether the socket `fd` has IP_TRANSPARENT (family 4) or IPV6_TRANSPARENT (family 6) set. */
export function isTransparent(fd: number, family: AddonFamily): boolean {
  checkFd('isTransparent', fd);
  checkFamily('isTransparent', family);
  return withErrnoCode(() => loadBinding().isTransparent(fd, family));
}

/**
 * An unconnected TCP socket bound to `address` (a peer's, not local: IP_TRANSPARENT / IPV6_TRANSPARENT), with
 * SO_MARK `mark` (0: none), for a connection to dstAddress:dstPort; non-blocking, close-on-exec. The kernel picks
 * the port, and a port some TCP socket of this namespace already joins to dstAddress:dstPort (the peer's own
 * connection, or another from that address and port) is refused and another taken: the two would share one
 * conntrack entry. Returns the fd for `new net.Socket({ fd })`, which Node then connects; the caller owns it. Needs
 * CAP_NET_ADMIN. Throws TypeError for bad arguments and the system error otherwise (`syscall`
 * 'setsockopt(IP_TRANSPARENT)' or 'setsockopt(SO_MARK)' with EPERM without the capability, 'bind' with EADDRINUSE
 * when no free port was found).
 */
export function transparentSocket(
  family: AddonFamily,
  address: string,
  mark: number,
  dstAddress: string,
  dstPort: number,
): number {
  checkFamily('transparentSocket', family);
  for (const [name, value] of [
    ['address', address],
    ['dstAddress', dstAddress],
  ] as const) {
    if (typeof value !== 'string' || !(family === 4 ? isIPv4(value) : isIPv6(value)))
      throw new TypeError(`transparentSocket: ${name} must be an IPv${family} address, got ${String(value)}`);
  }
  if (typeof mark !== 'number' || !Number.isInteger(mark) || mark < 0 || mark > 0xffffffff) {
    throw new TypeError(`transparentSocket: mark must be an integer between 0 and 0xffffffff, got ${String(mark)}`);
  }
  if (typeof dstPort !== 'number' || !Number.isInteger(dstPort) || dstPort < 1 || dstPort > 65535) {
    throw new TypeError(`transparentSocket: dstPort must be an integer between 1 and 65535, got ${String(dstPort)}`);
  }
  return withErrnoCode(() => loadBinding().transparentSocket(family, address, mark, dstAddress, dstPort));
}

/**
 * Before a root process switches uid: keep the permitted capabilities across it (prctl PR_SET_KEEPCAPS, this
 * thread). Follow the switch with retainNetAdmin(). Throws the system error.
 */
export function keepCapabilities(): void {
  withErrnoCode(() => loadBinding().keepCapabilities());
}

/**
 * After the switch: CAP_NET_ADMIN becomes this thread's only permitted, effective, inheritable and ambient
 * capability (ambient: processes it starts, such as node:cluster workers, have it too). Throws the system error,
 * EPERM with `syscall` 'capget' when CAP_NET_ADMIN was not kept.
 */
export function retainNetAdmin(): void {
  withErrnoCode(() => loadBinding().retainNetAdmin());
}

/**
 * Gives the memory malloc holds freed back to the kernel (glibc's malloc_trim(0), every thread's arena; see
 * src/native/memory.cc). False when nothing was released, the C library has no such call, or the addon is missing
 * or predates it. Never throws.
 */
export function trimMalloc(): boolean {
  try {
    return loadBinding().trimMalloc?.() ?? false;
  } catch {
    return false;
  }
}

/**
 * The uid owning the local socket at the other end of the accepted connection `fd`, whose other end sees it as
 * going to dstAddress:dstPort (its original destination): one exact sock_diag lookup. -1 when the other end is
 * not a socket of this network namespace (a remote peer) or is gone. Throws TypeError for bad arguments and the
 * system error otherwise (getpeername ENOTCONN for a connection already reset).
 */
export function peerOwner(fd: number, family: AddonFamily, dstAddress: string, dstPort: number): number {
  checkFd('peerOwner', fd);
  checkFamily('peerOwner', family);
  if (typeof dstAddress !== 'string' || !(family === 4 ? isIPv4(dstAddress) : isIPv6(dstAddress))) {
    throw new TypeError(`peerOwner: dstAddress must be an IPv${family} address, got ${String(dstAddress)}`);
  }
  if (typeof dstPort !== 'number' || !Number.isInteger(dstPort) || dstPort < 1 || dstPort > 65535) {
    throw new TypeError(`peerOwner: dstPort must be an integer between 1 and 65535, got ${String(dstPort)}`);
  }
  return withErrnoCode(() => loadBinding().peerOwner(fd, family, dstAddress, dstPort));
}

function checkFd(fn: string, fd: number): void {
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
    throw new TypeError(`${fn}: fd must be an integer between 0 and 2147483647, got ${String(fd)}`);
  }
}

function checkFamily(fn: string, family: AddonFamily): void {
  if (family !== 4 && family !== 6) {
    throw new TypeError(`${fn}: family must be 4 or 6, got ${String(family)}`);
  }
}

/** Runs an addon call, adding Node's `code` ('ENOENT', 'EPERM', ...) to a system error it throws. */
export function withErrnoCode<T>(call: () => T): T {
  try {
    return call();
  } catch (error) {
    if (error instanceof Error && typeof (error as Partial<NativeSystemError>).errno === 'number') {
      const systemError = error as NativeSystemError;
      systemError.code = errnoCode(systemError.errno);
    }
    throw error;
  }
}

/**
 * The addon's end codes by name (relay.cc's EndCode). Throws ADDON_UNAVAILABLE when the addon is not built, or
 * when its table is not exactly RELAY_ENDS with distinct numbers (an addon built from other sources).
 */
export function relayEndCodes(): Readonly<Record<RelayEnd, number>> {
  return checkEndCodes(loadBinding().relayEndCodes, ADDON_PATH);
}

/** Numbers per end record that the relay thread hands to `onEnded`. Throws ADDON_UNAVAILABLE. */
export function relayRecordFields(): number {
  return loadBinding().relayRecordFields;
}

/** `table` as end codes by name, or ADDON_UNAVAILABLE naming what differs from RELAY_ENDS. */
export function checkEndCodes(table: unknown, source: string): Readonly<Record<RelayEnd, number>> {
  const entries = table !== null && typeof table === 'object' ? Object.entries(table) : [];
  const names = entries.map(([name]) => name);
  const codes = entries.map(([, code]) => code);
  const problems = [
    ...RELAY_ENDS.filter((name) => !names.includes(name)).map((name) => `no code for "${name}"`),
    ...names
      .filter((name) => !(RELAY_ENDS as readonly string[]).includes(name))
      .map((name) => `an unknown end "${name}"`),
    ...entries
      .filter(([, code]) => !Number.isInteger(code))
      .map(([name, code]) => `"${name}" is ${String(code)}, not an integer`),
    ...entries
      .filter(([, code], i) => codes.indexOf(code) !== i)
      .map(([name, code]) => `"${name}" repeats code ${String(code)}`),
  ];
  if (problems.length > 0) {
    throw new MeshctlError(
      'ADDON_UNAVAILABLE',
      `the relay end codes of the native addon at ${source} do not match this meshctl: ${problems.join('; ')}`,
      'rebuild the addon from this checkout: `npx node-gyp rebuild` in the meshctl directory',
    );
  }
  return Object.fromEntries(entries) as Record<RelayEnd, number>;
}

/** Starts a relay thread; its system errors (epoll_create1, eventfd) carry `code` like Node's. */
export function createRelay(onEnded: (records: Float64Array) => void, sweepMs: number): NativeRelay {
  if (!Number.isInteger(sweepMs) || sweepMs < 1)
    throw new TypeError(`createRelay: sweepMs must be a positive integer, got ${String(sweepMs)}`);
  const Relay = loadBinding().Relay;
  return withErrnoCode(() => new Relay(onEnded, sweepMs));
}

/** Node's name for an errno value ('ECONNRESET', ...), or `E<n>` when this platform has none. */
export function errnoCode(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}
