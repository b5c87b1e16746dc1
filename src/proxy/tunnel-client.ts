// The outbound side of the mTLS tunnel: one HTTP/2 session over TLS 1.3 per peer (address, tunnel port and the
// identities allowed for it), reused by every connection to that peer as a CONNECT stream. The server's certificate
// is checked before the first CONNECT leaves (src/mtls/verify.ts: chain to the bundle, time, SPIFFE ID of the trust
// domain, and `services[].identities`); a refusal fails every stream waiting on the session with its reason, which
// the Connection treats as a connect failure (retries, outlier detection). Sessions are dropped on GOAWAY, error
// or close, and closed gracefully (open streams finish) when the identity rotates.
import { connect as h2connect, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { connect as tlsConnect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import type { Logger } from '../log.js';
import type { Identity } from '../mtls/identity.js';
import type { IdentityPattern } from '../mtls/spiffe-id.js';
import { verifyTlsPeer } from '../mtls/verify.js';
import { clientLeg, clientLegEstablished } from './tunnel-leg.js';
import type { TunnelMetrics } from './tunnel-metrics.js';
import {
  REASON_HEADER,
  refusalCode,
  SESSION_WINDOW,
  TUNNEL_ALPN,
  TUNNEL_SETTINGS,
  tunnelFailureCode,
} from './tunnel-wire.js';

/** Where one outbound connection goes through the tunnel. */
export interface DialTarget {
  /** The peer host's address (the endpoint chosen for the connection). */
  readonly host: string;
  readonly tunnelPort: number;
  /** The original destination carried in the CONNECT (`addr:port`). */
  readonly authority: string;
  /** The SPIFFE IDs the peer may present; empty: any ID of the trust domain. */
  readonly allowed: readonly IdentityPattern[];
  /** Whether a tunnel port that does not answer may be followed by a plaintext connect. */
  readonly fallback: boolean;
}

/** How long a session to a peer may carry nothing before it is closed. */
const SESSION_IDLE_MS = 5 * 60_000;

/** A connect failure of the tunnel, with the code the Connection and the lease see. */
export type TunnelError = NodeJS.ErrnoException & { fallback?: boolean };

class PeerSession {
  readonly session: ClientHttp2Session;
  /** The server's SPIFFE ID once verified. */
  peerId: string | null = null;
  handshakeMs: number | null = null;
  /** Why the session cannot carry streams (refused server, GOAWAY reason), once known. */
  failure: string | null = null;
  private failureDetail = '';
  /** Whether the next established stream is the session's first (it reports the handshake time). */
  fresh = true;
  handshakeDone = false;

  constructor(
    readonly key: string,
    target: DialTarget,
    context: SecureContext,
    identity: Identity,
    private readonly owner: TunnelDialer,
  ) {
    const started = performance.now();
    const createConnection = (): TLSSocket => {
      const socket = tlsConnect({
        host: target.host,
        port: target.tunnelPort,
        secureContext: context,
        ALPNProtocols: [TUNNEL_ALPN],
        minVersion: 'TLSv1.3',
        // The SPIFFE check below replaces the host-name check (an ID is a URI SAN, not a DNS name).
        rejectUnauthorized: false,
        checkServerIdentity: () => undefined,
      });
      socket.setNoDelay(true);
      if (owner.keepaliveDelayMs !== null) socket.setKeepAlive(true, owner.keepaliveDelayMs);
      // Before HTTP/2's own listener, so the verdict is known before HTTP/2 sets the session up. A refused session
      // is destroyed by the first 'connect' listener (below), before the queued CONNECTs are submitted: destroying
      // the socket here, under HTTP/2's setup, would abort the process.
      socket.once('secureConnect', () => this.verify(socket, identity, target, performance.now() - started));
      return socket;
    };
    const authority = target.host.includes(':') ? `[${target.host}]` : target.host;
    this.session = h2connect(`https://${authority}:${target.tunnelPort}`, {
      createConnection,
      settings: TUNNEL_SETTINGS,
    });
    // Registered before any request(): runs before HTTP/2 submits the streams queued while connecting.
    this.session.on('connect', () => {
      if (this.failure !== null) this.refuse();
      else this.session.setLocalWindowSize(SESSION_WINDOW);
    });
    this.session.on('goaway', (_code: number, _last: number, data?: Buffer) => {
      const reason = data && data.length > 0 ? data.toString('latin1') : '';
      if (/^[a-z0-9-]{1,40}$/.test(reason)) this.failure ??= `remote-${reason}`;
      this.owner.drop(this);
    });
    this.session.on('error', (error: NodeJS.ErrnoException) => {
      this.failure ??= tunnelFailureCode(error, this.handshakeDone);
      this.owner.drop(this);
    });
    this.session.on('close', () => this.owner.closed(this));
    // A session idle this long closes (GOAWAY; streams still open finish): the next connection opens a new one.
    this.session.setTimeout(SESSION_IDLE_MS, () => {
      this.owner.drop(this);
      this.session.close();
    });
  }

  private verify(socket: TLSSocket, identity: Identity, target: DialTarget, ms: number): void {
    this.handshakeDone = true;
    this.handshakeMs = ms;
    this.owner.metrics.handshake(ms);
    const verdict = verifyTlsPeer(socket, identity.bundle, { role: 'server', allowed: target.allowed });
    if (verdict.ok) {
      this.peerId = verdict.spiffeId.text;
      return;
    }
    // src/mtls's reason as it is (`identity-not-allowed`, `wrong-trust-domain`, …): one name in logs and metrics.
    const failure = verdict.reason;
    this.failure = failure;
    this.owner.metrics.handshakeFailed(failure);
    this.owner.log.warn(
      { peer: `${target.host}:${target.tunnelPort}`, reason: failure, detail: verdict.detail },
      'mTLS tunnel: the server certificate is refused',
    );
    this.owner.drop(this);
    this.failureDetail = verdict.detail;
  }

  /** Destroys a session whose server was refused: its streams fail with the reason, none was sent. */
  private refuse(): void {
    this.session.destroy(Object.assign(new Error(this.failureDetail), { code: this.failure }));
  }
}

export class TunnelDialer {
  private readonly sessions = new Map<string, PeerSession>();
  private context: SecureContext;

  constructor(
    private identity: Identity,
    readonly metrics: TunnelMetrics,
    readonly log: Logger,
    /** TCP keepalive of the sessions' sockets (proxy.keepalive), or null. */
    readonly keepaliveDelayMs: number | null = null,
  ) {
    this.context = TunnelDialer.contextOf(identity);
  }

  private static contextOf(identity: Identity): SecureContext {
    return createSecureContext({ ...identity.secureContext, minVersion: 'TLSv1.3' });
  }

  /** New sessions present `identity`; the open ones finish their streams and close (GOAWAY). */
  setIdentity(identity: Identity): void {
    this.identity = identity;
    this.context = TunnelDialer.contextOf(identity);
    for (const s of [...this.sessions.values()]) {
      this.sessions.delete(s.key);
      if (!s.session.closed) s.session.close();
    }
  }

  /** Opens a CONNECT stream to `target`: a Socket-like leg that emits 'connect' once the peer's app accepted. */
  dial(target: DialTarget): Socket {
    const peer = this.sessionFor(target);
    const stream = peer.session.request({ ':method': 'CONNECT', ':authority': target.authority }, { endStream: false });
    const leg = clientLeg(stream);
    this.metrics.streamOpened('client');
    let failed = false;
    stream.on('error', (error: TunnelError) => {
      if (!leg.connecting) return;
      failed = true;
      // A refusal answered by the peer (remote-<reason>) keeps its code.
      const code = error.code?.startsWith('remote-')
        ? error.code
        : (peer.failure ?? tunnelFailureCode(error, peer.handshakeDone));
      error.code = code;
      if (code === 'tunnel-unreachable' && target.fallback) error.fallback = true;
    });
    stream.on('close', () => {
      this.metrics.streamClosed('client');
      // Closed before an answer and without an error (a session closed under it): still a failed connect.
      if (leg.connecting && !failed) {
        const code = peer.failure ?? 'tunnel-closed';
        leg.emit(
          'error',
          Object.assign(new Error(`the tunnel stream closed before the CONNECT was answered`), { code }),
        );
      }
    });
    stream.once('response', (headers) => this.answered(peer, stream, leg, Number(headers[':status']), headers));
    return leg;
  }

  private answered(
    peer: PeerSession,
    stream: ClientHttp2Stream,
    leg: Socket,
    status: number,
    headers: Record<string, string | string[] | undefined>,
  ): void {
    if (status === 200 && peer.peerId !== null && peer.failure === null) {
      clientLegEstablished(leg, {
        peerIdentity: peer.peerId,
        handshakeMs: peer.fresh ? peer.handshakeMs : null,
        localIdentity: this.identity.spiffeId.text,
      });
      peer.fresh = false;
      return;
    }
    const code = refusalCode(status, headers[REASON_HEADER]);
    stream.destroy(Object.assign(new Error(`the tunnel peer refused the CONNECT: ${code}`), { code }));
  }

  private sessionFor(target: DialTarget): PeerSession {
    const key = `${target.host}|${target.tunnelPort}|${target.allowed.map((p) => JSON.stringify(p)).join(',')}`;
    const have = this.sessions.get(key);
    if (have !== undefined && !have.session.closed && !have.session.destroyed && have.failure === null) return have;
    const peer = new PeerSession(key, target, this.context, this.identity, this);
    this.sessions.set(key, peer);
    this.metrics.sessionOpened('client');
    return peer;
  }

  /** A session that can take no new streams leaves the pool (its open streams go on). */
  drop(peer: PeerSession): void {
    if (this.sessions.get(peer.key) === peer) this.sessions.delete(peer.key);
  }

  closed(peer: PeerSession): void {
    this.drop(peer);
    this.metrics.sessionClosed('client');
  }

  close(): void {
    for (const s of this.sessions.values()) s.session.destroy();
    this.sessions.clear();
  }
}
