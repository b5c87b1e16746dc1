// The data plane of one process: listeners → accept → original destination → route → relay, with the
// connection registry that the sweep, the admin tables, drain and reload work on.
import type { Socket } from 'node:net';
import { availableParallelism, networkInterfaces } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { Config } from '../config/types.js';
import { isMeshctlError } from '../errors.js';
import type { Logger } from '../log.js';
import type { PolicySnapshot } from '../policy/metrics.js';
import { PolicyRuntime } from '../policy/runtime.js';
import { AccessLog } from './access-log.js';
import { compileFrontDoor, type FrontDoorOptions } from './front-door.js';
import { FrontDoor, type FrontDoorHost } from './front-door-runtime.js';
import { isTunnelListener, listenerLabel, openListener, type ListenerSpec, type OpenListener } from './listeners.js';
import { DIRECTIONS, ProxyMetrics, type Direction, type MetricsSnapshot } from './metrics.js';
import { readOriginalDst, socketFd, type OriginalDst } from '../native/original-dst.js';
import { errnoCode, loopPeer, type FrontDoorStats, type LoopPeer } from '../native/addon.js';
import { Connection, type ConnectionInfo, type ConnectionOwner } from './connection.js';
import { RelayThread } from './relay-thread.js';
import {
  lookupRows,
  newestFirst,
  parseSourceQuery,
  RecentConnections,
  type SourceLookupRow,
} from './recent-connections.js';
import { LocalAddresses, routeConnection, transparentDestination, type AcceptedOn } from './routing.js';
import { tuneHeapForTunnel } from './heap-flags.js';
import { Sweeper, sweepIntervalMs } from './timers.js';
import { serverLeg } from './tunnel-leg.js';
import { TunnelRuntime, type TunnelStats } from './tunnel-runtime.js';
import type { TunnelStreamHandler } from './tunnel-server.js';
import type { Family } from '../values/ip.js';

/**
 * How long a /lookup that found nothing, or a /stats, waits for the front door's records due at the question (they
 * leave a relay thread once per millisecond; this bound only matters on a starved machine).
 */
const RECORDS_DUE_WAIT_MS = 100;

/** One of the proxy's own connections came back to it (the capture rules did not exempt its uid). */
export interface SelfLoopEvent {
  readonly uid: number;
  readonly source: string;
  readonly originalDst: string;
  /** Self-loops this worker refused so far. */
  readonly count: number;
}

export interface WorkerStats {
  readonly index: number;
  readonly pid: number;
  readonly listening: readonly string[];
  readonly draining: boolean;
  readonly active: number;
  readonly metrics: MetricsSnapshot;
  readonly policy: PolicySnapshot;
  /** The mTLS tunnel's counters and identity; null without mTLS. */
  readonly mtls: TunnelStats | null;
  /** The relay threads' front door: its counters over every thread, and the listeners it accepts on; null when Node accepts. */
  readonly frontDoor: (Record<keyof FrontDoorStats, number> & { threads: number; listening: string[] }) | null;
  /** Access-log lines dropped because the destination did not keep up (the log's memory is bounded). */
  readonly accessLogDropped: number;
  /** Connections relayed as loop suspects (the proxy's uid, unmarked), by JS and by the relay threads' front door. */
  readonly loopSuspects: number;
}

/** The host's interface addresses now (os.networkInterfaces): read again per check, as addresses come and go. */
export function hostAddresses(): string[] {
  return Object.values(networkInterfaces()).flatMap((entries) => (entries ?? []).map((e) => e.address));
}

/** Relay threads per worker: proxy.relayThreads, "auto" being one per core. */
export function relayThreadCount(config: Pick<Config, 'proxy'>): number {
  const n = config.proxy.relayThreads;
  return n === 'auto' ? availableParallelism() : n;
}

function specKey(spec: ListenerSpec): string {
  return `${spec.name}|${spec.host}|${spec.port}|${spec.fd ?? ''}`;
}

/**
 * Where a connection was accepted, read on demand: every socket a bound listener accepts has its port, and the
 * local address (a getsockname() per connection) is needed only for TPROXY or when the original destination has
 * that same port.
 */
class AcceptedSocket implements AcceptedOn {
  constructor(
    private readonly socket: Socket,
    private readonly spec: ListenerSpec,
  ) {}

  get localAddress(): string {
    return this.socket.localAddress ?? '';
  }

  get localPort(): number {
    // Activated fds may not be bound to the configured port; transparent (TPROXY) sockets keep the peer's target.
    return this.spec.fd === null && !this.spec.transparent ? this.spec.port : (this.socket.localPort ?? 0);
  }
}

export class ProxyWorker implements ConnectionOwner, FrontDoorHost {
  readonly metrics = new ProxyMetrics();
  private config: Config;
  private listeners: OpenListener[] = [];
  private readonly connections = new Set<Connection>();
  readonly accessLog: AccessLog;
  private readonly sweeper: Sweeper;
  private ownPorts: Set<number>;
  private local: LocalAddresses | null = null;
  private nextId = 0;
  private draining = false;
  private emptyWaiters: (() => void)[] = [];
  private readonly warnedSources = new Set<string>();
  private policy: PolicyRuntime;
  /** Started when the config asks for the native relay; kept across reloads for the connections they carry. */
  private readonly relays: RelayThread[] = [];
  /** How many of `relays` take new connections (proxy.relayThreads, as far as they started). */
  private activeRelays = 0;
  private nextRelay = 0;
  private readonly handoffFailures = new Set<string>();
  /** The last closed connections, for the admin /lookup (fixed size; see recent-connections.ts). */
  readonly recent = new RecentConnections();
  /** The relay threads' accepting (proxy.relay native and an addon that has it); Node accepts otherwise. */
  private readonly frontDoor = new FrontDoor(this);
  /** The uid this process's sockets are owned by: a connection whose peer socket has it is our own, looped. */
  private readonly ownUid = process.geteuid?.() ?? -1;
  private selfLoops = 0;
  /** Connections the JS path relayed as loop suspects (ownPeer). */
  private loopSuspects = 0;
  /** sock_diag lookups of the self-loop check that failed, and when that was last logged. */
  private ownerLookupFailures = 0;
  private ownerLookupWarnedAt = -Infinity;
  /** When the front door's counters were last checked for trouble, and what they said then. */
  private frontDoorCheckedAt = -Infinity;
  private frontDoorSeen = { ownerLookupFailures: 0, acceptPauses: 0 };
  /** Told about every refused self-loop (the primary turns /ready not-ready and logs the likely cause). */
  onSelfLoop: ((event: SelfLoopEvent) => void) | null = null;
  /** The mTLS tunnel (identity, dialer, listener), when mtls.identity is configured. */
  private tunnel: TunnelRuntime | null = null;
  private specs: readonly ListenerSpec[];
  /** The tunnel's socket-activated listeners (empty: the tunnel binds mtls.tunnelPort itself). */
  private readonly tunnelSpecs: readonly ListenerSpec[];

  constructor(
    config: Config,
    specs: readonly ListenerSpec[],
    private readonly log: Logger,
    readonly index = 0,
  ) {
    this.config = config;
    this.specs = specs.filter((s) => !isTunnelListener(s));
    this.tunnelSpecs = specs.filter(isTunnelListener);
    this.ownPorts = this.portsOf(config);
    this.accessLog = new AccessLog(config.proxy.accessLog, { worker: index });
    this.sweeper = new Sweeper(() => this.sweep());
    this.policy = new PolicyRuntime(config, null, log);
  }

  /** The sweep must also run often enough for the shortest per-attempt connect timeout of a service. */
  private sweepInterval(config: Config): number {
    const base = sweepIntervalMs(config.proxy);
    const attempt = this.policy.minConnectTimeoutMs;
    return attempt === null ? base : Math.min(base, Math.max(25, Math.floor(attempt / 4)));
  }

  /**
   * The relay threads, when the config asks for them (proxy.relay: native); otherwise Node streams relay. A reload
   * that raises proxy.relayThreads starts more; one that lowers it stops handing new connections to the surplus,
   * which keep relaying the ones they have (closing a thread would cut them).
   */
  private startRelay(config: Config): void {
    if (config.proxy.relay !== 'native') return;
    const sweepMs = sweepIntervalMs(config.proxy);
    for (const relay of this.relays) relay.setSweepInterval(sweepMs);
    const want = relayThreadCount(config);
    try {
      while (this.relays.length < want) this.relays.push(new RelayThread(sweepMs, this.frontDoor));
    } catch (error) {
      this.log.warn(
        { err: error, started: this.relays.length, wanted: want },
        this.relays.length === 0
          ? 'the native relay thread could not start; relaying with Node streams (as with proxy.relay: node)'
          : 'not every native relay thread could start; relaying with the ones that did',
      );
    }
    this.activeRelays = Math.min(want, this.relays.length);
  }

  /**
   * The relay thread for the next handoff: the active threads in turn (round-robin), so that established pairs
   * spread over the cores; null with proxy.relay node or when no thread could start.
   */
  get relayThread(): RelayThread | null {
    if (this.config.proxy.relay !== 'native' || this.activeRelays === 0) return null;
    const relay = this.relays[this.nextRelay % this.activeRelays]!;
    this.nextRelay = (this.nextRelay + 1) % this.activeRelays;
    return relay;
  }

  relayHandoffFailed(error: unknown): void {
    const code = (error as { code?: unknown }).code;
    const key = typeof code === 'string' ? code : 'error';
    if (this.handoffFailures.has(key)) return;
    this.handoffFailures.add(key);
    this.log.warn(
      { err: error, code: key },
      'a connection could not be handed to the relay thread; Node streams relay it (logged once per error code)',
    );
  }

  private portsOf(config: Config): Set<number> {
    return new Set([
      config.proxy.outboundPort,
      config.proxy.inboundPort,
      config.proxy.adminPort,
      ...(config.mtls.inbound !== 'disable' ? [config.mtls.tunnelPort] : []),
      ...this.specs.map((s) => s.port),
    ]);
  }

  /** The outbound leg through the mTLS tunnel when `host` is a mesh member (ConnectionOwner.openTunnel). */
  openTunnel(host: string, port: number, service: string | null): Socket | null {
    const tunnel = this.tunnel;
    const target = tunnel?.targetFor(host, port, service) ?? null;
    return target === null ? null : tunnel!.dial(target);
  }

  get mtlsActive(): boolean {
    return this.tunnel !== null;
  }

  /** The families the tunnel listener serves: those of the inbound listeners. */
  private tunnelFamilies(): Family[] {
    return this.config.capture.ipv6 === 'intercept' ? ['ipv4', 'ipv6'] : ['ipv4'];
  }

  /** Opens every listener; on failure closes the ones already open and rethrows (MeshctlError LISTEN_FAILED). */
  async start(): Promise<void> {
    // Endpoints resolved and first health checks done before the first connection is accepted.
    await this.policy.start();
    this.startRelay(this.config);
    this.tunnel = TunnelRuntime.create(this.config, this.onTunnelStream, this.log);
    if (this.tunnel !== null) tuneHeapForTunnel();
    await this.tunnel?.start(
      this.tunnelSpecs.length > 0
        ? this.tunnelSpecs.map((s) => ({ family: s.family, fd: s.fd }))
        : this.tunnelFamilies().map((family) => ({ family, fd: null })),
    );
    this.listeners = await this.openAll(this.specs);
    this.handOver(this.listeners);
    this.sweeper.start(this.sweepInterval(this.config));
    this.log.info(
      {
        listeners: this.listeners.map((l) => listenerLabel(l.spec)),
        frontDoor: this.listeners.filter((l) => this.frontDoor.holds(specKey(l.spec))).map((l) => l.spec.name),
      },
      'listening',
    );
  }

  private async openAll(specs: readonly ListenerSpec[]): Promise<OpenListener[]> {
    const opened: OpenListener[] = [];
    try {
      for (const spec of specs) opened.push(await openListener(spec, this.onConnection));
    } catch (error) {
      for (const l of opened) l.server.close();
      throw error;
    }
    return opened;
  }

  /** The relay threads' decision table for `spec` under the running config and policy (./front-door.ts). */
  private frontDoorOptions(spec: ListenerSpec): FrontDoorOptions {
    const plan = compileFrontDoor({
      config: this.config,
      policy: this.policy.config,
      listener: spec,
      ownPorts: this.ownPorts,
      ownUid: this.ownUid,
    });
    if (plan.everything.length > 0)
      this.log.debug({ listener: spec.name, why: plan.everything }, 'front door: every connection goes to JavaScript');
    return plan.options;
  }

  /**
   * Lets the relay threads accept on `listeners` (proxy.relay native, an addon with the front door); where they
   * cannot, Node keeps accepting, and that is logged once per listener.
   */
  private handOver(listeners: readonly OpenListener[]): void {
    if (this.relayThread === null) return;
    for (const l of listeners) {
      // TPROXY'd connections have no NAT record: a thread reads the original destination with SO_ORIGINAL_DST
      // and would refuse every one as not redirected; Node accepts them (transparentDestination).
      if (l.spec.direction === 'inbound' && (l.spec.transparent || this.config.capture.inbound.mode === 'tproxy'))
        continue;
      try {
        if (this.frontDoor.take(specKey(l.spec), l, this.relays, this.frontDoorOptions(l.spec))) continue;
      } catch (error) {
        this.log.warn(
          { err: error, listener: listenerLabel(l.spec) },
          'the relay threads cannot accept here; Node does',
        );
        continue;
      }
      this.log.debug(
        { listener: listenerLabel(l.spec) },
        'the relay threads cannot accept here (no front door in the addon, or no fd); Node does',
      );
    }
  }

  acceptAsked(socket: Socket, spec: ListenerSpec, dst: OriginalDst, loopSuspect: boolean): void {
    this.onConnection(socket, spec, dst, loopSuspect);
  }

  selfLoop(source: string, originalDst: string): void {
    this.selfLoops++;
    this.onSelfLoop?.({ uid: this.ownUid, source, originalDst, count: this.selfLoops });
  }

  sourceFallback(family: OriginalDst['family']): void {
    const source = this.config.proxy.inboundPassthroughSource;
    const address = family === 'ipv6' ? source.ipv6 : source.ipv4;
    this.passthroughSourceMissing(address, Object.assign(new Error('EADDRNOTAVAIL'), { code: 'EADDRNOTAVAIL' }));
  }

  frontDoorEnded(): void {
    if (this.emptyWaiters.length > 0 && this.isEmpty()) for (const resolve of this.emptyWaiters.splice(0)) resolve();
  }

  /** No connection left: none in JavaScript, none carried by a relay thread's front door. */
  private isEmpty(): boolean {
    return this.connections.size === 0 && this.relays.every((r) => r.frontDoorPending === 0);
  }

  /**
   * `given`: the original destination a relay thread already read (an asked front-door connection), and whether its
   * self-loop check found a suspect there (`givenSuspect`).
   */
  private readonly onConnection = (
    socket: Socket,
    spec: ListenerSpec,
    given: OriginalDst | null = null,
    givenSuspect = false,
  ): void => {
    const direction: Direction = spec.direction;
    this.metrics.accepted(direction);
    const conn = new Connection(`${this.index}.${++this.nextId}`, direction, socket, this.config.proxy, this);
    this.connections.add(conn);
    // A connection accepted in the same moment the drain closed the listeners is served, not reset: the drain
    // waits for it like any other open connection, and under socket activation the next instance would have
    // served it from the backlog anyway.
    const periodic = this.accessLog.periodicIntervalMs;
    if (periodic !== null) conn.nextProgressAt = conn.startedAt + periodic;
    const acceptedOn = new AcceptedSocket(socket, spec);
    // TPROXY rewrites nothing: the local endpoint is the original destination (see transparentDestination).
    let dst =
      given ??
      (direction === 'inbound' && this.config.capture.inbound.mode === 'tproxy'
        ? transparentDestination(acceptedOn, spec.family, this.config.proxy.inboundPort)
        : null);
    if (dst === null) {
      try {
        // A bound listener is v4-only or v6-only, so its family is the socket's; an activated fd may be dual-stack.
        dst = readOriginalDst(socket, spec.fd === null && !spec.transparent ? spec.family : undefined);
      } catch (error) {
        if (isMeshctlError(error, 'NO_ORIGINAL_DST')) {
          const code = (error.cause as { code?: string } | undefined)?.code;
          conn.refuse(code === undefined ? 'no-fd' : 'not-redirected', code ?? 'no-fd');
          return;
        }
        // Never let one connection take the process down (e.g. an unexpected addon error).
        this.log.error({ err: error, source: conn.source }, 'reading the original destination failed');
        conn.refuse('no-fd', 'internal-error');
        return;
      }
    }
    conn.dst = dst;
    // The thread checked the owner of an asked connection before asking (FrontDoorOptions.selfLoopUid).
    const own =
      direction === 'outbound' && dst.via === undefined && given === null
        ? this.ownPeer(socket, dst)
        : givenSuspect
          ? 'suspect'
          : null;
    if (own === 'loop') {
      conn.refuse('self-loop', 'own-uid');
      this.selfLoop(conn.source, `${dst.family === 'ipv6' ? `[${dst.address}]` : dst.address}:${dst.port}`);
      return;
    }
    if (own === 'suspect') {
      conn.loopSuspect = true;
      if (given === null) this.loopSuspects++; // the relay threads counted theirs (frontDoor.loopSuspects)
    }
    if (this.ownPorts.has(dst.port)) this.local = new LocalAddresses(hostAddresses());
    const route = routeConnection(
      direction,
      dst,
      acceptedOn,
      this.ownPorts,
      this.local ?? new LocalAddresses(),
      this.config.proxy,
      dst.via === 'tproxy' && socket.remoteAddress !== undefined
        ? { address: socket.remoteAddress, mark: this.config.capture.inbound.tproxyMark }
        : null,
    );
    if (route.kind === 'refuse') {
      conn.refuse(route.reason);
      return;
    }
    if (direction === 'inbound' && this.config.mtls.inbound === 'strict') {
      // Peers must come through the tunnel (its own listener); plaintext through capture is refused.
      conn.refuse('plaintext-refused');
      return;
    }
    this.dispatch(conn, dst, socket, route, null);
  };

  /**
   * A tunnel CONNECT from a verified peer: the carried destination must be this host (not loopback, not one of
   * the proxy's ports); then inbound policy with the peer's SPIFFE ID as principal, and the connect to the local
   * app from the passthrough source, exactly as for the inbound listener.
   */
  private readonly onTunnelStream: TunnelStreamHandler = (stream, carried, peer) => {
    let conn: Connection | null = null;
    const info = { ...peer, localIdentity: this.tunnel?.localIdentity ?? '' };
    const leg = serverLeg(stream, info, () => conn?.detail || 'refused');
    this.metrics.accepted('inbound');
    conn = new Connection(`${this.index}.${++this.nextId}`, 'inbound', leg, this.config.proxy, this);
    this.connections.add(conn);
    const periodic = this.accessLog.periodicIntervalMs;
    if (periodic !== null) conn.nextProgressAt = conn.startedAt + periodic;
    // In tproxy mode the app sees the peer host's address, as for a TPROXY'd plaintext connection.
    const tproxy = this.config.capture.inbound.mode === 'tproxy';
    const dst: OriginalDst = {
      address: carried.address,
      port: carried.port,
      family: carried.family,
      ...(tproxy ? { via: 'tproxy' as const } : {}),
    };
    conn.dst = dst;
    // The host's addresses are read again only when the cached set lacks the carried one (an address added since),
    // not on every tunneled connection: os.networkInterfaces() is a system call and an allocation per interface.
    if (this.local === null || !this.local.has(dst.address)) this.local = new LocalAddresses(hostAddresses());
    if (!this.local.has(dst.address) || /^(127\.|::1$|0\.0\.0\.0$|::$)/.test(dst.address)) {
      conn.refuse('denied', 'not-local');
      return;
    }
    const acceptedOn = { localAddress: leg.localAddress ?? '', localPort: this.config.mtls.tunnelPort };
    const source =
      tproxy && leg.remoteAddress !== undefined
        ? { address: leg.remoteAddress, port: leg.remotePort ?? 0, mark: this.config.capture.inbound.tproxyMark }
        : null;
    const route = routeConnection('inbound', dst, acceptedOn, this.ownPorts, this.local, this.config.proxy, source);
    if (route.kind === 'refuse') {
      conn.refuse(route.reason);
      return;
    }
    this.dispatch(conn, dst, leg, route, peer.peerIdentity);
  };

  /** Mesh policy, then the upstream connect. `principal`: the peer's SPIFFE ID (tunnel), null for plaintext. */
  private dispatch(
    conn: Connection,
    dst: OriginalDst,
    socket: Socket,
    route: Extract<ReturnType<typeof routeConnection>, { kind: 'connect' }>,
    principal: string | null,
  ): void {
    const direction = conn.direction;
    const policy = this.policy;
    if (policy.active) {
      // Mesh policy: a service's lease, a refusal, or null (connect as dialled).
      // The socket, not its peer address: only source-hash and inbound policy read it (one getpeername).
      const decision =
        direction === 'outbound'
          ? policy.outbound(dst.address, dst.port, socket)
          : policy.admitInbound(dst.port, socket.remoteAddress, principal);
      if (decision !== null) {
        if (typeof decision === 'string') {
          conn.refuse(decision);
        } else {
          conn.lease = decision;
          decision.begin(conn, route);
        }
        return;
      }
    }
    conn.connect(route);
  }

  /**
   * Whether the socket that made this redirected connection is owned by this proxy's own uid: then the capture
   * rules may have sent one of the proxy's upstream connections back to it, and proxying it again would loop until
   * fds run out. A first match is a suspect ('suspect': relayed, its upstream marked), a match with a marked socket
   * a loop ('loop': refused): a NAT source-port remap can show an app's connection with the endpoint of a proxy
   * socket (src/native/front_door.cc, IsSelfLoop). One sock_diag lookup (two for the proxy's own sockets). A lookup
   * that fails counts as not ours (refusing every connection would cut the host off), but never silently: the first
   * failure and one per 10 s after are logged with the cause (e.g. EAFNOSUPPORT where a sandbox forbids netlink
   * sockets).
   */
  private ownPeer(socket: Socket, dst: OriginalDst): LoopPeer | null {
    const fd = socketFd(socket);
    if (fd < 0 || this.ownUid < 0) return null;
    try {
      return loopPeer(fd, dst.family === 'ipv6' ? 6 : 4, dst.address, dst.port, this.ownUid);
    } catch (error) {
      this.ownerLookupFailures++;
      const now = performance.now();
      if (now - this.ownerLookupWarnedAt >= 10_000) {
        this.ownerLookupWarnedAt = now;
        this.log.warn(
          { err: error, failures: this.ownerLookupFailures },
          "self-loop check: cannot ask the kernel who owns a connection's socket (sock_diag); a capture loop through this proxy would not be refused. Allow AF_NETLINK sockets for the proxy",
        );
      }
      return null;
    }
  }

  connectionClosed(conn: Connection): void {
    this.connections.delete(conn);
    this.recent.add(conn, performance.now());
    this.metrics.closed(conn.direction, conn.result!, conn.bytesFromClient, conn.bytesFromUpstream);
    // The sample is drawn before the record is built: a sampled-out connection costs no record at all.
    if (this.accessLog.sampled(conn.result!)) this.accessLog.writeClosed(conn.record());
    if (this.connections.size === 0) this.frontDoorEnded();
  }

  get recordsAccess(): boolean {
    return this.accessLog.enabled;
  }

  passthroughSourceMissing(address: string, error: NodeJS.ErrnoException): void {
    if (this.warnedSources.has(address)) return;
    this.warnedSources.add(address);
    this.log.warn(
      { address, code: error.code },
      'inbound passthrough source address is not assigned on this host; connecting to local apps without it (add it to lo, e.g. `ip -6 addr add ::6/128 dev lo`)',
    );
  }

  transparentSourceFailed(address: string, error: NodeJS.ErrnoException): void {
    const key = `transparent|${error.code ?? 'error'}`;
    if (this.warnedSources.has(key)) return;
    this.warnedSources.add(key);
    this.log.warn(
      { address, code: error.code, syscall: error.syscall },
      error.code === 'EPERM'
        ? "cannot connect to the local app from the peer's address: IP_TRANSPARENT needs CAP_NET_ADMIN, which this process lacks, so TPROXY'd connections are reset; start the proxy as root (it keeps CAP_NET_ADMIN when it switches to proxy.user) or grant AmbientCapabilities=CAP_NET_ADMIN (meshctl service install does in tproxy mode)"
        : "cannot connect to the local app from the peer's address; the connection is reset (logged once per error code)",
    );
  }

  /**
   * What the threads' front door cannot log itself, at most once per 10 s: sock_diag lookups that failed (a
   * capture loop would not be refused, as isOwnConnection warns) and accept pauses (out of fds or memory).
   */
  private checkFrontDoor(now: number): void {
    if (now - this.frontDoorCheckedAt < 10_000) return;
    this.frontDoorCheckedAt = now;
    const r = this.frontDoorReport();
    if (r === null) return;
    const seen = this.frontDoorSeen;
    if (r.ownerLookupFailures > seen.ownerLookupFailures)
      this.log.warn(
        { failures: r.ownerLookupFailures, code: errnoCode(r.lastOwnerLookupErrno) },
        "self-loop check in the relay threads: cannot ask the kernel who owns a connection's socket (sock_diag); a capture loop through this proxy would not be refused. Allow AF_NETLINK sockets for the proxy",
      );
    if (r.acceptBackoffs + r.acceptErrors > seen.acceptPauses)
      this.log.warn(
        { backoffs: r.acceptBackoffs, errors: r.acceptErrors, code: errnoCode(r.lastAcceptErrno) },
        'the relay threads paused accepting (EMFILE, ENFILE, ENOMEM or another accept error; connections wait in the backlog): raise the fd limit (LimitNOFILE=) or lower the load',
      );
    this.frontDoorSeen = {
      ownerLookupFailures: r.ownerLookupFailures,
      acceptPauses: r.acceptBackoffs + r.acceptErrors,
    };
  }

  private sweep(): void {
    const now = performance.now();
    this.checkFrontDoor(now);
    for (const conn of this.connections) {
      if (conn.sweep(now)) continue;
      if (conn.nextProgressAt > 0 && now >= conn.nextProgressAt && conn.state !== 'closed') {
        const periodic = this.accessLog.periodicIntervalMs;
        conn.nextProgressAt = periodic === null ? 0 : now + periodic;
        this.accessLog.progress({ ...conn.record(now), state: conn.state });
      }
    }
  }

  /**
   * Applies a new config: new connections use it at once (open ones keep the bounds they started with),
   * listeners are opened/closed only where the set changed. Throws (and keeps the old state) if a new
   * listener cannot be opened.
   */
  async reload(config: Config, all: readonly ListenerSpec[]): Promise<void> {
    // The tunnel's listeners stay as they started (a change needs a restart; TunnelRuntime.reconfigure says so).
    const specs = all.filter((s) => !isTunnelListener(s));
    const keep = new Set(specs.map(specKey));
    const have = new Set(this.listeners.map((l) => specKey(l.spec)));
    const added = await this.openAll(specs.filter((s) => !have.has(specKey(s))));
    // The new policy adopts the old one's state (counts, ejections, DNS answers) and is swapped in whole.
    const policy = new PolicyRuntime(config, this.policy, this.log);
    await policy.start();
    this.policy = policy;
    const removed = this.listeners.filter((l) => !keep.has(specKey(l.spec)));
    for (const l of removed) this.closeListener(l);
    const kept = this.listeners.filter((l) => keep.has(specKey(l.spec)));
    this.listeners = [...kept, ...added];
    this.specs = specs;
    this.config = config;
    this.ownPorts = this.portsOf(config);
    this.tunnel?.reconfigure(config);
    this.accessLog.reconfigure(config.proxy.accessLog);
    this.startRelay(config);
    // The threads take the recompiled table for their next accepts (and threads started now take the listener).
    for (const l of kept) this.frontDoor.relisten(specKey(l.spec), this.relays, this.frontDoorOptions(l.spec));
    if (!this.draining) this.handOver(added);
    if (!this.draining) this.sweeper.start(this.sweepInterval(config));
    if (added.length > 0 || removed.length > 0) {
      this.log.info(
        { opened: added.map((l) => listenerLabel(l.spec)), closed: removed.map((l) => listenerLabel(l.spec)) },
        'listeners changed',
      );
    }
  }

  /**
   * Stops accepting, lets open connections finish for up to `timeoutMs`, then closes the rest (result `drain`).
   * Resolves when no connection is left.
   */
  async drain(timeoutMs: number): Promise<{ cut: number }> {
    if (!this.draining) {
      this.draining = true;
      for (const l of this.listeners) this.closeListener(l);
      this.tunnel?.stopListening();
      this.log.info({ open: this.connections.size, timeoutMs }, 'draining: listeners closed');
    }
    if (this.isEmpty()) return { cut: 0 };
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'deadline'>((resolve) => {
      timer = setTimeout(() => resolve('deadline'), timeoutMs);
    });
    const outcome = await Promise.race([this.whenEmpty().then(() => 'empty' as const), deadline]);
    clearTimeout(timer);
    if (outcome === 'empty') return { cut: 0 };
    const open = this.connections.size;
    for (const conn of [...this.connections]) conn.abort('drain', 'deadline', 'close');
    const cut = open + this.frontDoor.abortAll(this.relays, 'deadline', false);
    this.log.warn({ open: cut }, 'drain bound reached: closing the remaining connections');
    await this.whenEmpty();
    return { cut };
  }

  /** Stops accepting on `l`: the relay threads let go of it, or Node's server closes. */
  private closeListener(l: OpenListener): void {
    const key = specKey(l.spec);
    if (this.frontDoor.holds(key)) this.frontDoor.release(key, this.relays);
    else l.server.close();
  }

  private whenEmpty(): Promise<void> {
    if (this.isEmpty()) return Promise.resolve();
    return new Promise((resolve) => this.emptyWaiters.push(resolve));
  }

  /** Closes everything now (RST to open connections) and flushes the access log. */
  close(): void {
    this.sweeper.stop();
    this.policy.stop();
    for (const l of this.listeners) this.closeListener(l);
    for (const conn of [...this.connections]) conn.abort('drain', 'forced', 'reset');
    this.frontDoor.abortAll(this.relays, 'forced', true);
    this.tunnel?.close();
    this.accessLog.close();
  }

  flushLogs(): void {
    this.accessLog.flush();
  }

  get isListening(): boolean {
    return (
      !this.draining &&
      this.listeners.length === this.specs.length &&
      this.listeners.every((l) => l.server.listening || this.frontDoor.holds(specKey(l.spec)))
    );
  }

  /**
   * stats() once the front door's records due at the question have arrived (at most RECORDS_DUE_WAIT_MS). A
   * connection that ended on a relay thread just before is in neither the thread's list nor the counters while its
   * end record waits in the thread's outbox: without the wait, /stats would count it neither accepted nor closed.
   */
  async settledStats(): Promise<WorkerStats> {
    await this.frontDoorRecordsDue();
    return this.stats();
  }

  stats(): WorkerStats {
    const live = { outbound: { fromClient: 0, fromUpstream: 0 }, inbound: { fromClient: 0, fromUpstream: 0 } };
    for (const c of this.connections) {
      const bytes = c.byteCounts();
      live[c.direction].fromClient += bytes.fromClient;
      live[c.direction].fromUpstream += bytes.fromUpstream;
    }
    const metrics = this.metrics.snapshot(live);
    // The front door's live connections are counted at their end record; until then, from the threads' lists.
    for (const row of this.frontDoor.rows(this.relays, Number.MAX_SAFE_INTEGER)) {
      const d = metrics.directions[this.frontDoor.directionOf(row.listenerId) ?? 'outbound'];
      d.accepted++;
      d.active++;
      d.bytesFromClient += row.fromClient;
      d.bytesFromUpstream += row.fromUpstream;
    }
    const frontDoor = this.frontDoorReport();
    return {
      index: this.index,
      pid: process.pid,
      listening: this.draining ? [] : this.listeners.map((l) => listenerLabel(l.spec)),
      draining: this.draining,
      active: DIRECTIONS.reduce((n, d) => n + metrics.directions[d].active, 0),
      metrics,
      policy: this.policy.snapshot(),
      mtls: this.tunnel?.stats() ?? null,
      frontDoor,
      accessLogDropped: this.accessLog.dropped,
      loopSuspects: this.loopSuspects + (frontDoor?.loopSuspects ?? 0),
    };
  }

  private frontDoorReport(): WorkerStats['frontDoor'] {
    const listening = this.listeners.filter((l) => this.frontDoor.holds(specKey(l.spec))).map((l) => l.spec.name);
    const all = this.relays.map((r) => r.frontDoorStats()).filter((s) => s !== null);
    if (listening.length === 0 || all.length === 0) return null;
    const sum = Object.fromEntries(Object.keys(all[0]!).map((k) => [k, 0])) as Record<keyof FrontDoorStats, number>;
    // Counters add up; a `last…Errno` is any thread's that has one.
    for (const s of all)
      for (const k of Object.keys(sum) as (keyof FrontDoorStats)[])
        sum[k] = k.startsWith('last') ? Math.max(sum[k], s[k]) : sum[k] + s[k];
    return { ...sum, threads: all.length, listening };
  }

  /**
   * The open and recently closed connections from `source` (canonical ADDR:PORT, as the admin API checked it). A
   * front-door connection that ended just before the question is in neither place while its end record waits in
   * its thread's outbox (records leave once per millisecond): with nothing found, the answer waits until the
   * records due at the question have arrived (a few ms; at most RECORDS_DUE_WAIT_MS) and looks again.
   */
  async lookupSource(source: string): Promise<SourceLookupRow[]> {
    const query = parseSourceQuery(source);
    if (typeof query === 'string') return [];
    const found = this.lookupNow(query);
    if (found.length > 0) return found;
    if (await this.frontDoorRecordsDue()) return this.lookupNow(query);
    return found;
  }

  /**
   * Waits until every front-door record due now (what left the threads' pairs before this call) has reached JS, at
   * most RECORDS_DUE_WAIT_MS. Resolves whether it had to wait (false: they were all here already).
   */
  private async frontDoorRecordsDue(): Promise<boolean> {
    const due = this.relays.map((r) => r.frontDoorDue());
    const arrived = () => this.relays.every((r, i) => r.frontDoorSeen >= due[i]!);
    if (arrived()) return false;
    const deadline = performance.now() + RECORDS_DUE_WAIT_MS;
    while (!arrived() && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 1));
    return true;
  }

  private lookupNow(query: Exclude<ReturnType<typeof parseSourceQuery>, string>): SourceLookupRow[] {
    const rows = lookupRows(this.connections, this.recent, query, performance.now());
    const front = this.frontDoor.lookupRows(this.frontDoor.rows(this.relays, Number.MAX_SAFE_INTEGER), query);
    return front.length === 0 ? rows : newestFirst([...rows, ...front]);
  }

  connectionTable(limit: number): ConnectionInfo[] {
    const now = performance.now();
    const rows: ConnectionInfo[] = [];
    for (const c of this.connections) {
      if (rows.length >= limit) break;
      rows.push(c.info(now));
    }
    for (const row of this.frontDoor.rows(this.relays, limit - rows.length))
      rows.push(this.frontDoor.connectionInfo(row));
    return rows;
  }
}
