// The proxy's DNS server: UDP and TCP on capture.dns.port, on 127.0.0.1 and (capture.ipv6 intercept) ::1, where
// the capture rules' REDIRECT sends every DNS query of the host; or on sockets systemd passed (socket
// activation). One per host: it runs in the proxy's primary process, asynchronously beside the connection path
// (the workers accept and relay; the primary only answers queries). What it answers: src/dns/responder.ts.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import type { Config } from '../config/types.js';
import { MeshctlError } from '../errors.js';
import type { Logger } from '../log.js';
import { meshNames } from '../policy/mesh-names.js';
import type { Family } from '../values/ip.js';
import { DnsCache } from './cache.js';
import { Forwarder, serverLabel } from './forwarder.js';
import { type DnsSnapshot } from './metrics.js';
import { UpstreamServers } from './resolv-conf.js';
import { DnsResponder, type DnsAnswerRecord } from './responder.js';

/** Answers kept in the cache at most. */
export const CACHE_ENTRIES = 10_000;
/** TCP clients at once; more are closed at accept. */
const MAX_TCP_CLIENTS = 256;
/** A TCP client idle this long is closed (RFC 7766 §6.2.3 suggests seconds). */
const TCP_IDLE_MS = 10_000;

/** One family's DNS sockets: bound to host:port, or fds systemd passed. */
export interface DnsListenerSpec {
  readonly family: Family;
  readonly host: string;
  readonly port: number;
  readonly udpFd: number | null;
  readonly tcpFd: number | null;
}

/** Where the access log goes; the server samples (like connections: errors always, the rest by sampleRatio). */
export interface DnsQueryLog {
  readonly sampleRatio: number;
  write(record: DnsAnswerRecord): void;
}

export type DnsConfig = Pick<Config, 'capture' | 'services' | 'outbound'>;

/** The DNS listeners `config` needs when nothing is passed by systemd: loopback, per captured family. */
export function planDnsListeners(config: Pick<Config, 'capture'>): DnsListenerSpec[] {
  const { port } = config.capture.dns;
  const specs: DnsListenerSpec[] = [{ family: 'ipv4', host: '127.0.0.1', port, udpFd: null, tcpFd: null }];
  if (config.capture.ipv6 === 'intercept') specs.push({ family: 'ipv6', host: '::1', port, udpFd: null, tcpFd: null });
  return specs;
}

/** First fd systemd passes (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;

/**
 * The DNS sockets systemd passed, or null when it passed none: the last `dnsCount` of LISTEN_FDS (the socket
 * unit lists them after the proxy's TCP listeners: per family a stream, then a datagram socket; IPv4 first).
 */
export function activatedDnsListeners(
  config: Pick<Config, 'capture'>,
  env: NodeJS.ProcessEnv,
  pid: number,
  dnsCount: number,
): DnsListenerSpec[] | null {
  if (dnsCount === 0 || env.LISTEN_FDS === undefined || Number(env.LISTEN_PID) !== pid) return null;
  const first = LISTEN_FDS_START + Number(env.LISTEN_FDS) - dnsCount;
  return planDnsListeners(config).map((spec, i) => ({ ...spec, tcpFd: first + i * 2, udpFd: first + i * 2 + 1 }));
}

function isError(r: DnsAnswerRecord): boolean {
  return (
    r.answeredFrom === 'error' ||
    r.rcode === 'SERVFAIL' ||
    r.rcode === 'REFUSED' ||
    r.rcode === 'FORMERR' ||
    r.rcode === 'NOTIMP'
  );
}

export class DnsServer {
  private readonly udp: UdpSocket[] = [];
  private readonly tcp: Server[] = [];
  private readonly clients = new Set<Socket>();
  private readonly responder: DnsResponder;
  private upstreams: UpstreamServers;
  private queryLog: DnsQueryLog | null;
  private names: number;

  private constructor(
    config: DnsConfig,
    private readonly specs: readonly DnsListenerSpec[],
    queryLog: DnsQueryLog | null,
    private readonly log: Logger,
  ) {
    this.upstreams = new UpstreamServers(config.outbound.resolver.servers);
    this.queryLog = queryLog;
    const names = meshNames(config.services);
    this.names = names.size;
    this.responder = new DnsResponder({
      meshNames: names,
      upstreams: this.upstreams,
      forwarder: new Forwarder(config.outbound.resolver.timeoutMs),
      cache: new DnsCache(CACHE_ENTRIES),
      onAnswer: (record) => this.logAnswer(record),
    });
  }

  /** Opens every listener; throws MeshctlError LISTEN_FAILED (after closing what it opened) when one fails. */
  static async start(
    config: DnsConfig,
    specs: readonly DnsListenerSpec[],
    queryLog: DnsQueryLog | null,
    log: Logger,
  ): Promise<DnsServer> {
    const server = new DnsServer(config, specs, queryLog, log.child({ component: 'dns' }));
    try {
      for (const spec of specs) await server.listen(spec);
    } catch (error) {
      await server.close();
      const where = specs
        .map((s) =>
          s.udpFd !== null ? `fd ${s.udpFd}/${s.tcpFd}` : `${s.family === 'ipv6' ? `[${s.host}]` : s.host}:${s.port}`,
        )
        .join(', ');
      throw new MeshctlError(
        'LISTEN_FAILED',
        `cannot open the DNS listeners (UDP and TCP ${where}, capture.dns.port): ${(error as Error).message}`,
        'free the port (`ss -lunp sport = :PORT`, `ss -ltnp`), or set capture.dns.port to a free one and install again',
        { cause: error },
      );
    }
    server.log.info(
      { listeners: server.labels, upstreams: server.upstreamLabels, meshNames: server.names },
      'DNS server ready',
    );
    return server;
  }

  private get labels(): string[] {
    return this.specs.map((s) =>
      s.udpFd !== null
        ? `${s.family} udp fd ${s.udpFd}, tcp fd ${s.tcpFd}`
        : `${s.family === 'ipv6' ? `[${s.host}]` : s.host}:${s.port} udp+tcp`,
    );
  }

  private get upstreamLabels(): string[] {
    return this.upstreams.list().map(serverLabel);
  }

  private async listen(spec: DnsListenerSpec): Promise<void> {
    const udp = createSocket({ type: spec.family === 'ipv6' ? 'udp6' : 'udp4', ipv6Only: spec.family === 'ipv6' });
    this.udp.push(udp);
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      const ready = () => {
        udp.off('error', reject);
        resolve();
      };
      if (spec.udpFd !== null) udp.bind({ fd: spec.udpFd }, ready);
      else udp.bind({ address: spec.host, port: spec.port, exclusive: true }, ready);
    });
    udp.on('error', (error) => this.log.warn({ err: error }, 'DNS UDP socket error'));
    udp.on('message', (msg, rinfo) => void this.onDatagram(udp, msg, rinfo.address, rinfo.port));
    const tcp = createServer({ pauseOnConnect: false }, (socket) => this.onTcpClient(socket));
    tcp.maxConnections = MAX_TCP_CLIENTS;
    this.tcp.push(tcp);
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      const ready = () => {
        tcp.off('error', reject);
        resolve();
      };
      if (spec.tcpFd !== null) tcp.listen({ fd: spec.tcpFd }, ready);
      else tcp.listen({ host: spec.host, port: spec.port, ipv6Only: spec.family === 'ipv6', exclusive: true }, ready);
    });
  }

  private async onDatagram(udp: UdpSocket, msg: Buffer, address: string, port: number): Promise<void> {
    const reply = await this.responder.answer(
      msg,
      'udp',
      `${address.includes(':') ? `[${address}]` : address}:${port}`,
    );
    if (reply !== null)
      udp.send(reply, port, address, (error) => {
        if (error) this.log.debug({ err: error }, 'DNS reply not sent');
      });
  }

  private onTcpClient(socket: Socket): void {
    this.clients.add(socket);
    socket.setTimeout(TCP_IDLE_MS, () => socket.destroy());
    socket.on('close', () => this.clients.delete(socket));
    socket.on('error', () => socket.destroy());
    const source = `${socket.remoteAddress?.includes(':') ? `[${socket.remoteAddress}]` : socket.remoteAddress}:${socket.remotePort}`;
    let data: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      data = data.length === 0 ? chunk : Buffer.concat([data, chunk]);
      while (data.length >= 2 && data.length >= 2 + data.readUInt16BE(0)) {
        const message = data.subarray(2, 2 + data.readUInt16BE(0));
        data = data.subarray(2 + message.length);
        void this.responder.answer(Buffer.from(message), 'tcp', source).then((reply) => {
          if (reply === null || socket.destroyed) return;
          const head = Buffer.alloc(2);
          head.writeUInt16BE(reply.length, 0);
          socket.write(Buffer.concat([head, reply]));
        });
      }
    });
  }

  private logAnswer(record: DnsAnswerRecord): void {
    const log = this.queryLog;
    if (log === null) return;
    if (!isError(record) && log.sampleRatio < 1 && Math.random() >= log.sampleRatio) return;
    log.write(record);
  }

  /** A reload: new mesh names, resolvers and log; the cache stays (answers do not depend on the config). */
  update(config: DnsConfig, queryLog: DnsQueryLog | null): void {
    this.upstreams = new UpstreamServers(config.outbound.resolver.servers);
    const names = meshNames(config.services);
    this.names = names.size;
    this.queryLog = queryLog;
    this.responder.update({
      meshNames: names,
      upstreams: this.upstreams,
      forwarder: new Forwarder(config.outbound.resolver.timeoutMs),
    });
  }

  snapshot(): DnsSnapshot {
    const m = this.responder.metrics;
    const cache = this.responder.cache;
    return {
      listening: this.labels,
      upstreams: { source: this.upstreams.source, servers: this.upstreamLabels },
      queries: { total: m.total, byType: { ...m.byType }, byTransport: { ...m.byTransport } },
      rcodes: { ...m.rcodes },
      answeredFrom: { ...m.answeredFrom },
      truncated: m.truncated,
      dropped: m.dropped,
      inFlight: this.responder.inFlightCount,
      upstreamLatencyMs: m.latencySnapshot(),
      cache: {
        entries: cache.size,
        maxEntries: cache.maxEntries,
        hits: cache.hits,
        misses: cache.misses,
        evictions: cache.evictions,
      },
      meshNames: this.names,
    };
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.destroy();
    await Promise.all([
      ...this.udp.map(
        (u) =>
          new Promise<void>((resolve) => {
            try {
              u.close(() => resolve());
            } catch {
              resolve(); // never bound
            }
          }),
      ),
      ...this.tcp.map((t) => new Promise<void>((resolve) => (t.listening ? t.close(() => resolve()) : resolve()))),
    ]);
  }
}
