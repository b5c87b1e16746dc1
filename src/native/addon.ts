// Typed loader for the native addon (build/Release/meshctl_native.node, built by `npm ci` through node-gyp):
// originalDst for REDIRECTed connections, transparentListen / isTransparent for TPROXY's inbound listeners,
// transparentSocket (TPROXY's inbound leg from the peer's address) with keepCapabilities / retainNetAdmin (the
// capability it needs, kept across the switch to proxy.user), peerOwner (who made a connection: the proxy's
// self-loop check), trimMalloc / releaseMemory (freed memory back to the kernel), and the Relay thread (src/native/relay.cc)
// that moves the bytes of established connections, with its tables of end codes, and its front door
// (src/native/front_door.cc) that accepts, reads the original destination and connects natively.
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
 * 1 upstream), errno; when the batch holds a front-door connection, also their details (EndDetails).
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
  /** Closes the pair now (RST to both peers when `reset`); false if it had already ended. Front-door ids too. */
  abort(id: number, reset: boolean): boolean;
  /** Fills `out` with [bytes from client, bytes from upstream, 1 if one direction ended]; false if it has ended. */
  snapshot(id: number, out: Float64Array): boolean;
  /**
   * The front door: the thread accepts on a dup of the listening socket `fd` (the caller keeps its own; the open
   * file becomes non-blocking), registered with EPOLLEXCLUSIVE so several relays can share one socket. The same
   * listenerId again replaces the options for the next accepts and keeps the first fd. Throws TypeError for bad
   * options and the system error (EINVAL: not a listening socket, or options that send connections to JS without
   * an onAccepted; EAFNOSUPPORT: `family` is not the socket's).
   */
  listen(listenerId: number, fd: number, options: FrontDoorOptions): void;
  /** Stops accepting on it (its dup is closed); connections it accepted go on. False if it was not listening. */
  unlisten(listenerId: number): boolean;
  /** The live front-door connections (at most `limit`, newest first). */
  list(limit: number): LiveFrontConnection[];
  /** The front door's counters since the relay started, and its connections open now. */
  stats(): FrontDoorStats;
  setSweepInterval(ms: number): void;
  ref(): void;
  unref(): void;
  close(): void;
}

/** One destination JavaScript decides: address/prefix (an IPv4 or IPv6 network) and port (0 = any). */
export interface FrontDoorAsk {
  readonly address: string;
  readonly prefix: number;
  readonly port: number;
}

/** What a relay's front door does with the connections one listener accepts (src/native/front_door.cc). */
export interface FrontDoorOptions {
  readonly direction: 'outbound' | 'inbound';
  /** The listener's family (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST). */
  readonly family: 4 | 6;
  /** false: every accepted connection goes to JS (onAccepted); true: connect natively unless `ask` matches. */
  readonly passthrough: boolean;
  readonly ask: ReadonlyArray<FrontDoorAsk>;
  /** bind() the upstream socket to this address first (IP_BIND_ADDRESS_NO_PORT); null = none. EADDRNOTAVAIL:
   *  connects without it, flagged in the end record (FRONT_FLAG_SOURCE_FALLBACK) and counted (sourceFallbacks). */
  readonly sourceAddress: string | null;
  /**
   * Outbound: reset a connection whose peer socket this uid owns; -1 = off. The relay threads' own upstream sockets
   * are found in a process-wide set (no system call); other sockets by sock_diag, unless `selfLoopOwnSet`.
   */
  readonly selfLoopUid: number;
  /**
   * Whether the threads' own upstream sockets are the only sockets of selfLoopUid that can loop into this listener
   * (one proxy process): then a passthrough connection not in their set is not checked with sock_diag. Asked
   * connections always are. Absent = false.
   */
  readonly selfLoopOwnSet?: boolean;
  /** Bounds in ms, -1 = none (enforced by the sweep, so to its interval); keepalive in s, -1 = off. */
  readonly connectTimeoutMs: number;
  readonly maxDurationMs: number;
  readonly idleMs: number;
  readonly halfCloseMs: number;
  readonly keepaliveSec: number;
}

/** A connection the front door hands to JS: JS owns `fd` from here (wrap it in a net.Socket). */
export interface AcceptedConnection {
  readonly fd: number;
  readonly listenerId: number;
  /** The original destination. */
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
  /** The client's socket is the proxy uid's but unmarked: connect the upstream with markedSocket (IsSelfLoop). */
  readonly loopSuspect?: true;
}

/**
 * onEnded's second argument, present when the batch holds a front-door record: two views of the batch's one
 * ArrayBuffer (the records' Float64Array is the third), aligned with the records by index i:
 * numbers[i * relayDetailFields() + k], k = 0 front (1 | 0), 1 listenerId (-1 adopted), 2 duration µs (accept to
 * end), 3 connect µs (accept to established; -1 never), 4 flags (FRONT_FLAG_*); endpoints from byte
 * i * 3 * relayEndpointBytes(): source, original destination, upstream local address, each packed as byte 0 the
 * family (0 none or adopted, 4, 6), bytes 2-3 the port and 4.. the address (4 or 16 bytes), both in network order.
 */
export interface EndDetails {
  readonly numbers: Float64Array;
  readonly endpoints: Uint8Array;
}

/** Bit in EndDetails' flags: bind(sourceAddress) gave EADDRNOTAVAIL and the upstream connected without it. */
export const FRONT_FLAG_SOURCE_FALLBACK = 1;
/** Bit in EndDetails' flags: the client's peer matched an own upstream socket (FrontDoorStats.loopSuspects). */
export const FRONT_FLAG_LOOP_SUSPECT = 2;

export interface LiveFrontConnection {
  /** Front-door ids start at 2 ** 32 (one counter per process): they never equal an adopt() id. */
  readonly id: number;
  readonly listenerId: number;
  readonly source: string;
  readonly originalDst: string;
  readonly upstreamLocal: string;
  readonly ageMs: number;
  readonly fromClient: number;
  readonly fromUpstream: number;
  readonly state: 'connecting' | 'open' | 'half-closed';
}

export interface FrontDoorStats {
  readonly accepted: number;
  /** Handed to JS (onAccepted). */
  readonly asked: number;
  readonly connected: number;
  readonly connectFailed: number;
  readonly connectTimeout: number;
  /** Connects past their bound when the thread swept, which the kernel had answered in time (not timeouts). */
  readonly connectAnsweredLate: number;
  readonly selfLoop: number;
  readonly notRedirected: number;
  /** accept4 errors other than EMFILE & co; each deregistered the listener until the next sweep. */
  readonly acceptErrors: number;
  /** EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener was deregistered until the next sweep. */
  readonly acceptBackoffs: number;
  readonly lastAcceptErrno: number;
  readonly sourceFallbacks: number;
  /** sock_diag lookups that failed (counted as not the proxy's own, as in the JS path). */
  readonly ownerLookupFailures: number;
  readonly lastOwnerLookupErrno: number;
  /** sock_diag lookups made for the self-loop check (the own-socket set answered the others). */
  readonly ownerLookups: number;
  /** Self-loops found in the threads' own-socket set (a match with a loop suspect's upstream). */
  readonly selfLoopByOwnSet: number;
  /**
   * Connections whose peer matched an own upstream socket that was no suspect's: relayed, their upstream marked
   * (FRONT_FLAG_LOOP_SUSPECT). A loop is refused at its next hop; a NAT source-port remap stops here.
   */
  readonly loopSuspects: number;
  /** Times this thread left accepting to a less busy one because it carried more than its share of pairs. */
  readonly acceptYields: number;
  /** Front-door pairs open now, and of those still connecting. */
  readonly open: number;
  readonly connecting: number;
}

export type OnEnded = (records: Float64Array, details?: EndDetails) => void;
export type OnAccepted = (batch: AcceptedConnection[]) => void;

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

/** The ends only front-door connections have (the addon's frontDoorEndCodes). */
export const FRONT_DOOR_ENDS = ['connectFailed', 'connectTimeout', 'selfLoop', 'notRedirected'] as const;
export type FrontDoorEnd = (typeof FRONT_DOOR_ENDS)[number];

interface NativeBinding {
  Relay: new (onEnded: OnEnded, sweepMs: number, onAccepted?: OnAccepted) => NativeRelay;
  /** relay_binding.cc's EndCode by name: adopted pairs' ends, and the front door's own. */
  relayEndCodes: unknown;
  frontDoorEndCodes: unknown;
  relayRecordFields: number;
  relayDetailFields: number;
  relayEndpointBytes: number;
  originalDst(fd: number, family: AddonFamily): OriginalDstResult;
  transparentListen(family: AddonFamily, address: string, port: number, backlog: number): number;
  isTransparent(fd: number, family: AddonFamily): boolean;
  transparentSocket(family: AddonFamily, address: string, mark: number, dstAddress: string, dstPort: number): number;
  sourceSocket(family: AddonFamily, address: string): number;
  keepCapabilities(): void;
  retainNetAdmin(): void;
  peerOwner(fd: number, family: AddonFamily, dstAddress: string, dstPort: number): number;
  loopPeer(fd: number, family: AddonFamily, dstAddress: string, dstPort: number, uid: number): number;
  markedSocket(family: AddonFamily): number;
  /** Absent from an addon built before it. */
  trimMalloc?(): boolean;
  /** Absent from an addon built before it. */
  releaseMemory?(): void;
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
 * An unconnected socket bound to a local `address` whose port the kernel picks only at connect(), for the whole
 * 4-tuple (IP_BIND_ADDRESS_NO_PORT): the inbound passthrough leg from 127.0.0.6 / ::6 under churn. Node connects it.
 * Throws the system error of socket() or bind() (EADDRNOTAVAIL: the address is not on this host), with `code`.
 */
export function sourceSocket(family: AddonFamily, address: string): number {
  checkFamily('sourceSocket', family);
  if (typeof address !== 'string' || !(family === 4 ? isIPv4(address) : isIPv6(address)))
    throw new TypeError(`sourceSocket: address must be an IPv${family} address, got ${String(address)}`);
  return withErrnoCode(() => loadBinding().sourceSocket(family, address));
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
 * Collects the JavaScript heap as V8 does when the system is low on memory (full, compacting collections, free pages
 * unmapped), then trims malloc (src/native/memory.cc): for a process that has just become idle. Only trims when the
 * addon predates it; does nothing without the addon. Never throws.
 */
export function releaseMemory(): void {
  try {
    const binding = loadBinding();
    if (binding.releaseMemory) binding.releaseMemory();
    else binding.trimMalloc?.();
  } catch {
    // no addon: nothing to release through it
  }
}

/**
 * The uid owning the local socket at the other end of the accepted connection `fd`, whose other end sees it as
 * going to dstAddress:dstPort (its original destination): one exact sock_diag lookup. -1 when the other end is
 * not a socket of this network namespace (a remote peer) or is gone. Throws TypeError for bad arguments and the
 * system error otherwise (getpeername ENOTCONN for a connection already reset).
 */
export function peerOwner(fd: number, family: AddonFamily, dstAddress: string, dstPort: number): number {
  checkPeerKey('peerOwner', fd, family, dstAddress, dstPort);
  return withErrnoCode(() => loadBinding().peerOwner(fd, family, dstAddress, dstPort));
}

/** What the self-loop check found at the other end of a redirected connection (loopPeer). */
export type LoopPeer = 'not-own' | 'suspect' | 'loop';

/**
 * The JS path's self-loop check: whether the socket at the other end of the redirected connection on `fd` (its peer
 * -> dstAddress:dstPort) is `uid`'s ('suspect': relay it, with a marked upstream, markedSocket) and carries the loop
 * marker ('loop': refuse). See src/native/front_door.cc, IsSelfLoop. Throws the lookup's system error.
 */
export function loopPeer(fd: number, family: AddonFamily, dstAddress: string, dstPort: number, uid: number): LoopPeer {
  checkPeerKey('loopPeer', fd, family, dstAddress, dstPort);
  if (!Number.isInteger(uid) || uid < 0)
    throw new TypeError(`loopPeer: uid must be a non-negative integer, got ${uid}`);
  const answer = withErrnoCode(() => loadBinding().loopPeer(fd, family, dstAddress, dstPort, uid));
  return answer === 2 ? 'loop' : answer === 1 ? 'suspect' : 'not-own';
}

/** An unconnected TCP socket carrying the loop marker, for a loop suspect's upstream (connection.ts connects it). */
export function markedSocket(family: AddonFamily): number {
  checkFamily('markedSocket', family);
  return withErrnoCode(() => loadBinding().markedSocket(family));
}

function checkPeerKey(fn: string, fd: number, family: AddonFamily, dstAddress: string, dstPort: number): void {
  checkFd(fn, fd);
  checkFamily(fn, family);
  if (typeof dstAddress !== 'string' || !(family === 4 ? isIPv4(dstAddress) : isIPv6(dstAddress))) {
    throw new TypeError(`${fn}: dstAddress must be an IPv${family} address, got ${String(dstAddress)}`);
  }
  if (typeof dstPort !== 'number' || !Number.isInteger(dstPort) || dstPort < 1 || dstPort > 65535) {
    throw new TypeError(`${fn}: dstPort must be an integer between 1 and 65535, got ${String(dstPort)}`);
  }
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

/** The front door's own end codes by name; ADDON_UNAVAILABLE as for relayEndCodes. */
export function frontDoorEndCodes(): Readonly<Record<FrontDoorEnd, number>> {
  return checkEndCodes(loadBinding().frontDoorEndCodes, ADDON_PATH, FRONT_DOOR_ENDS);
}

/** Numbers per end record that the relay thread hands to `onEnded`. Throws ADDON_UNAVAILABLE. */
export function relayRecordFields(): number {
  return loadBinding().relayRecordFields;
}

/** Numbers per record in onEnded's EndDetails. Throws ADDON_UNAVAILABLE. */
export function relayDetailFields(): number {
  return loadBinding().relayDetailFields;
}

/** Bytes per packed endpoint in onEnded's EndDetails. Throws ADDON_UNAVAILABLE. */
export function relayEndpointBytes(): number {
  return loadBinding().relayEndpointBytes;
}

/** `table` as end codes by name, or ADDON_UNAVAILABLE naming what differs from `expected` (RELAY_ENDS by default). */
export function checkEndCodes<E extends string = RelayEnd>(
  table: unknown,
  source: string,
  expected: readonly E[] = RELAY_ENDS as unknown as readonly E[],
): Readonly<Record<E, number>> {
  const entries = table !== null && typeof table === 'object' ? Object.entries(table) : [];
  const names = entries.map(([name]) => name);
  const codes = entries.map(([, code]) => code);
  const problems = [
    ...expected.filter((name) => !names.includes(name)).map((name) => `no code for "${name}"`),
    ...names
      .filter((name) => !(expected as readonly string[]).includes(name))
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
  return Object.fromEntries(entries) as Record<E, number>;
}

/**
 * Starts a relay thread; its system errors (epoll_create1, eventfd) carry `code` like Node's. `onAccepted` takes
 * the connections its front door hands to JS; without it, listen() takes only options that never do.
 * listen()'s options are checked here (TypeError naming the field) and its system errors get `code` too.
 */
export function createRelay(onEnded: OnEnded, sweepMs: number, onAccepted?: OnAccepted): NativeRelay {
  if (!Number.isInteger(sweepMs) || sweepMs < 1)
    throw new TypeError(`createRelay: sweepMs must be a positive integer, got ${String(sweepMs)}`);
  if (onAccepted !== undefined && typeof onAccepted !== 'function')
    throw new TypeError(`createRelay: onAccepted must be a function, got ${typeof onAccepted}`);
  const Relay = loadBinding().Relay;
  const relay = withErrnoCode(() =>
    onAccepted === undefined ? new Relay(onEnded, sweepMs) : new Relay(onEnded, sweepMs, onAccepted),
  );
  const listen = relay.listen.bind(relay);
  // The class's methods are read-only properties of its prototype: the checked one is defined on the instance.
  Object.defineProperty(relay, 'listen', {
    value: (listenerId: number, fd: number, options: FrontDoorOptions): void => {
      checkListenerId('listen', listenerId);
      checkFd('listen', fd);
      checkFrontDoorOptions(options);
      withErrnoCode(() => listen(listenerId, fd, options));
    },
  });
  return relay;
}

function checkListenerId(fn: string, id: number): void {
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > 0x7fffffff) {
    throw new TypeError(`${fn}: listenerId must be an integer between 0 and 2147483647, got ${String(id)}`);
  }
}

const BOUNDS = ['connectTimeoutMs', 'maxDurationMs', 'idleMs', 'halfCloseMs', 'keepaliveSec'] as const;

/** TypeError naming the first field of `o` that is not a FrontDoorOptions value. */
export function checkFrontDoorOptions(o: FrontDoorOptions): void {
  const bad = (field: string, want: string, got: unknown): never => {
    throw new TypeError(`listen: options.${field} must be ${want}, got ${String(got)}`);
  };
  if (o === null || typeof o !== 'object') bad('', 'an object', o);
  if (o.direction !== 'outbound' && o.direction !== 'inbound') bad('direction', "'outbound' or 'inbound'", o.direction);
  if (o.family !== 4 && o.family !== 6) bad('family', '4 or 6', o.family);
  if (typeof o.passthrough !== 'boolean') bad('passthrough', 'a boolean', o.passthrough);
  if (!Array.isArray(o.ask)) bad('ask', 'an array', o.ask);
  o.ask.forEach((a, i) => {
    const family = isIPv4(a?.address) ? 4 : isIPv6(a?.address) ? 6 : 0;
    if (family === 0) bad(`ask[${i}].address`, 'an IPv4 or IPv6 address', a?.address);
    if (!Number.isInteger(a.prefix) || a.prefix < 0 || a.prefix > (family === 4 ? 32 : 128))
      bad(`ask[${i}].prefix`, `an integer between 0 and ${family === 4 ? 32 : 128}`, a.prefix);
    if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535)
      bad(`ask[${i}].port`, 'an integer between 0 and 65535 (0 = any)', a.port);
  });
  if (o.sourceAddress !== null && !(isIPv4(o.sourceAddress) || isIPv6(o.sourceAddress)))
    bad('sourceAddress', 'an IP address or null', o.sourceAddress);
  if (!Number.isInteger(o.selfLoopUid) || o.selfLoopUid < -1 || o.selfLoopUid > 0xffffffff)
    bad('selfLoopUid', 'a uid or -1', o.selfLoopUid);
  if (o.selfLoopOwnSet !== undefined && typeof o.selfLoopOwnSet !== 'boolean')
    bad('selfLoopOwnSet', 'a boolean', o.selfLoopOwnSet);
  for (const field of BOUNDS) {
    const v = o[field];
    if (!Number.isInteger(v) || v < -1 || v > (field === 'keepaliveSec' ? 0x7fffffff : 2 ** 52))
      bad(field, 'a non-negative integer or -1', v);
  }
}

/** Node's name for an errno value ('ECONNRESET', ...), or `E<n>` when this platform has none. */
export function errnoCode(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}
