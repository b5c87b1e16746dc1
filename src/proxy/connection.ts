// One proxied connection: the upstream connect, then the relay of both directions. Once both legs are up the
// pair goes to the worker's relay thread (src/native/relay.cc, proxy.relay: native), which moves the bytes
// outside JS and reports how the connection ended; Node's sockets are closed then (the thread holds duplicates).
// Without a relay thread (proxy.relay: node, or the handoff failed) Node streams relay here: backpressure by
// pause/resume, FIN mirrored per direction (allowHalfOpen on both legs), RST mirrored with resetAndDestroy.
// The event handlers are module-level functions that find their Connection through a symbol on the
// socket, so a connection costs no closures; byte counts come from the sockets at close, never per chunk.
import { closeSync } from 'node:fs';
import { connect, isIPv6, Socket, type SocketConstructorOpts } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { ProxyConfig } from '../config/types.js';
import type { ConnectionLease } from '../policy/lease.js';
import type { AccessRecord } from './access-log.js';
import type { Direction, EndResult, ProxyMetrics } from './metrics.js';
import type { RefusalReason } from '../policy/refusals.js';
import { socketFd, type OriginalDst } from '../native/original-dst.js';
import { markedSocket, sourceSocket, transparentSocket } from '../native/addon.js';
import { isMeshctlError } from '../errors.js';
import { relayBounds, type RelayedConnection, type RelayThread } from './relay-thread.js';
import type { Route, TransparentSource } from './routing.js';
import { expiredTimer, type TimerVerdict } from './timers.js';
import { isTunnelLeg, legEstablished, tunnelInfoOf, writeFromLeg, type TunnelInfo } from './tunnel-leg.js';

/** The per-attempt connect timeout of a leased connection (its retries are the lease's business). */
const ATTEMPT_TIMEOUT: TimerVerdict = { result: 'timeout', detail: 'connect', mode: 'reset' };

export type ConnState = 'connecting' | 'open' | 'half-closed' | 'closed';

/** What a connection needs from the process that accepted it. */
export interface ConnectionOwner {
  readonly metrics: ProxyMetrics;
  connectionClosed(conn: Connection): void;
  /**
   * Whether closed connections are logged (default true). The strings only the access log needs (peer address,
   * upstream local address: a getpeername()/getsockname() and a string each) are read eagerly only then.
   */
  readonly recordsAccess?: boolean;
  /** The passthrough source (127.0.0.6 / ::6) is not assigned on this host; called once per failure. */
  passthroughSourceMissing(address: string, error: NodeJS.ErrnoException): void;
  /** The relay thread that takes established connections (null: Node streams relay them). */
  readonly relayThread: RelayThread | null;
  /** A handoff to the relay thread failed (e.g. EMFILE); the connection stays on Node streams. */
  relayHandoffFailed(error: unknown): void;
  /** TPROXY's transparent socket from the peer's address could not be made (EPERM: no CAP_NET_ADMIN). */
  transparentSourceFailed?(address: string, error: NodeJS.ErrnoException): void;
  /**
   * The mTLS tunnel's stream to `host:port` when it is a mesh member (src/proxy/tunnel-runtime.ts), else null.
   * Absent or null: the upstream leg is a plain TCP connect.
   */
  openTunnel?(host: string, port: number, service: string | null): Socket | null;
  /** Whether mTLS is configured: the access log then says `tls` and `peerIdentity` for every connection. */
  readonly mtlsActive?: boolean;
}

/** A row of the admin `/connections` table. */
export interface ConnectionInfo {
  readonly id: string;
  readonly direction: Direction;
  readonly state: ConnState;
  readonly source: string;
  readonly originalDst: string | null;
  readonly upstream: string | null;
  readonly ageMs: number;
  readonly bytesFromClient: number;
  readonly bytesFromUpstream: number;
  /** The mesh service the connection was routed to, when it matched one. */
  readonly service?: string;
  /** The peer proxy's SPIFFE ID, for a connection through the mTLS tunnel. */
  readonly peerIdentity?: string;
}

const kConn = Symbol('meshctl.connection');
type Tagged = Socket & { [kConn]: Connection };

export function endpoint(address: string | undefined, port: number | undefined): string {
  if (address === undefined) return '?';
  return address.includes(':') ? `[${address}]:${port ?? '?'}` : `${address}:${port ?? '?'}`;
}

function onClientData(this: Tagged, chunk: Buffer): void {
  if (!this[kConn].upstream!.write(chunk)) this.pause();
}
function onUpstreamData(this: Tagged, chunk: Buffer): void {
  if (!this[kConn].client!.write(chunk)) this.pause();
}
// A tunnel leg's data into a TCP socket: coalesced (./tunnel-leg.ts writeFromLeg).
function onClientLegData(this: Tagged, chunk: Buffer): void {
  if (!writeFromLeg(this[kConn].upstream!, chunk)) this.pause();
}
function onUpstreamLegData(this: Tagged, chunk: Buffer): void {
  if (!writeFromLeg(this[kConn].client!, chunk)) this.pause();
}
function onClientDrain(this: Tagged): void {
  this[kConn].upstream?.resume();
}
function onUpstreamDrain(this: Tagged): void {
  this[kConn].client!.resume();
}
function onClientEnd(this: Tagged): void {
  this[kConn].finReceived('client');
}
function onUpstreamEnd(this: Tagged): void {
  this[kConn].finReceived('upstream');
}
function onClientError(this: Tagged, error: NodeJS.ErrnoException): void {
  this[kConn].socketError('client', error);
}
function onUpstreamError(this: Tagged, error: NodeJS.ErrnoException): void {
  this[kConn].socketError('upstream', error);
}
function onClientClose(this: Tagged): void {
  this[kConn].socketClosed('client');
}
function onUpstreamClose(this: Tagged): void {
  this[kConn].socketClosed('upstream');
}
function onUpstreamConnect(this: Tagged): void {
  this[kConn].upstreamConnected();
}
function ignoreError(): void {}

/**
 * Connects from the peer's own address (TPROXY's inbound leg): the addon makes the bound IP_TRANSPARENT socket,
 * which Node cannot, and Node connects it. `manualStart`: Node would otherwise start reading the unconnected fd at
 * once and take its hang-up for EOF; once connected it reads as any socket does. Throws the addon's system error.
 */
function connectTransparent(host: string, port: number, source: TransparentSource): Socket {
  return connectFd(
    transparentSocket(isIPv6(source.address) ? 6 : 4, source.address, source.mark, host, port),
    host,
    port,
  );
}

/**
 * Connects from a local source address (the inbound passthrough 127.0.0.6 / ::6). The addon binds it with
 * IP_BIND_ADDRESS_NO_PORT, so the port is picked at connect() for the whole 4-tuple: Node's own
 * connect({ localAddress }) picks it at bind(), where no port in TIME_WAIT can be reused, and sustained churn to one
 * app exhausts the address's ports. Without the addon, Node binds. Throws the bind's system error (EADDRNOTAVAIL:
 * the address is not on this host).
 */
function connectFromSource(host: string, port: number, localAddress: string): Socket {
  let fd: number;
  try {
    fd = sourceSocket(isIPv6(localAddress) ? 6 : 4, localAddress);
  } catch (error) {
    if (!isMeshctlError(error, 'ADDON_UNAVAILABLE')) throw error;
    return connect({ host, port, localAddress, allowHalfOpen: true, noDelay: true });
  }
  return connectFd(fd, host, port);
}

/**
 * Connects a loop suspect's upstream (Connection.loopSuspect) from a socket carrying the loop marker, which sock_diag
 * shows: were the suspect a real loop, this connection comes straight back and is refused there.
 */
function connectMarked(host: string, port: number): Socket {
  return connectFd(markedSocket(isIPv6(host) ? 6 : 4), host, port);
}

/** Node connects a socket the addon made (it owns `fd` from here; closed if Node cannot wrap it). */
function connectFd(fd: number, host: string, port: number): Socket {
  let socket: Socket;
  try {
    socket = new Socket({ fd, allowHalfOpen: true, noDelay: true, manualStart: true } as SocketConstructorOpts);
  } catch (error) {
    closeSync(fd);
    throw error;
  }
  return socket.connect({ host, port });
}

export class Connection implements RelayedConnection {
  /** Node's sockets; both null once the relay thread has the connection (or, for the upstream, before connect). */
  client: Socket | null;
  upstream: Socket | null = null;
  dst: OriginalDst | null = null;
  /** The client's socket is the proxy uid's but unmarked (Worker.ownPeer): the upstream carries the loop marker. */
  loopSuspect = false;
  state: ConnState = 'connecting';
  readonly startedAt = performance.now();
  connectedAt = 0;
  halfClosedAt = 0;
  lastActiveAt = this.startedAt;
  nextProgressAt = 0;
  result: EndResult | null = null;
  detail = '';
  private sourceText: string | null = null;
  private keepAliveArmed = false;
  private route: Extract<Route, { kind: 'connect' }> | null = null;
  private clientEnded = false;
  private upstreamEnded = false;
  private firstFin: 'client-first' | 'upstream-first' | '' = '';
  private lastActivity = 0;
  private openSockets = 1;
  private closedAt = 0;
  private upstreamLocal: string | null = null;
  /** Mesh policy attached at accept (src/policy): retries failed connects, released at close. */
  lease: ConnectionLease | null = null;
  /** When the current upstream connect attempt started (0 while none runs). */
  private attemptStartedAt = 0;
  /** The relay thread carrying this connection and its id there (-1 while Node streams carry it). */
  private relayThread: RelayThread | null = null;
  private relayId = -1;
  /** Bytes per direction as last read from the relay thread (final once it reported the end). */
  private relayedFromClient = 0;
  private relayedFromUpstream = 0;
  /** Set once established through the mTLS tunnel (either leg a tunnel stream). */
  private tunnel: TunnelInfo | null = null;
  /** A tunnel port that did not answer and the config allows plaintext: later attempts connect directly. */
  private plaintextOnly = false;

  constructor(
    readonly id: string,
    readonly direction: Direction,
    client: Socket,
    readonly cfg: ProxyConfig,
    private readonly owner: ConnectionOwner,
  ) {
    this.client = client;
    // After close the socket cannot tell its peer any more: read it now when the access log will want it.
    if (owner.recordsAccess !== false) this.sourceText = endpoint(client.remoteAddress, client.remotePort);
    (client as Tagged)[kConn] = this;
    client.on('error', onClientError);
    client.on('close', onClientClose);
  }

  /** The client's address:port as the proxy saw it (read on first use; '?' if the socket was gone by then). */
  get source(): string {
    this.sourceText ??=
      this.client === null || this.client.destroyed ? '?' : endpoint(this.client.remoteAddress, this.client.remotePort);
    return this.sourceText;
  }

  /**
   * Reads the client's address while its socket is still open, on the paths where the proxy ends a connection
   * itself (refusal, failed connect, timers, errors): the worker's ring of recent closes (recent-connections.ts)
   * keeps it for the admin `/lookup` that `meshctl verify` asks. Connections that end normally are not read here.
   */
  private keepSource(): void {
    void this.source;
  }

  /**
   * TCP keepalive on both legs, armed by the first sweep that sees the connection established (within one sweep
   * interval, at most 1 s) rather than at accept and connect: it matters only for connections idle for
   * keepaliveDelay (30 s by default), and short connections thus skip its four setsockopt() calls per leg.
   */
  private armKeepAlive(): void {
    this.keepAliveArmed = true;
    const delay = this.cfg.keepaliveDelayMs;
    if (delay === null) return;
    if (this.client && !this.client.destroyed) this.client.setKeepAlive(true, delay);
    if (this.upstream && !this.upstream.destroyed && !this.upstream.connecting) this.upstream.setKeepAlive(true, delay);
  }

  /** Refuses without connecting anywhere: the client gets an immediate RST. */
  refuse(reason: RefusalReason, detail?: string): void {
    this.setResult('refused', detail ?? reason);
    this.owner.metrics.refused(reason);
    this.keepSource();
    if (this.client && !this.client.destroyed) this.client.resetAndDestroy();
  }

  /** Opens the upstream leg; the client stays paused until it is established. */
  connect(route: Extract<Route, { kind: 'connect' }>): void {
    this.route = route;
    this.attemptStartedAt = performance.now();
    let upstream: Socket;
    try {
      const tunneled =
        this.direction === 'outbound' && !this.plaintextOnly
          ? (this.owner.openTunnel?.(route.host, route.port, this.lease?.service ?? null) ?? null)
          : null;
      upstream =
        tunneled ??
        (route.transparentSource !== undefined
          ? connectTransparent(route.host, route.port, route.transparentSource)
          : route.localAddress !== null
            ? connectFromSource(route.host, route.port, route.localAddress)
            : this.loopSuspect
              ? connectMarked(route.host, route.port)
              : connect({ host: route.host, port: route.port, allowHalfOpen: true, noDelay: true }));
    } catch (error) {
      if (route.localAddress !== null && (error as NodeJS.ErrnoException).code === 'EADDRNOTAVAIL') {
        // The passthrough source is not on this host: said once, then connect without it (as for Node's own bind).
        this.owner.passthroughSourceMissing(route.localAddress, error as NodeJS.ErrnoException);
        this.connect({ ...route, localAddress: null });
        return;
      }
      if (route.transparentSource !== undefined)
        this.owner.transparentSourceFailed?.(route.transparentSource.address, error as NodeJS.ErrnoException);
      this.setResult('connect-failed', (error as NodeJS.ErrnoException).code ?? 'error');
      this.keepSource();
      this.client?.resetAndDestroy();
      return;
    }
    (upstream as Tagged)[kConn] = this;
    this.upstream = upstream;
    this.openSockets++;
    upstream.on('connect', onUpstreamConnect);
    upstream.on('error', onUpstreamError);
    upstream.on('close', onUpstreamClose);
  }

  upstreamConnected(): void {
    const client = this.client!;
    const upstream = this.upstream!;
    this.connectedAt = performance.now();
    this.attemptStartedAt = 0;
    this.lease?.connected(this);
    this.lastActiveAt = this.connectedAt;
    this.owner.metrics.connected(this.direction, this.connectedAt - this.startedAt);
    if (this.owner.recordsAccess !== false) this.upstreamLocal = endpoint(upstream.localAddress, upstream.localPort);
    if (client.destroyed) {
      upstream.destroy();
      return;
    }
    this.state = 'open';
    this.tunnel = tunnelInfoOf(upstream) ?? tunnelInfoOf(client);
    if (this.tunnel !== null) {
      // A tunnel stream has no fd for the relay thread (TLS is done here): Node streams relay it.
      legEstablished(client);
    } else {
      const thread = this.owner.relayThread;
      if (thread !== null && this.handOff(thread, client, upstream)) return;
    }
    client.on('data', isTunnelLeg(client) ? onClientLegData : onClientData);
    client.on('end', onClientEnd);
    client.on('drain', onClientDrain);
    upstream.on('data', isTunnelLeg(upstream) ? onUpstreamLegData : onUpstreamData);
    upstream.on('end', onUpstreamEnd);
    upstream.on('drain', onUpstreamDrain);
    client.resume();
  }

  /**
   * Gives the established pair to the relay thread and closes Node's sockets (the thread took duplicates, so
   * closing them sends nothing). False, with the sockets untouched, when the thread cannot take it.
   */
  private handOff(thread: RelayThread, client: Socket, upstream: Socket): boolean {
    const clientFd = socketFd(client);
    const upstreamFd = socketFd(upstream);
    if (clientFd < 0 || upstreamFd < 0) return false;
    // Read now what the admin table and the access log may ask later: the socket will be gone.
    this.sourceText ??= endpoint(client.remoteAddress, client.remotePort);
    try {
      this.relayId = thread.adopt(
        this,
        clientFd,
        upstreamFd,
        relayBounds(this.cfg, performance.now() - this.startedAt),
      );
    } catch (error) {
      this.owner.relayHandoffFailed(error);
      return false;
    }
    this.relayThread = thread;
    for (const socket of [client, upstream]) {
      socket.removeAllListeners();
      socket.on('error', ignoreError);
      socket.destroy();
    }
    this.client = null;
    this.upstream = null;
    this.openSockets = 0;
    return true;
  }

  /** The relay thread's report: the connection has ended (result null: we asked it to, the result is set). */
  relayEnded(fromClient: number, fromUpstream: number, result: EndResult | null, detail: string): void {
    this.relayedFromClient = fromClient;
    this.relayedFromUpstream = fromUpstream;
    this.relayId = -1;
    if (result !== null) this.setResult(result, detail);
    this.finish();
  }

  /** Reads the relay thread's live counters into the cached ones (and the state it implies); one native call. */
  private refreshRelayed(): void {
    if (this.relayId < 0 || this.relayThread === null) return;
    const snapshot = this.relayThread.snapshot(this.relayId);
    if (snapshot === null) {
      // Ended on the thread; its report (with the final counts) is on the way.
      this.state = 'closed';
      return;
    }
    this.relayedFromClient = snapshot.fromClient;
    this.relayedFromUpstream = snapshot.fromUpstream;
    if (snapshot.halfClosed && this.state === 'open') this.state = 'half-closed';
  }

  /** A FIN arrived from `side`: pass it on (after the queued bytes) and start the half-close bound. */
  finReceived(side: 'client' | 'upstream'): void {
    const other = side === 'client' ? this.upstream : this.client;
    if (side === 'client') this.clientEnded = true;
    else this.upstreamEnded = true;
    if (this.firstFin === '') this.firstFin = side === 'client' ? 'client-first' : 'upstream-first';
    if (other && !other.destroyed) {
      // The second FIN: `other` has sent its own and we read it to the end, so its receive queue is empty and
      // close() ends it with a FIN after the bytes already handed to the kernel; end() would first add a
      // shutdown() and another trip through the stream machinery.
      // A tunnel stream ends with END_STREAM: destroy() would send RST_STREAM, which may overtake queued data.
      if (this.clientEnded && this.upstreamEnded && other.writableLength === 0 && !isTunnelLeg(other)) other.destroy();
      else other.end();
    }
    if (!(this.clientEnded && this.upstreamEnded)) {
      this.state = 'half-closed';
      this.halfClosedAt = performance.now();
    }
  }

  socketError(side: 'client' | 'upstream', error: NodeJS.ErrnoException): void {
    const code = error.code ?? 'error';
    this.keepSource();
    if (side === 'upstream' && this.state === 'connecting') {
      if (code === 'EADDRNOTAVAIL' && this.route?.localAddress && this.retryWithoutSource(error)) return;
      if ((error as { fallback?: boolean }).fallback === true) {
        // mtls.allowPlaintextFallback: the member's tunnel port did not answer; connect to it directly.
        this.plaintextOnly = true;
        this.discardUpstream();
        this.connect(this.route!);
        return;
      }
      if (this.lease !== null && this.lease.connectFailed(this, code)) {
        this.discardUpstream();
        return;
      }
      this.setResult('connect-failed', code);
      if (this.client && !this.client.destroyed) this.client.resetAndDestroy();
      return;
    }
    if (code === 'ECONNRESET' || code === 'EPIPE') this.setResult('RST', `${side}-reset`);
    else if (code === 'ETIMEDOUT') this.setResult('timeout', `${side}-keepalive`);
    else this.setResult('RST', `${side}-${code}`);
    const other = side === 'client' ? this.upstream : this.client;
    if (other && !other.destroyed) {
      if (other.connecting) other.destroy();
      else other.resetAndDestroy();
    }
  }

  private retryWithoutSource(error: NodeJS.ErrnoException): boolean {
    const route = this.route!;
    this.owner.passthroughSourceMissing(route.localAddress!, error);
    const old = this.upstream!;
    old.removeListener('close', onUpstreamClose);
    old.destroy();
    this.openSockets--;
    this.connect({ ...route, localAddress: null });
    return true;
  }

  /** Drops a failed upstream attempt (the lease retries elsewhere): its late events no longer reach us. */
  private discardUpstream(): void {
    const old = this.upstream;
    this.attemptStartedAt = 0;
    if (old === null) return;
    old.removeListener('close', onUpstreamClose);
    old.removeListener('connect', onUpstreamConnect);
    old.removeListener('error', onUpstreamError);
    old.on('error', ignoreError);
    old.destroy();
    this.upstream = null;
    this.openSockets--;
  }

  /** The client has closed or been reset (a lease waiting on a backoff or an injected delay gives up). */
  get clientGone(): boolean {
    return this.client === null ? this.state === 'closed' : this.client.destroyed;
  }

  socketClosed(side: 'client' | 'upstream'): void {
    this.openSockets--;
    // A client gone while the upstream is still connecting: nothing will ever use that upstream.
    if (side === 'client' && this.upstream && this.upstream.connecting && !this.upstream.destroyed)
      this.upstream.destroy();
    if (this.openSockets === 0) this.finish();
  }

  /** Ends the connection for a reason of ours (timers, drain): RST for `reset`, FIN otherwise. */
  abort(result: EndResult, detail: string, mode: 'reset' | 'close'): void {
    if (this.relayId >= 0) {
      // False: the thread ended it first and its report (with the real result) is on the way.
      if (this.relayThread!.abort(this.relayId, mode === 'reset')) this.setResult(result, detail);
      return;
    }
    this.setResult(result, detail);
    this.keepSource();
    for (const socket of [this.client, this.upstream]) {
      if (!socket || socket.destroyed) continue;
      if (mode === 'reset' && !socket.connecting) socket.resetAndDestroy();
      else socket.destroy();
    }
  }

  /** Called by the sweep: refreshes the idle clock from the byte counters and applies any expired bound. */
  sweep(now: number): TimerVerdict | null {
    // The relay thread applies the bounds and arms keepalive itself.
    if (this.relayId >= 0) return null;
    if (this.state !== 'connecting') {
      if (!this.keepAliveArmed) this.armKeepAlive();
      const activity = this.clientBytes() + this.upstreamBytes();
      if (activity !== this.lastActivity) {
        this.lastActivity = activity;
        this.lastActiveAt = now;
      }
    } else if (this.lease !== null && this.lease.connectTimeoutMs > 0) {
      // A leased connection times out per attempt (none runs during a backoff or an injected delay).
      if (this.attemptStartedAt === 0 || now - this.attemptStartedAt < this.lease.connectTimeoutMs) return null;
      if (this.lease.connectFailed(this, 'ETIMEDOUT')) {
        this.discardUpstream();
        return null;
      }
      this.abort(ATTEMPT_TIMEOUT.result, ATTEMPT_TIMEOUT.detail, ATTEMPT_TIMEOUT.mode);
      return ATTEMPT_TIMEOUT;
    }
    const verdict = expiredTimer(this, this.cfg, now);
    if (verdict) this.abort(verdict.result, verdict.detail, verdict.mode);
    return verdict;
  }

  private setResult(result: EndResult, detail: string): void {
    if (this.result !== null) return;
    this.result = result;
    this.detail = detail;
  }

  private finish(): void {
    this.state = 'closed';
    this.closedAt = performance.now();
    if (this.result === null) this.setResult('FIN', this.firstFin);
    this.lease?.release();
    this.owner.connectionClosed(this);
  }

  /** Both byte counts, live, with one read of the relay thread's counters for a relayed connection. */
  byteCounts(): { fromClient: number; fromUpstream: number } {
    this.refreshRelayed();
    return { fromClient: this.clientBytes(), fromUpstream: this.upstreamBytes() };
  }

  get bytesFromClient(): number {
    this.refreshRelayed();
    return this.clientBytes();
  }

  get bytesFromUpstream(): number {
    this.refreshRelayed();
    return this.upstreamBytes();
  }

  private clientBytes(): number {
    return this.client !== null ? this.client.bytesRead : this.relayedFromClient;
  }

  private upstreamBytes(): number {
    if (this.upstream !== null) return this.upstream.bytesRead;
    return this.client !== null ? 0 : this.relayedFromUpstream;
  }

  private get dstText(): string | null {
    return this.dst ? endpoint(this.dst.address, this.dst.port) : null;
  }

  private get upstreamText(): string | null {
    return this.route ? endpoint(this.route.host, this.route.port) : null;
  }

  info(now: number): ConnectionInfo {
    const bytes = this.byteCounts();
    return {
      id: this.id,
      direction: this.direction,
      state: this.state,
      source: this.source,
      originalDst: this.dstText,
      upstream: this.upstreamText,
      ageMs: Math.round(now - this.startedAt),
      bytesFromClient: bytes.fromClient,
      bytesFromUpstream: bytes.fromUpstream,
      ...(this.lease?.service ? { service: this.lease.service } : {}),
      ...(this.tunnel !== null ? { peerIdentity: this.tunnel.peerIdentity } : {}),
    };
  }

  /** The access-log record (valid once closed; before that, a progress snapshot). */
  record(now = this.closedAt || performance.now()): AccessRecord {
    const bytes = this.byteCounts();
    return {
      id: this.id,
      direction: this.direction,
      source: this.source,
      originalDst: this.dstText,
      upstream: this.upstreamText,
      upstreamLocal: this.upstreamLocal,
      bytesFromClient: bytes.fromClient,
      bytesFromUpstream: bytes.fromUpstream,
      durationMs: Math.round((now - this.startedAt) * 1000) / 1000,
      connectMs: this.connectedAt > 0 ? Math.round((this.connectedAt - this.startedAt) * 1000) / 1000 : null,
      result: this.result ?? 'FIN',
      detail: this.detail,
      service: this.lease?.service ?? undefined,
      attempts: this.lease?.service ? this.lease.attempts : undefined,
      ...(this.owner.mtlsActive === true ? this.tlsFields() : {}),
    };
  }

  /** The access log's mTLS fields: `tls`, the peer's SPIFFE ID and the session's handshake time (ms). */
  private tlsFields(): Pick<AccessRecord, 'tls' | 'peerIdentity' | 'handshakeMs'> {
    const t = this.tunnel ?? tunnelInfoOf(this.client) ?? tunnelInfoOf(this.upstream);
    if (t === null) return { tls: 'plaintext' };
    return {
      tls: 'mtls',
      peerIdentity: t.peerIdentity,
      ...(t.handshakeMs !== null ? { handshakeMs: Math.round(t.handshakeMs * 1000) / 1000 } : {}),
    };
  }
}
