// The inbound side of the mTLS tunnel: an HTTP/2 server over TLS 1.3 on mtls.tunnelPort (IPv4, and IPv6 when the
// proxy intercepts it) that asks for the client's certificate and checks it (src/mtls/verify.ts: chain to the
// bundle, time, a SPIFFE ID of the trust domain). A refused client gets a GOAWAY whose debug data names the reason
// and the session closes; an accepted one may open CONNECT streams, each handed to the worker with the carried
// destination and the client's SPIFFE ID (authorization and the connect to the local app happen there).
import {
  constants,
  createSecureServer,
  type Http2SecureServer,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { TLSSocket } from 'node:tls';
import { MeshctlError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Identity } from '../mtls/identity.js';
import { verifyTlsPeer } from '../mtls/verify.js';
import type { Family } from '../values/ip.js';
import type { TunnelInfo } from './tunnel-leg.js';
import type { TunnelMetrics } from './tunnel-metrics.js';
import { parseAuthority, REASON_HEADER, SESSION_WINDOW, TUNNEL_ALPN, TUNNEL_SETTINGS } from './tunnel-wire.js';

/** A CONNECT stream from a verified peer, with the destination it carries. */
export type TunnelStreamHandler = (
  stream: ServerHttp2Stream,
  dst: { readonly address: string; readonly port: number; readonly family: Family },
  peer: Omit<TunnelInfo, 'localIdentity'>,
) => void;

interface SessionPeer {
  readonly peerIdentity: string;
  readonly handshakeMs: number | null;
  fresh: boolean;
}

/** One listening socket of the tunnel: a family's port bound here, or an fd systemd passed (socket activation). */
export interface TunnelSocket {
  readonly family: Family;
  readonly fd: number | null;
}

const kAcceptedAt = Symbol('meshctl.tunnelAcceptedAt');

/** How long a refused client may keep its session before it is destroyed (its GOAWAY has been sent by then). */
const REFUSED_LINGER_MS = 1000;

function serverOptions(identity: Identity) {
  return {
    ...identity.secureContext,
    minVersion: 'TLSv1.3' as const,
    ALPNProtocols: [TUNNEL_ALPN],
    requestCert: true,
    // The SPIFFE verification decides (with OpenSSL's own verdict); a refusal is answered with its reason.
    rejectUnauthorized: false,
    allowHTTP1: false,
    settings: TUNNEL_SETTINGS,
  };
}

export class TunnelServer {
  private readonly servers: Http2SecureServer[] = [];
  private readonly peers = new WeakMap<ServerHttp2Session, SessionPeer>();
  private readonly sessions = new Set<ServerHttp2Session>();

  constructor(
    private identity: Identity,
    private readonly onStream: TunnelStreamHandler,
    private readonly metrics: TunnelMetrics,
    private readonly log: Logger,
    /** TCP keepalive of the sessions' sockets (proxy.keepalive), or null. */
    private readonly keepaliveDelayMs: number | null = null,
  ) {}

  /**
   * Listens on `port` for each socket's family, or on its activated fd; throws MeshctlError LISTEN_FAILED
   * (closing what it opened) on failure.
   */
  async listen(port: number, sockets: readonly TunnelSocket[]): Promise<void> {
    for (const { family, fd } of sockets) {
      const server = createSecureServer(serverOptions(this.identity));
      server.on('connection', (socket: Socket) => {
        (socket as Socket & { [kAcceptedAt]?: number })[kAcceptedAt] = performance.now();
        socket.setNoDelay(true);
        if (this.keepaliveDelayMs !== null) socket.setKeepAlive(true, this.keepaliveDelayMs);
      });
      server.on('session', (session: ServerHttp2Session) => this.sessionOpened(session));
      server.on('stream', (stream: ServerHttp2Stream, headers) => this.streamOpened(stream, headers));
      server.on('tlsClientError', (error: NodeJS.ErrnoException, socket: TLSSocket) => {
        this.metrics.handshakeFailed('tls-error');
        this.log.debug({ err: error, peer: socket.remoteAddress }, 'mTLS tunnel: a TLS handshake failed');
      });
      const host = family === 'ipv6' ? '::' : '0.0.0.0';
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          const done = () => {
            server.removeListener('error', reject);
            resolve();
          };
          if (fd !== null) server.listen({ fd, backlog: 4096 }, done);
          else server.listen({ host, port, ipv6Only: family === 'ipv6', backlog: 4096 }, done);
        });
      } catch (error) {
        this.close();
        throw new MeshctlError(
          'LISTEN_FAILED',
          fd !== null
            ? `the mTLS tunnel listener could not use the socket-activated fd ${fd} (${family}, mtls.tunnelPort ${port}): ${(error as Error).message}`
            : `the mTLS tunnel listener could not listen on ${host === '::' ? `[::]` : host}:${port} (mtls.tunnelPort): ${(error as Error).message}`,
          fd !== null
            ? 'check the proxy socket unit: the tunnel fds must be listening TCP stream sockets (`meshctl service install` writes them)'
            : 'free the port or set another mtls.tunnelPort (on every host of the mesh)',
          { cause: error },
        );
      }
      server.on('error', (error) => this.log.error({ err: error }, 'mTLS tunnel listener error'));
      this.servers.push(server);
    }
  }

  get listening(): string[] {
    return this.servers.map((s) => {
      const a = s.address();
      return typeof a === 'object' && a !== null
        ? `tunnel ${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`
        : 'tunnel';
    });
  }

  /** New sessions present `identity` and trust its bundle; open sessions keep theirs. */
  setIdentity(identity: Identity): void {
    this.identity = identity;
    for (const s of this.servers) s.setSecureContext(serverOptions(identity));
  }

  private sessionOpened(session: ServerHttp2Session): void {
    this.metrics.sessionOpened('server');
    this.sessions.add(session);
    session.on('close', () => {
      this.sessions.delete(session);
      this.metrics.sessionClosed('server');
    });
    session.on('error', (error) => this.log.debug({ err: error }, 'mTLS tunnel session error'));
    const socket = session.socket as TLSSocket & { _parent?: { [kAcceptedAt]?: number } };
    // The TCP socket the TLS socket wraps (Node's `_parent`) was stamped at accept.
    const acceptedAt = socket._parent?.[kAcceptedAt];
    const handshakeMs = acceptedAt === undefined ? null : performance.now() - acceptedAt;
    if (handshakeMs !== null) this.metrics.handshake(handshakeMs);
    const verdict = verifyTlsPeer(socket, this.identity.bundle, { role: 'client' });
    if (!verdict.ok) {
      this.metrics.handshakeFailed(verdict.reason);
      this.log.warn(
        { peer: socket.remoteAddress, reason: verdict.reason, detail: verdict.detail, peerIdentity: verdict.spiffeId },
        'mTLS tunnel: a client certificate is refused',
      );
      session.goaway(constants.NGHTTP2_REFUSED_STREAM, 0, Buffer.from(verdict.reason, 'latin1'));
      session.close();
      setTimeout(() => session.destroy(), REFUSED_LINGER_MS).unref();
      return;
    }
    session.setLocalWindowSize(SESSION_WINDOW);
    this.peers.set(session, { peerIdentity: verdict.spiffeId.text, handshakeMs, fresh: true });
  }

  private streamOpened(stream: ServerHttp2Stream, headers: Record<string, string | string[] | undefined>): void {
    const peer = this.peers.get(stream.session as ServerHttp2Session);
    if (peer === undefined) {
      stream.close(constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    if (headers[':method'] !== 'CONNECT') {
      stream.respond({ ':status': 405, [REASON_HEADER]: 'not-connect' }, { endStream: true });
      return;
    }
    const dst = parseAuthority(headers[':authority'] as string | undefined);
    if (typeof dst === 'string') {
      stream.respond({ ':status': 400, [REASON_HEADER]: 'bad-authority' }, { endStream: true });
      return;
    }
    this.metrics.streamOpened('server');
    stream.on('close', () => this.metrics.streamClosed('server'));
    this.onStream(stream, dst, { peerIdentity: peer.peerIdentity, handshakeMs: peer.fresh ? peer.handshakeMs : null });
    peer.fresh = false;
  }

  /** Stops listening; open sessions take no new streams (GOAWAY) and end as their streams do. */
  close(): void {
    for (const s of this.servers) s.close();
    this.servers.length = 0;
    for (const s of this.sessions) if (!s.closed) s.close();
  }

  /** Destroys every open session (the worker's forced close). */
  destroySessions(): void {
    for (const s of this.sessions) s.destroy();
  }
}
