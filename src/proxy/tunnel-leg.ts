// An HTTP/2 CONNECT stream of the mTLS tunnel dressed as the net.Socket a Connection (./connection.ts) relays:
// the same events ('connect' once the CONNECT is answered 200, 'data', 'end' at END_STREAM, 'error', 'close'),
// end() sends END_STREAM (a FIN), resetAndDestroy() RST_STREAM CONNECT_ERROR (an RST), and the byte count,
// addresses and keepalive a Connection reads. The relay thread cannot take such a leg (it has no fd of its own),
// so tunneled connections are relayed by Node streams in the worker.
import type { ClientHttp2Stream, Http2Stream, ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { REASON_HEADER, RST_CODE, statusForRefusal } from './tunnel-wire.js';

/** What the access log and /connections say about a tunneled connection. */
export interface TunnelInfo {
  /** The peer proxy's SPIFFE ID (the server's for outbound, the client's for inbound). */
  readonly peerIdentity: string;
  /** The TLS handshake of the session carrying the stream (ms), or null when the session was already up. */
  readonly handshakeMs: number | null;
  /** This proxy's own SPIFFE ID at the time. */
  readonly localIdentity: string;
}

const kLeg = Symbol('meshctl.tunnelLeg');

/** Bytes a leg queues before write() asks the relay to pause its reader (Node's default is 16 KiB). */
const LEG_HIGH_WATER_MARK = 1024 * 1024;
/** Chunks at least this large from a leg are coalesced into the TCP socket they are relayed to (bulk, not RR). */
const COALESCE_MIN = 4096;

/**
 * Bytes a corked TCP socket may hold from a leg before the relay is told to pause the leg. Node's 16 KiB mark
 * stopped every turn after one TLS record: the leg was paused, the socket uncorked on the next turn, 'drain' resumed
 * the leg for one more record (a writev, an epoll_wait, a pause and a resume per 16 KiB).
 */
const COALESCE_MAX = LEG_HIGH_WATER_MARK;

function uncork(socket: Socket): void {
  socket.uncork();
}

/**
 * Writes a chunk read from a tunnel leg to the TCP socket it is relayed to. A TLS record holds 16 KiB and an HTTP/2
 * DATA frame 16 KiB plus its 9-byte header, so bulk arrives as pairs of pieces (~16 KiB, then a few bytes), each a
 * 'data' event: written one by one they cost a write() each. A large chunk corks the socket until the loop has
 * delivered what this read brought (setImmediate), so those pieces leave in one writev(); small chunks (RR) are
 * written at once. While corked nothing reaches the kernel, so backpressure (false: pause the leg) starts only
 * once COALESCE_MAX bytes wait; a socket that cannot take them then still stops the leg, and its 'drain' (due
 * since write() returned false) resumes it.
 */
export function writeFromLeg(socket: Socket, chunk: Buffer): boolean {
  if (chunk.length >= COALESCE_MIN && socket.writableCorked === 0) {
    socket.cork();
    setImmediate(uncork, socket);
  }
  return socket.write(chunk) || (socket.writableCorked > 0 && socket.writableLength < COALESCE_MAX);
}

interface LegState {
  /** The server's end of the CONNECT (the inbound side), which answers it. */
  readonly server: boolean;
  bytesRead: number;
  connecting: boolean;
  responded: boolean;
  errored: boolean;
  info: TunnelInfo | null;
  /** The reason of a refusal the server answers with (read from the Connection when it refuses). */
  reason: () => string;
}

type Leg = Http2Stream & { [kLeg]: LegState };

/** Whether `socket` is a tunnel stream rather than a TCP socket. */
export function isTunnelLeg(socket: object | null): boolean {
  return socket !== null && kLeg in socket;
}

/** The tunnel facts of a leg (null for a TCP socket). */
export function tunnelInfoOf(socket: object | null): TunnelInfo | null {
  return socket !== null && kLeg in socket ? (socket as Leg)[kLeg].info : null;
}

export function setTunnelInfo(socket: object, info: TunnelInfo): void {
  (socket as Leg)[kLeg].info = info;
}

function onLegError(this: Leg, error: NodeJS.ErrnoException): void {
  const state = this[kLeg];
  state.errored = true;
  // Once established, a stream reset or a session that died is the peer's RST: the Connection mirrors it.
  if (!state.connecting) error.code = 'ECONNRESET';
}

function onLegClose(this: Leg): void {
  const state = this[kLeg];
  // Closed without both END_STREAMs and without an error (RST_STREAM NO_ERROR/CANCEL, session gone): still a reset
  // for the other leg, which must not wait for its idle timeout.
  if (!state.errored && !state.connecting && !(this.readableEnded && this.writableFinished)) {
    state.errored = true;
    this.emit('error', Object.assign(new Error('the tunnel stream was reset'), { code: 'ECONNRESET' }));
  }
}

function countData(this: Leg, chunk: Buffer): void {
  this[kLeg].bytesRead += chunk.length;
}

function dress(stream: Http2Stream, server: boolean): Leg {
  const leg = stream as Leg;
  const state: LegState = {
    server,
    bytesRead: 0,
    connecting: !server,
    responded: false,
    errored: false,
    info: null,
    reason: () => 'refused',
  };
  leg[kLeg] = state;
  // A stream's writes complete asynchronously (HTTP/2 sends on the next turn of the loop), so with the 16 KiB default
  // every 64 KiB chunk the relay writes returns false: the reading socket would be paused and resumed per chunk
  // (two epoll_ctl and a 'drain' each). Flow control still bounds what is in flight; this bounds what is queued.
  const writable = (leg as unknown as { _writableState?: { highWaterMark: number } })._writableState;
  if (writable !== undefined) writable.highWaterMark = LEG_HIGH_WATER_MARK;
  const socket = () => stream.session?.socket;
  Object.defineProperties(leg, {
    bytesRead: { get: () => state.bytesRead },
    connecting: { get: () => state.connecting },
    remoteAddress: { get: () => socket()?.remoteAddress },
    remotePort: { get: () => socket()?.remotePort },
    localAddress: { get: () => socket()?.localAddress },
    localPort: { get: () => socket()?.localPort },
  });
  Object.assign(leg, {
    // The session's TCP socket has its own keepalive; a stream has none.
    setKeepAlive: () => leg,
    resetAndDestroy: () => {
      if (state.server && !state.responded) {
        refuseStream(leg as unknown as ServerHttp2Stream & Leg);
        return leg;
      }
      if (!leg.destroyed) leg.close(RST_CODE);
      return leg;
    },
  });
  leg.on('error', onLegError);
  leg.on('close', onLegClose);
  return leg;
}

/** Answers a CONNECT the Connection refused (or whose app connect failed) with its reason, and ends the stream. */
function refuseStream(leg: ServerHttp2Stream & Leg): void {
  const state = leg[kLeg];
  state.responded = true;
  if (leg.destroyed || leg.headersSent) {
    if (!leg.destroyed) leg.close(RST_CODE);
    return;
  }
  const reason = state.reason();
  leg.respond({ ':status': statusForRefusal(reason), [REASON_HEADER]: reason }, { endStream: true });
}

/**
 * The upstream leg of an outbound connection: the client's CONNECT stream. The caller emits 'connect' through
 * `established` when the answer is 200 (or an 'error' with the failure's code).
 */
export function clientLeg(stream: ClientHttp2Stream): Socket {
  return dress(stream, false) as unknown as Socket;
}

/** Marks a client leg established: counting starts and 'connect' is emitted. */
export function clientLegEstablished(socket: Socket, info: TunnelInfo): void {
  const leg = socket as unknown as Leg;
  const state = leg[kLeg];
  state.connecting = false;
  state.info = info;
  leg.on('data', countData);
  leg.emit('connect');
}

/** The client leg of an inbound connection: the server's CONNECT stream, paused until the app accepts. */
export function serverLeg(stream: ServerHttp2Stream, info: TunnelInfo, reason: () => string): Socket {
  const leg = dress(stream, true);
  leg[kLeg].info = info;
  leg[kLeg].reason = reason;
  leg.pause();
  return leg as unknown as Socket;
}

/**
 * The app accepted the connection a server leg carries: answer the CONNECT 200 and start counting (called by the
 * Connection before it relays). A TCP socket is left alone.
 */
export function legEstablished(socket: object): void {
  if (!(kLeg in socket)) return;
  const leg = socket as Leg & ServerHttp2Stream;
  const state = leg[kLeg];
  if (state.responded || !state.server) return;
  state.responded = true;
  if (!leg.destroyed) leg.respond({ ':status': 200 });
  leg.on('data', countData);
}
