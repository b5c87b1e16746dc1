// The proxy process from start to exit: user check, listeners, workers, admin server, then reload (SIGHUP or
// a changed config file: the new config applies to new connections, open ones are never dropped; an invalid
// one is logged and the old one stays) and drain (SIGTERM/SIGINT or POST /drain: stop accepting, let open
// connections finish up to proxy.drainTimeout, then close them; a second signal forces the stop).
import { watch, type FSWatcher } from 'node:fs';
import type { Server } from 'node:http';
import { availableParallelism } from 'node:os';
import { basename, dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { PolicyOverlay } from '../config/load.js';
import { contractOf, describeContract, type CaptureContract, type LiveContract } from '../config/contract.js';
import { systemUserDb } from '../config/host-facts.js';
import type { Config } from '../config/types.js';
import { MeshctlError } from '../errors.js';
import type { Logger } from '../log.js';
import { isAddonAvailable, isTransparent, keepCapabilities, peerOwner, retainNetAdmin } from '../native/addon.js';
import { socketFd } from '../native/original-dst.js';
// The DNS server's code is imported by start() when capture.dns is on: a proxy without DNS capture never loads it.
import type { DnsServer, DnsQueryLog } from '../dns/server.js';
import { renderDnsPrometheus } from '../dns/metrics.js';
import { ControlPlanePoller, controlPlaneReadyDetail, renderControlPlanePrometheus } from '../policy/control-plane.js';
import { mergePolicySnapshots, renderPolicyPrometheus } from '../policy/metrics.js';
import { AccessLog } from './access-log.js';
import { startAdminServer, type AdminAuthorizer, type AdminHandlers } from './admin.js';
import {
  activatedDnsCount,
  isTunnelListener,
  listenerLabel,
  openTransparentListeners,
  planListeners,
  type ListenerSpec,
} from './listeners.js';
import { readListeningPorts, readProcessIds } from './live-contract.js';
import { mergeSnapshots, renderPrometheus } from './metrics.js';
import { mergeTunnelStats, renderMtlsPrometheus } from './tunnel-runtime.js';
import { RECENT_CAPACITY } from './recent-connections.js';
import type { SelfLoopEvent } from './worker.js';
import { ClusterPool, LocalPool, type WorkerPool } from './workers.js';
import { assertWorkerFilesReadable } from './worker-files.js';

export interface ProxyRunOptions {
  readonly config: Config;
  /**
   * Loads the config again (same file and flags) for a reload, with the control plane's policy sections over the
   * file's when `overlay` is given; throws MeshctlError when it is invalid.
   */
  readonly reloadConfig: (overlay: PolicyOverlay | null) => Promise<Config>;
  readonly log: Logger;
  readonly env?: NodeJS.ProcessEnv;
  /** Watch the config file for changes (default true when the config came from a file). */
  readonly watchConfig?: boolean;
}

export interface ProxyExit {
  /** True when a second signal cut the drain short. */
  readonly forced: boolean;
}

const RELOAD_DEBOUNCE_MS = 200;
/** /ready stays not-ready this long after the last refused self-loop (they recur while the rules are wrong). */
const SELF_LOOP_UNREADY_MS = 10_000;

/**
 * Worker processes. "auto" is one per core with the streams relay, but one process with the native relay: its
 * proxy.relayThreads threads already use every core, and each further Node process would add its whole heap
 * (~45 MiB idle) for JavaScript work that the front door has made small (src/proxy/front-door.ts).
 */
export function workerCount(config: Config): number {
  if (config.proxy.workers !== 'auto') return config.proxy.workers;
  return config.proxy.relay === 'native' ? 1 : availableParallelism();
}

/**
 * Checks that this process's own connections are exempt from capture (its uid or gid is the proxy user's);
 * as root, switches to the proxy user first, keeping CAP_NET_ADMIN alone in tproxy mode (each inbound connection
 * to the app needs a new IP_TRANSPARENT socket). Throws MeshctlError PROXY_USER_MISMATCH otherwise.
 */
function assumeProxyUser(config: Config, log: Logger): void {
  const { uid, gid, name } = config.proxy.user;
  const who = name ? `${name} (uid ${uid}, gid ${gid})` : `uid ${uid}, gid ${gid}`;
  if (process.getuid?.() === 0 && uid !== 0) {
    const tproxy = config.capture.inbound.enabled && config.capture.inbound.mode === 'tproxy';
    if (tproxy) keepCapabilities();
    process.setgroups?.([]);
    process.setgid?.(gid);
    process.setuid?.(uid);
    if (tproxy) retainNetAdmin();
    log.info({ uid, gid }, `dropped root: running as ${who}${tproxy ? ', keeping CAP_NET_ADMIN for TPROXY' : ''}`);
    return;
  }
  if (process.getuid?.() !== uid && process.getgid?.() !== gid) {
    throw new MeshctlError(
      'PROXY_USER_MISMATCH',
      `the proxy runs as uid ${process.getuid?.()} gid ${process.getgid?.()}, but proxy.user is ${who}: the capture rules would redirect the proxy's own upstream connections back to it`,
      `run it as ${name ?? `uid ${uid}`} (systemd User=, or start it as root and it switches), or set proxy.user to the user it runs as`,
    );
  }
}

export class ProxySupervisor {
  private config: Config;
  private specs: ListenerSpec[] = [];
  private activated = false;
  private pool: WorkerPool | null = null;
  private admin: Server | null = null;
  /** The host's DNS server (capture.dns.enabled): in this process only, never in the workers. */
  private dns: DnsServer | null = null;
  private dnsAccessLog: AccessLog | null = null;
  private watcher: FSWatcher | null = null;
  private reloadTimer: NodeJS.Timeout | null = null;
  private reloading: Promise<boolean> | null = null;
  private reloadAgain = false;
  private draining: Promise<void> | null = null;
  private readonly reloads = { ok: 0, failed: 0 };
  /** The control plane's last good policy document (null: the file's policy sections apply). */
  private overlay: PolicyOverlay | null = null;
  private poller: ControlPlanePoller | null = null;
  private lastReloadError: Error | null = null;
  /** 1 at start, +1 per applied config change (shown at /config, /stats, /metrics). */
  private version = 1;
  private appliedAt = new Date().toISOString();
  private readonly startedAt = performance.now();
  /** The last refused self-loop (any worker), for /ready, /stats and one rate-limited error log. */
  private selfLoop: { at: number; loggedAt: number; total: number; last: SelfLoopEvent & { worker: number } } | null =
    null;
  private readonly log: Logger;
  private resolveExit: (exit: ProxyExit) => void = () => {};
  /** Settles when the proxy has stopped (after a drain or a forced stop). */
  readonly exited: Promise<ProxyExit> = new Promise((resolve) => (this.resolveExit = resolve));

  constructor(private readonly options: ProxyRunOptions) {
    this.config = options.config;
    this.log = options.log.child({ component: 'proxy' });
  }

  /** Starts everything; rejects (after cleaning up) if a listener, the admin server or the addon is unavailable. */
  async start(): Promise<void> {
    if (!isAddonAvailable()) {
      throw new MeshctlError(
        'ADDON_UNAVAILABLE',
        'the native addon (build/Release/meshctl_native.node) is not built; the proxy cannot read original destinations',
        'run `npm ci` (or `npx node-gyp rebuild`) in the meshctl directory',
      );
    }
    const env = this.options.env ?? process.env;
    this.specs = planListeners(this.config, env, process.pid);
    this.activated = this.specs.some((s) => s.fd !== null);
    if (this.activated && this.config.capture.ipv6 === 'intercept' && !this.specs.some((s) => s.family === 'ipv6')) {
      this.log.warn(
        { listeners: this.specs.map(listenerLabel) },
        'capture.ipv6 is "intercept" but socket activation passed no IPv6 listener (outbound6, inbound6): redirected IPv6 connections will be refused',
      );
    }
    // Transparent (TPROXY) sockets need CAP_NET_ADMIN, which the proxy gives up with root right after.
    this.specs = openTransparentListeners(this.config, this.specs);
    assumeProxyUser(this.config, this.log);
    // First control-plane poll after dropping root (root's own connections would be captured), before the
    // workers start, so that a reachable control plane's policy is what they start with.
    if (this.config.controlPlane !== null) {
      this.poller = this.createPoller(this.config);
      await this.poller.poll();
    }
    const count = workerCount(this.config);
    if (count > 1) assertWorkerFilesReadable(this.config.proxy.user);
    this.pool = count <= 1 ? new LocalPool(this.log) : new ClusterPool(count, this.log);
    this.pool.onSelfLoop = (event) => this.selfLoopRefused(event);
    try {
      await this.pool.start(this.config, this.specs);
      if (this.config.capture.dns.enabled) {
        const { DnsServer, activatedDnsListeners, planDnsListeners } = await import('../dns/server.js');
        const activated = activatedDnsListeners(
          this.config,
          env,
          process.pid,
          activatedDnsCount(this.config, Number(env.LISTEN_FDS ?? 0)),
        );
        this.dns = await DnsServer.start(
          this.config,
          activated ?? planDnsListeners(this.config),
          this.dnsQueryLog(this.config),
          this.options.log,
        );
      }
      // The admin server comes last: its first answer (/ready, /contract) must already see every listener,
      // the DNS server's included, or `meshctl install --dns` can read a contract without the DNS port.
      this.admin = await startAdminServer(
        this.handlers(),
        this.config.proxy.adminAddress,
        this.config.proxy.adminPort,
        adminAuthorizer(this.log),
      );
    } catch (error) {
      this.pool.forceStop();
      this.admin?.close();
      void this.dns?.close();
      this.dns = null;
      this.dnsAccessLog?.close();
      throw error;
    }
    if (this.options.watchConfig ?? this.config.file !== null) this.watchConfigFile();
    this.poller?.startPolling();
    this.log.info(
      {
        workers: count,
        listeners: this.specs.map(listenerLabel),
        admin: `${this.config.proxy.adminAddress}:${this.config.proxy.adminPort}`,
        socketActivation: this.activated,
        config: this.config.file,
        hash: this.config.hash,
      },
      'proxy ready',
    );
  }

  private createPoller(config: Config): ControlPlanePoller {
    return new ControlPlanePoller(
      config.controlPlane!,
      (overlay) => this.applyOverlay(overlay),
      this.log.child({ component: 'control-plane' }),
    );
  }

  /** Applies a control-plane document (validated like the file, applied like a reload); throws when rejected. */
  private async applyOverlay(overlay: PolicyOverlay): Promise<void> {
    if (this.pool === null) {
      // Before the workers start: validation only, they start with it.
      this.config = await this.options.reloadConfig(overlay);
      this.overlay = overlay;
      return;
    }
    while (this.reloading) await this.reloading;
    if (this.draining) throw new Error('the proxy is draining');
    this.reloading = this.doReload('control-plane', overlay).finally(() => {
      this.reloading = null;
      if (this.reloadAgain) {
        this.reloadAgain = false;
        void this.reload('queued');
      }
    });
    if (!(await this.reloading)) throw this.lastReloadError ?? new Error('reload failed');
  }

  private watchConfigFile(): void {
    const file = this.config.file;
    if (file === null) return;
    try {
      // The directory, not the file: editors and config managers replace files by rename.
      this.watcher = watch(dirname(file), (_event, name) => {
        if (name !== null && name.toString() !== basename(file)) return;
        if (this.reloadTimer) clearTimeout(this.reloadTimer);
        this.reloadTimer = setTimeout(() => void this.reload('file-change'), RELOAD_DEBOUNCE_MS);
      });
      this.watcher.on('error', (error) =>
        this.log.warn({ err: error, file }, 'config watch failed; reload with SIGHUP'),
      );
    } catch (error) {
      this.log.warn({ err: error, file }, 'cannot watch the config file; reload with SIGHUP');
    }
  }

  /** Reloads the config; resolves true when applied (or unchanged), false when rejected (old config kept). */
  reload(trigger: string): Promise<boolean> {
    if (this.draining) return Promise.resolve(false);
    if (this.reloading) {
      this.reloadAgain = true;
      return this.reloading;
    }
    this.reloading = this.doReload(trigger).finally(() => {
      this.reloading = null;
      if (this.reloadAgain) {
        this.reloadAgain = false;
        void this.reload(trigger);
      }
    });
    return this.reloading;
  }

  private async doReload(trigger: string, overlay?: PolicyOverlay): Promise<boolean> {
    this.lastReloadError = null;
    const loaded = await this.loadReloadedConfig(trigger, overlay ?? this.overlay);
    if (loaded === null) return false;
    const { next, candidate } = loaded;
    if (next.hash === this.config.hash) {
      this.overlay = candidate;
      this.log.info({ trigger, hash: next.hash }, 'config unchanged');
      return true;
    }
    try {
      this.assertReloadable(next);
      const current = this.config.proxy;
      let specs = this.specs;
      if (this.activated) {
        if (next.proxy.outboundPort !== current.outboundPort || next.proxy.inboundPort !== current.inboundPort) {
          this.log.warn(
            { trigger },
            'listener ports come from systemd socket activation; change them in the socket unit',
          );
        }
      } else {
        specs = planListeners(next, {}, process.pid);
      }
      // Keeps the transparent listeners; a new one (tproxy switched on, inbound port moved) needs the privilege
      // dropped at start, so such a reload usually fails here with LISTEN_FAILED and the running config stays.
      specs = openTransparentListeners(next, specs, this.specs);
      await this.pool!.reload(next, specs);
      if (next.proxy.adminPort !== current.adminPort || next.proxy.adminAddress !== current.adminAddress) {
        const admin = await startAdminServer(
          this.handlers(),
          next.proxy.adminAddress,
          next.proxy.adminPort,
          adminAuthorizer(this.log),
        );
        this.admin?.close();
        this.admin = admin;
      }
      const workers = workerCount(next);
      if (workers !== workerCount(this.config)) await this.pool!.resize(workers);
      this.adoptReloaded(trigger, next, candidate, specs);
      return true;
    } catch (error) {
      this.lastReloadError = error as Error;
      this.reloads.failed++;
      this.log.error(
        { trigger, err: error },
        `config reload failed, keeping the running config: ${(error as Error).message}`,
      );
      // Workers that did apply it go back to the running config.
      await this.pool!.reload(this.config, this.specs).catch(() => {});
      return false;
    }
  }

  /**
   * Reads the config again with the policy overlay `candidate` (dropped when the file no longer names a control
   * plane); null, logged and counted as a failed reload, when the config is rejected.
   */
  private async loadReloadedConfig(
    trigger: string,
    overlay: PolicyOverlay | null,
  ): Promise<{ next: Config; candidate: PolicyOverlay | null } | null> {
    let candidate = overlay;
    try {
      let next = await this.options.reloadConfig(candidate);
      if (next.controlPlane === null && candidate !== null) {
        // The file no longer names a control plane: its policy no longer applies.
        candidate = null;
        next = await this.options.reloadConfig(null);
      }
      return { next, candidate };
    } catch (error) {
      this.reloads.failed++;
      this.lastReloadError = error as Error;
      const e = error as MeshctlError;
      this.log.error(
        { trigger, code: e.code, err: error, details: e.details },
        `config reload rejected, keeping the running config: ${e.message}`,
      );
      return null;
    }
  }

  /** Throws CONFIG_INVALID when `next` changes what a running proxy cannot: its user, or the capture contract. */
  private assertReloadable(next: Config): void {
    const current = this.config.proxy;
    if (next.proxy.user.uid !== current.user.uid || next.proxy.user.gid !== current.user.gid) {
      throw new MeshctlError(
        'CONFIG_INVALID',
        `proxy.user changed to uid ${next.proxy.user.uid} gid ${next.proxy.user.gid}; a running proxy cannot change its user`,
        'restart the proxy to change proxy.user',
      );
    }
    // The installed capture rules were checked against this proxy's contract (meshctl install); a reload that
    // moved a port or a family away from them would silently send traffic to nothing.
    const changed = contractChanges(contractOf(this.config), contractOf(next));
    if (changed.length > 0) {
      throw new MeshctlError(
        'CONFIG_INVALID',
        `the new config changes the capture contract (${changed.join('; ')}), which the installed rules depend on; a reload keeps it`,
        'restart the proxy with the new config, then run `meshctl install` so the rules match it (`meshctl status` shows both)',
      );
    }
  }

  /** Makes `next` the running config once the workers run it: version, DNS server, control-plane poller. */
  private adoptReloaded(trigger: string, next: Config, candidate: PolicyOverlay | null, specs: ListenerSpec[]): void {
    this.specs = specs;
    const previous = this.config;
    this.config = next;
    this.overlay = candidate;
    this.version++;
    this.appliedAt = new Date().toISOString();
    this.reloads.ok++;
    this.dns?.update(next, this.dnsQueryLog(next));
    this.log.info({ trigger, hash: next.hash, version: this.version }, 'config reloaded');
    if (JSON.stringify(previous.controlPlane) !== JSON.stringify(next.controlPlane)) this.restartPoller();
  }

  /** The DNS server's access log: the proxy's, in this process (lines say `dns query`); null when it is off. */
  private dnsQueryLog(config: Config): DnsQueryLog | null {
    if (!config.proxy.accessLog.enabled) return null;
    if (this.dnsAccessLog === null) this.dnsAccessLog = new AccessLog(config.proxy.accessLog, { component: 'dns' });
    else this.dnsAccessLog.reconfigure(config.proxy.accessLog);
    const log = this.dnsAccessLog;
    return { sampleRatio: config.proxy.accessLog.sampleRatio, write: (record) => log.dnsQuery(record) };
  }

  private selfLoopRefused(event: SelfLoopEvent & { worker: number }): void {
    const now = Date.now();
    const first = this.selfLoop === null;
    const loggedAt = this.selfLoop?.loggedAt ?? 0;
    this.selfLoop = { at: now, loggedAt, total: (this.selfLoop?.total ?? 0) + 1, last: event };
    if (first || now - loggedAt >= SELF_LOOP_UNREADY_MS) {
      this.selfLoop.loggedAt = now;
      const expects = contractOf(this.config);
      this.log.error(
        {
          uid: event.uid,
          source: event.source,
          originalDst: event.originalDst,
          worker: event.worker,
          expects: describeContract(expects),
        },
        `refused the proxy's own connection to ${event.originalDst}: it came back to the proxy (its socket, uid ${event.uid}, was captured). ` +
          `The capture rules do not exempt the user this proxy runs as (installed with another --proxy-user?), or a foreign rule or a second proxy redirects it. ` +
          'Not ready until this stops; run `meshctl status` (logged at most every 10 s)',
      );
    }
  }

  /** Why /ready is not ready because of self-loops, or null. */
  private selfLoopReason(): string | null {
    if (this.selfLoop === null || Date.now() - this.selfLoop.at >= SELF_LOOP_UNREADY_MS) return null;
    const l = this.selfLoop.last;
    return `self-loop: the proxy's own connections (uid ${l.uid}) are captured and sent back to it (last to ${l.originalDst}); the capture rules do not exempt its user`;
  }

  /** The live contract: this proxy as the kernel sees it (uid/gid of every process, listening sockets). */
  private async liveContract(): Promise<LiveContract> {
    const workers = await this.pool!.stats();
    const pids = [process.pid, ...workers.map((w) => w.pid).filter((p) => p !== process.pid)];
    const processes = pids.map(readProcessIds).filter((p): p is NonNullable<typeof p> => p !== null);
    const self = processes[0] ?? { pid: process.pid, uid: process.geteuid?.() ?? -1, gid: process.getegid?.() ?? -1 };
    const { tcp, udp } = readListeningPorts(pids);
    const transparentPorts = this.specs
      .filter(
        (s) =>
          s.direction === 'inbound' &&
          !isTunnelListener(s) &&
          s.fd !== null &&
          (s.transparent === true || safeIsTransparent(s.fd, s.family)),
      )
      .map((s) => s.port);
    const user =
      self.uid === this.config.proxy.user.uid
        ? this.config.proxy.user.name
        : (systemUserDb.user(self.uid)?.name ?? null);
    return {
      pid: process.pid,
      processes,
      uid: self.uid,
      gid: self.gid,
      user,
      tcp,
      udp,
      transparentPorts,
      config: { file: this.config.file, hash: this.config.hash, version: this.version },
      expects: contractOf(this.config),
    };
  }

  /** The file's controlPlane section changed: poll the new URL (the last good policy stays until it answers). */
  private restartPoller(): void {
    this.poller?.stop();
    this.poller = null;
    if (this.config.controlPlane === null || this.draining) return;
    this.poller = this.createPoller(this.config);
    void this.poller.start();
  }

  /** Starts a drain (idempotent). With `exit`, the proxy stops when it is done; otherwise it stays up, not ready. */
  drain(trigger: string, exit: boolean): Promise<void> {
    if (!this.draining) {
      const timeoutMs = this.config.proxy.drainTimeoutMs;
      this.log.info({ trigger, timeoutMs }, 'drain started: not accepting new connections');
      this.watcher?.close();
      this.poller?.stop();
      if (this.reloadTimer) clearTimeout(this.reloadTimer);
      this.draining = this.pool!.drain(timeoutMs).then(() => this.log.info({ trigger }, 'drain complete'));
    }
    if (exit) void this.draining.then(() => this.stop(false));
    return this.draining;
  }

  /** A second signal during a drain: close everything now. */
  forceStop(): void {
    this.log.warn('second signal: stopping now');
    this.pool?.forceStop();
    this.stop(true);
  }

  get isDraining(): boolean {
    return this.draining !== null;
  }

  private stop(forced: boolean): void {
    void this.dns?.close();
    this.dnsAccessLog?.close();
    this.watcher?.close();
    this.poller?.stop();
    this.admin?.close();
    this.admin?.closeAllConnections();
    this.resolveExit({ forced });
  }

  private handlers(): AdminHandlers {
    return {
      ready: () => {
        const detail = this.poller ? controlPlaneReadyDetail(this.poller.status(), this.version) : [];
        if (this.draining) return { ready: false, reason: 'draining', detail };
        if (!this.pool?.ready()) return { ready: false, reason: 'listeners not all accepting', detail };
        const loop = this.selfLoopReason();
        if (loop !== null) return { ready: false, reason: loop, detail };
        return { ready: true, reason: '', detail };
      },
      stats: () => this.statsReport(),
      metrics: () => this.metricsText(),
      config: () => ({
        version: this.version,
        appliedAt: this.appliedAt,
        ...this.config,
        controlPlaneStatus: this.poller?.status() ?? null,
      }),
      contract: () => this.liveContract(),
      connections: (limit) => this.pool!.connections(limit),
      lookup: async (source) => ({
        source,
        recentPerWorker: RECENT_CAPACITY,
        connections: await this.pool!.lookup(source),
      }),
      drain: () => {
        const alreadyDraining = this.draining !== null;
        void this.drain('admin', false);
        return { alreadyDraining, timeoutMs: this.config.proxy.drainTimeoutMs };
      },
    };
  }

  /** The /stats body: readiness, config, reloads, listeners, workers, and the workers' merged counters. */
  private async statsReport(): Promise<unknown> {
    const workers = await this.pool!.stats();
    const totals = mergeSnapshots(workers.map((w) => w.metrics));
    return {
      ready: this.handlers().ready().ready,
      draining: this.draining !== null,
      uptimeSeconds: Math.round(performance.now() - this.startedAt) / 1000,
      config: { file: this.config.file, hash: this.config.hash, version: this.version, appliedAt: this.appliedAt },
      controlPlane: this.poller?.status() ?? null,
      reloads: this.reloads,
      listeners: this.specs.map(listenerLabel),
      workers: workers.map((w) => ({
        index: w.index,
        pid: w.pid,
        active: w.active,
        listening: w.listening,
        draining: w.draining,
        frontDoor: w.frontDoor,
      })),
      connections: {
        active: { outbound: totals.directions.outbound.active, inbound: totals.directions.inbound.active },
        accepted: { outbound: totals.directions.outbound.accepted, inbound: totals.directions.inbound.accepted },
        closed: { outbound: totals.directions.outbound.closed, inbound: totals.directions.inbound.closed },
      },
      refusals: totals.refusals,
      loopSuspects: workers.reduce((n, w) => n + w.loopSuspects, 0),
      selfLoop:
        this.selfLoop === null
          ? null
          : {
              total: this.selfLoop.total,
              lastAt: new Date(this.selfLoop.at).toISOString(),
              last: this.selfLoop.last,
            },
      bytes: {
        outbound: {
          clientToUpstream: totals.directions.outbound.bytesFromClient,
          upstreamToClient: totals.directions.outbound.bytesFromUpstream,
        },
        inbound: {
          clientToUpstream: totals.directions.inbound.bytesFromClient,
          upstreamToClient: totals.directions.inbound.bytesFromUpstream,
        },
      },
      connectLatency: {
        outbound: totals.directions.outbound.connectLatency,
        inbound: totals.directions.inbound.connectLatency,
      },
      policy: mergePolicySnapshots(workers.map((w) => w.policy)),
      dns: this.dns?.snapshot() ?? null,
      mtls: mergeTunnelStats(workers.map((w) => w.mtls ?? null)),
    };
  }

  /** The /metrics body: the workers' merged counters, control plane, policy and DNS in Prometheus text. */
  private async metricsText(): Promise<string> {
    const workers = await this.pool!.stats();
    return (
      renderPrometheus(mergeSnapshots(workers.map((w) => w.metrics)), {
        ready: this.handlers().ready().ready,
        draining: this.draining !== null,
        workers: workers.length,
        reloads: this.reloads,
        uptimeSeconds: (performance.now() - this.startedAt) / 1000,
        accessLogDropped: workers.reduce((n, w) => n + (w.accessLogDropped ?? 0), 0),
      }) +
      renderControlPlanePrometheus(this.poller?.status() ?? null, this.version) +
      renderPolicyPrometheus(mergePolicySnapshots(workers.map((w) => w.policy))) +
      renderDnsPrometheus(this.dns?.snapshot() ?? null) +
      renderMtlsPrometheus(mergeTunnelStats(workers.map((w) => w.mtls ?? null)))
    );
  }
}

function safeIsTransparent(fd: number, family: 'ipv4' | 'ipv6'): boolean {
  try {
    return isTransparent(fd, family === 'ipv6' ? 6 : 4);
  } catch {
    return false;
  }
}

/** The contract fields that differ between a running config and a reloaded one, as `field a → b`. */
export function contractChanges(running: CaptureContract, next: CaptureContract): string[] {
  const out: string[] = [];
  const text = (v: unknown) => (v === null ? 'off' : Array.isArray(v) ? v.join(',') : String(v));
  for (const [field, path] of [
    ['outboundPort', 'proxy.outboundPort'],
    ['inboundPort', 'proxy.inboundPort'],
    ['inboundMode', 'capture.inbound.mode'],
    ['dnsPort', 'capture.dns.port'],
    ['families', 'capture.ipv6'],
    ['tunnelPort', 'mtls.tunnelPort (mtls.inbound)'],
  ] as const) {
    if (text(running[field]) !== text(next[field])) out.push(`${path} ${text(running[field])} → ${text(next[field])}`);
  }
  return out;
}

/**
 * Root and the proxy's own user may use the admin API's privileged paths; every other local user (each app the
 * mesh serves) may not. The client's uid comes from its socket, by the same sock_diag lookup as the self-loop
 * check: the client's socket sees the connection as going to our local address and port.
 */
function adminAuthorizer(log: Logger): AdminAuthorizer {
  const own = process.geteuid?.() ?? -1;
  const who = own === 0 ? 'root' : `root and the proxy's user (uid ${own})`;
  return (socket) => {
    const fd = socketFd(socket);
    const local = socket.localAddress ?? '';
    let uid = -1;
    try {
      if (fd >= 0 && local !== '')
        uid = peerOwner(
          fd,
          local.includes(':') && !local.startsWith('::ffff:') ? 6 : 4,
          local.replace(/^::ffff:/, ''),
          socket.localPort ?? 0,
        );
    } catch (error) {
      log.warn({ err: error }, "admin: could not read the client socket's owner; refusing the privileged request");
    }
    return { allowed: uid === 0 || (uid >= 0 && uid === own), uid, who };
  };
}
