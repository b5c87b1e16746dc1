// The mTLS tunnel of one worker: this proxy's identity (loaded at start, reloaded by the watcher when its files
// change: new sessions use it, open ones keep theirs), the dialer for outbound connections to mesh members, the
// tunnel listener (unless mtls.inbound is disable), which destinations are mesh members (services[].mtls, and
// mtls.peers), and the tunnel's counters and the certificate's expiry for /stats and /metrics.
import type { Socket } from 'node:net';
import type { Config, ServiceConfig } from '../config/types.js';
import type { Logger } from '../log.js';
import { expiryJson, identityExpiry, renderExpiryMetrics } from '../mtls/expiry.js';
// The identity (X.509 parsing and verification), its watcher, the dialer and the listener (TLS, HTTP/2 sessions)
// are imported by start(), so a proxy without an mTLS identity never loads them.
import type { Identity, IdentityPaths } from '../mtls/identity.js';
import type { IdentityWatcher } from '../mtls/watch.js';
import { CidrSet } from '../policy/cidr-table.js';
import type { DialTarget, TunnelDialer } from './tunnel-client.js';
import { mergeTunnelSnapshots, renderTunnelPrometheus, TunnelMetrics, type TunnelSnapshot } from './tunnel-metrics.js';
import type { TunnelServer, TunnelSocket, TunnelStreamHandler } from './tunnel-server.js';
import { authorityOf } from './tunnel-wire.js';

/** A worker's report on its tunnel. */
export interface TunnelStats {
  readonly counters: TunnelSnapshot;
  /** This proxy's identity and its expiry (src/mtls/expiry.ts expiryJson). */
  readonly identity: Record<string, string | number>;
  readonly listening: readonly string[];
}

/** The identity files of `config`, or null while mTLS has none. */
export function identityPathsOf(config: Pick<Config, 'mtls'>): IdentityPaths | null {
  const { certificate, key, bundle } = config.mtls.identity;
  return certificate !== null && key !== null && bundle !== null ? { certificate, key, bundle } : null;
}

export class TunnelRuntime {
  readonly metrics = new TunnelMetrics();
  /** Set by start(), which the worker awaits before it uses the runtime (close() may come after a failed start). */
  private dialer: TunnelDialer | null = null;
  private server: TunnelServer | null = null;
  private watcher: IdentityWatcher | null = null;
  private peers: CidrSet;
  private services: Map<string, ServiceConfig>;
  private readonly log: Logger;

  private constructor(
    private config: Config,
    private readonly paths: IdentityPaths,
    private readonly onStream: TunnelStreamHandler,
    /** The worker's logger (for the identity's first line); `log` is the tunnel's own. */
    private readonly workerLog: Logger,
  ) {
    this.log = workerLog.child({ component: 'mtls' });
    this.peers = new CidrSet(config.mtls.peers);
    this.services = new Map(config.services.map((s) => [s.name, s]));
  }

  /** The tunnel for `config`, or null when it has no identity; start() loads the identity. */
  static create(config: Config, onStream: TunnelStreamHandler, log: Logger): TunnelRuntime | null {
    const paths = identityPathsOf(config);
    if (paths === null) return null;
    return new TunnelRuntime(config, paths, onStream, log);
  }

  get identity(): Identity {
    return this.watcher!.current();
  }

  /**
   * Loads the identity (throws IDENTITY_INVALID / IDENTITY_EXPIRED: the proxy does not start with an identity it
   * would refuse in a peer), then opens the tunnel listener unless mtls.inbound is disable: per family, the fd
   * systemd passed (socket activation) or mtls.tunnelPort bound here (fd null).
   */
  async start(sockets: readonly TunnelSocket[]): Promise<void> {
    const [{ loadIdentity }, { watchIdentity }, { TunnelDialer }] = await Promise.all([
      import('../mtls/identity.js'),
      import('../mtls/watch.js'),
      import('./tunnel-client.js'),
    ]);
    const identity = loadIdentity(this.paths);
    this.workerLog.info(
      {
        spiffeId: identity.spiffeId.text,
        notAfter: identity.notAfter.toISOString(),
        inbound: this.config.mtls.inbound,
      },
      'mTLS identity loaded',
    );
    this.dialer = new TunnelDialer(identity, this.metrics, this.log, this.config.proxy.keepaliveDelayMs);
    this.watcher = watchIdentity(this.paths, identity, {
      log: this.log,
      onReload: (next, previous) => this.rotate(next, previous),
    });
    if (this.config.mtls.inbound === 'disable') return;
    const { TunnelServer } = await import('./tunnel-server.js');
    const server = new TunnelServer(
      identity,
      this.onStream,
      this.metrics,
      this.log,
      this.config.proxy.keepaliveDelayMs,
    );
    await server.listen(this.config.mtls.tunnelPort, sockets);
    this.server = server;
  }

  /** The new config's peers and services; the listener and identity files stay (a change needs a restart). */
  reconfigure(config: Config): void {
    const p = identityPathsOf(config);
    if (
      p === null ||
      p.certificate !== this.paths.certificate ||
      p.key !== this.paths.key ||
      p.bundle !== this.paths.bundle ||
      config.mtls.tunnelPort !== this.config.mtls.tunnelPort ||
      (config.mtls.inbound === 'disable') !== (this.config.mtls.inbound === 'disable')
    )
      this.log.warn(
        'mtls.identity, mtls.tunnelPort, or mtls.inbound to or from disable changed: the tunnel listener and identity files change when the proxy restarts (strict and permissive apply at once)',
      );
    this.config = config;
    this.peers = new CidrSet(config.mtls.peers);
    this.services = new Map(config.services.map((s) => [s.name, s]));
  }

  private rotate(next: Identity, previous: Identity): void {
    this.dialer!.setIdentity(next);
    this.server?.setIdentity(next);
    this.log.info(
      { spiffeId: next.spiffeId.text, previous: previous.spiffeId.text, notAfter: next.notAfter.toISOString() },
      'mTLS identity rotated: new connections use it, open ones keep theirs',
    );
  }

  /**
   * Where a connection to `host:port` goes through the tunnel: when it was routed to a service with `mtls`, or
   * `host` is in mtls.peers. Null: a plaintext connect.
   */
  targetFor(host: string, port: number, service: string | null): DialTarget | null {
    const svc = service === null ? undefined : this.services.get(service);
    if (!(svc?.mtls ?? false) && !this.peers.has(host)) return null;
    return {
      host,
      tunnelPort: this.config.mtls.tunnelPort,
      authority: authorityOf(host, port),
      allowed: svc?.identities ?? [],
      fallback: this.config.mtls.allowPlaintextFallback,
    };
  }

  dial(target: DialTarget): Socket {
    return this.dialer!.dial(target);
  }

  /** This proxy's own SPIFFE ID now. */
  get localIdentity(): string {
    return this.identity.spiffeId.text;
  }

  stats(): TunnelStats {
    return {
      counters: this.metrics.snapshot(),
      identity: expiryJson(identityExpiry(this.identity)),
      listening: this.server?.listening ?? [],
    };
  }

  close(): void {
    this.watcher?.close();
    this.server?.close();
    this.server?.destroySessions();
    this.dialer?.close();
  }

  /** Stops the listener (drain): open sessions and their streams finish. */
  stopListening(): void {
    this.server?.close();
  }
}

/** The /stats `mtls` section: the workers' tunnel counters added up, the identity as the first worker has it. */
export function mergeTunnelStats(stats: readonly (TunnelStats | null)[]): TunnelStats | null {
  const present = stats.filter((s): s is TunnelStats => s !== null);
  if (present.length === 0) return null;
  return {
    counters: mergeTunnelSnapshots(present.map((s) => s.counters))!,
    identity: present[0]!.identity,
    listening: present.flatMap((s) => s.listening).filter((l, i, all) => all.indexOf(l) === i),
  };
}

/** The tunnel's metrics and the certificate expiry (`meshctl_mtls_certificate_expiry_seconds`) in Prometheus text. */
export function renderMtlsPrometheus(merged: TunnelStats | null): string {
  if (merged === null) return '';
  const id = merged.identity;
  const expiry = identityExpiry(
    {
      spiffeId: { text: String(id.spiffeId) } as Identity['spiffeId'],
      notBefore: new Date(String(id.notBefore)),
      notAfter: new Date(String(id.notAfter)),
    },
    new Date(),
  );
  return renderTunnelPrometheus(merged.counters) + renderExpiryMetrics(expiry);
}
