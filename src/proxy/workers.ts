// Running the data plane on N cores: one in-process ProxyWorker when workers = 1, otherwise node:cluster
// workers sharing the listeners (the primary binds each port, or wraps the systemd fd, once). The primary
// talks to workers over the cluster IPC channel with small request/response messages.
import cluster, { type Worker } from 'node:cluster';
import type { Config } from '../config/types.js';
import { MeshctlError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ListenerSpec } from './listeners.js';
import { newestFirst, type SourceLookupRow } from './recent-connections.js';
import type { ConnectionInfo } from './connection.js';
import { WORKER_ENTRY } from './worker-files.js';
import { ProxyWorker, type SelfLoopEvent, type WorkerStats } from './worker.js';

/** Messages from the primary to a cluster worker. */
export type ToWorker =
  | { t: 'start'; config: Config; specs: ListenerSpec[]; index: number }
  | { t: 'reload'; seq: number; config: Config; specs: ListenerSpec[] }
  | { t: 'stats'; seq: number }
  | { t: 'connections'; seq: number; limit: number }
  | { t: 'lookup'; seq: number; source: string }
  | { t: 'drain'; timeoutMs: number };

/** Messages from a cluster worker to the primary. */
export type FromWorker =
  | { t: 'hello' }
  | { t: 'started' }
  | { t: 'start-failed'; code: string; message: string; hint?: string }
  | { t: 'reply'; seq: number; ok: true; data?: unknown }
  | { t: 'reply'; seq: number; ok: false; message: string }
  | { t: 'drained'; cut: number }
  | { t: 'self-loop'; event: SelfLoopEvent };

export interface WorkerPool {
  readonly size: number;
  start(config: Config, specs: readonly ListenerSpec[]): Promise<void>;
  /** Applies a config in every worker; rejects if any worker refused it. */
  reload(config: Config, specs: readonly ListenerSpec[]): Promise<void>;
  /** Changes the number of workers (a no-op for the in-process pool, which logs why). */
  resize(count: number): Promise<void>;
  /** Stops accepting, waits for open connections up to timeoutMs, then cuts them; resolves when all are done. */
  drain(timeoutMs: number): Promise<void>;
  stats(): Promise<WorkerStats[]>;
  connections(limit: number): Promise<Array<ConnectionInfo & { worker: number }>>;
  /** Every worker's open and recently closed connections from `source` (canonical ADDR:PORT), newest first. */
  lookup(source: string): Promise<Array<SourceLookupRow & { worker: number }>>;
  ready(): boolean;
  /** Called when a worker refuses one of the proxy's own connections (at most a few times a second per worker). */
  onSelfLoop: ((event: SelfLoopEvent & { worker: number }) => void) | null;
  /** Immediate stop: RST everything, kill workers. */
  forceStop(): void;
}

/** workers = 1: the data plane runs inside the primary. */
export class LocalPool implements WorkerPool {
  readonly size = 1;
  private worker: ProxyWorker | null = null;
  onSelfLoop: ((event: SelfLoopEvent & { worker: number }) => void) | null = null;

  constructor(private readonly log: Logger) {}

  async start(config: Config, specs: readonly ListenerSpec[]): Promise<void> {
    const worker = new ProxyWorker(config, specs, this.log.child({ worker: 0 }), 0);
    worker.onSelfLoop = (event) => this.onSelfLoop?.({ ...event, worker: 0 });
    await worker.start();
    this.worker = worker;
  }

  async reload(config: Config, specs: readonly ListenerSpec[]): Promise<void> {
    await this.worker?.reload(config, specs);
  }

  async resize(count: number): Promise<void> {
    if (count !== 1)
      this.log.warn({ workers: count }, 'proxy.workers changed from 1: restart the proxy to run several processes');
  }

  async drain(timeoutMs: number): Promise<void> {
    if (!this.worker) return;
    await this.worker.drain(timeoutMs);
    this.worker.close();
  }

  async stats(): Promise<WorkerStats[]> {
    return this.worker ? [await this.worker.settledStats()] : [];
  }

  async connections(limit: number): Promise<Array<ConnectionInfo & { worker: number }>> {
    return (this.worker?.connectionTable(limit) ?? []).map((c) => ({ ...c, worker: 0 }));
  }

  async lookup(source: string): Promise<Array<SourceLookupRow & { worker: number }>> {
    return ((await this.worker?.lookupSource(source)) ?? []).map((c) => ({ ...c, worker: 0 }));
  }

  ready(): boolean {
    return this.worker?.isListening ?? false;
  }

  forceStop(): void {
    this.worker?.close();
  }
}

interface Pending {
  resolve(data: unknown): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

interface Slot {
  index: number;
  worker: Worker;
  started: boolean;
  exited: Promise<void>;
}

const QUERY_TIMEOUT_MS = 5000;
const RESPAWN_DELAY_MS = 1000;

/**
 * Node flags of the data-plane workers: the primary's, plus
 * - a small young generation. V8 grows each semi-space up to 16 MiB when many objects survive a scavenge — as
 *   they do while thousands of connections open — and those pages stay resident: about 12 KiB of RSS per idle
 *   proxied connection, against about 5 KiB with 1 MiB semi-spaces (bench/, idle workload, 5,000 connections).
 *   Per-chunk garbage dies young at either size, and the relay's CPU per operation did not change measurably.
 * - with the relay thread, no memory reducer. After each major GC, V8's memory reducer waits for the allocation
 *   rate to drop and then runs two or three compacting GCs to shrink the heap. With the relay thread the JS heap
 *   holds no per-chunk garbage, so they free about 1 MiB, but every worker runs them at once (they become idle
 *   together) and they take both cores for ~10 ms while relayed traffic waits: the paced workload's p99 added
 *   was 1.5–1.6× HAProxy's with them in the measurement, 1.1–1.3× without (bench/notes.md). The streams relay
 *   (proxy.relay: node) keeps them: its heap does churn, and shrinks back after a burst.
 * An operator's own choice of either flag wins.
 */
export function workerExecArgv(parent: readonly string[], relay: 'native' | 'node'): string[] {
  const flags = [...parent];
  if (!parent.some((a) => a.startsWith('--max-semi-space-size'))) flags.push('--max-semi-space-size=1');
  if (relay === 'native' && !parent.some((a) => /^--(no-)?memory-reducer\b/.test(a))) flags.push('--no-memory-reducer');
  return flags;
}

/**
 * glibc malloc settings for workers that relay with Node streams (proxy.relay: node; the relay thread reuses its
 * own chunks and needs none). There every socket read gets a fresh 64 KiB buffer from malloc; once a burst
 * of connections has come and gone (the freed sockets leave a large free top chunk), glibc's default 128 KiB trim
 * threshold hands memory back to the kernel and takes it again read after read, and each buffer's pages fault
 * anew: ~200,000 minor faults per GB relayed, bulk throughput down by a third (bench/, bulk after the idle
 * workload). A 64 MiB trim threshold and 16 MiB top pad keep that memory mapped. An operator's own
 * GLIBC_TUNABLES wins; other C libraries ignore the variable.
 */
export function workerMallocTunables(env: NodeJS.ProcessEnv, relay: 'native' | 'node'): string | undefined {
  if (env.GLIBC_TUNABLES !== undefined || relay === 'native') return env.GLIBC_TUNABLES;
  return 'glibc.malloc.trim_threshold=67108864:glibc.malloc.top_pad=16777216';
}

/** workers > 1: node:cluster processes running src/proxy/worker-main.ts. */
export class ClusterPool implements WorkerPool {
  private slots: Slot[] = [];
  private config: Config | null = null;
  private specs: readonly ListenerSpec[] = [];
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  private stopping = false;
  onSelfLoop: ((event: SelfLoopEvent & { worker: number }) => void) | null = null;

  constructor(
    private count: number,
    private readonly log: Logger,
  ) {
    // Kernel load balancing: every worker accepts on the shared socket itself (no accept + handle passing
    // in the primary). NODE_CLUSTER_SCHED_POLICY=rr still selects Node's round-robin.
    if (process.env.NODE_CLUSTER_SCHED_POLICY === undefined) cluster.schedulingPolicy = cluster.SCHED_NONE;
  }

  get size(): number {
    return this.slots.length;
  }

  async start(config: Config, specs: readonly ListenerSpec[]): Promise<void> {
    this.config = config;
    this.specs = specs;
    const started = await Promise.allSettled(Array.from({ length: this.count }, (_, i) => this.spawn(i)));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      this.forceStop();
      throw failed.reason;
    }
  }

  private spawn(index: number): Promise<void> {
    // Flags follow the relay of the config this worker starts with (setupPrimary affects later forks only).
    const relay = this.config?.proxy.relay ?? 'native';
    cluster.setupPrimary({
      exec: WORKER_ENTRY,
      args: [],
      execArgv: workerExecArgv(process.execArgv, relay),
      silent: false,
    });
    // LISTEN_* belong to the primary (it owns the activated fds); a worker must not interpret them.
    const worker = cluster.fork({
      MESHCTL_WORKER_INDEX: String(index),
      LISTEN_FDS: undefined,
      LISTEN_PID: undefined,
      LISTEN_FDNAMES: undefined,
      GLIBC_TUNABLES: workerMallocTunables(process.env, relay),
    });
    let markExited: () => void = () => {};
    const slot: Slot = { index, worker, started: false, exited: new Promise((resolve) => (markExited = resolve)) };
    this.slots.push(slot);
    return new Promise((resolve, reject) => {
      worker.on('message', (message: FromWorker) => {
        // 'hello', not cluster's 'online': a message sent before the ESM entry has loaded would be lost.
        if (message.t === 'hello') {
          worker.send({ t: 'start', config: this.config!, specs: [...this.specs], index } satisfies ToWorker);
        } else if (message.t === 'started') {
          slot.started = true;
          resolve();
        } else if (message.t === 'start-failed') {
          reject(
            new MeshctlError(message.code as 'LISTEN_FAILED', `worker ${index}: ${message.message}`, message.hint),
          );
        } else if (message.t === 'self-loop') {
          this.onSelfLoop?.({ ...message.event, worker: index });
        } else if (message.t === 'reply') {
          const p = this.pending.get(message.seq);
          if (!p) return;
          this.pending.delete(message.seq);
          clearTimeout(p.timer);
          if (message.ok) p.resolve(message.data);
          else p.reject(new Error(`worker ${index}: ${message.message}`));
        }
      });
      worker.on('exit', (code, signal) => {
        markExited();
        this.slots = this.slots.filter((s) => s !== slot);
        if (!slot.started)
          reject(
            new MeshctlError(
              'INTERNAL',
              `worker ${index} exited during start (code ${code}, signal ${signal ?? 'none'})`,
              're-run with MESHCTL_LOG_LEVEL=debug',
            ),
          );
        if (!this.stopping) {
          this.log.error(
            { worker: index, pid: worker.process.pid, code, signal },
            'worker exited unexpectedly; starting a new one',
          );
          setTimeout(() => {
            if (!this.stopping)
              this.spawn(index).catch((error: unknown) =>
                this.log.error({ err: error, worker: index }, 'worker restart failed'),
              );
          }, RESPAWN_DELAY_MS).unref();
        }
      });
    });
  }

  private request<T>(slot: Slot, build: (seq: number) => ToWorker, timeoutMs = QUERY_TIMEOUT_MS): Promise<T> {
    const seq = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new Error(`worker ${slot.index} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(seq, { resolve: resolve as (d: unknown) => void, reject, timer });
      try {
        slot.worker.send(build(seq));
      } catch (error) {
        clearTimeout(timer);
        this.pending.delete(seq);
        reject(error as Error);
      }
    });
  }

  async reload(config: Config, specs: readonly ListenerSpec[]): Promise<void> {
    const previous = { config: this.config, specs: this.specs };
    this.config = config;
    this.specs = specs;
    const results = await Promise.allSettled(
      this.slots
        .filter((s) => s.started)
        .map((s) => this.request(s, (seq) => ({ t: 'reload', seq, config, specs: [...specs] }))),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      this.config = previous.config;
      this.specs = previous.specs;
      throw failed.reason;
    }
  }

  async resize(count: number): Promise<void> {
    this.count = count;
    const live = [...this.slots].sort((a, b) => a.index - b.index);
    if (count > live.length) {
      const used = new Set(live.map((s) => s.index));
      const spawns: Promise<void>[] = [];
      for (let i = 0; spawns.length < count - live.length; i++) if (!used.has(i)) spawns.push(this.spawn(i));
      await Promise.all(spawns);
    } else if (count < live.length) {
      const retire = live.slice(count);
      for (const s of retire) {
        this.slots = this.slots.filter((x) => x !== s);
        s.worker.removeAllListeners('exit');
        s.worker.send({ t: 'drain', timeoutMs: this.config!.proxy.drainTimeoutMs } satisfies ToWorker);
      }
    }
    this.log.info({ workers: count }, 'worker count changed');
  }

  async drain(timeoutMs: number): Promise<void> {
    this.stopping = true;
    const slots = [...this.slots];
    for (const s of slots) {
      try {
        s.worker.send({ t: 'drain', timeoutMs } satisfies ToWorker);
      } catch {
        // already gone
      }
    }
    // Workers exit by themselves once drained; the extra second covers flushing logs and exiting.
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<'bound'>((resolve) => {
      timer = setTimeout(() => resolve('bound'), timeoutMs + 1000);
    });
    const outcome = await Promise.race([Promise.all(slots.map((s) => s.exited)).then(() => 'exited' as const), bound]);
    clearTimeout(timer);
    if (outcome === 'bound') {
      this.log.warn(
        { workers: this.slots.map((s) => s.worker.process.pid) },
        'workers did not exit within the drain bound; killing them',
      );
      this.forceStop();
    }
  }

  async stats(): Promise<WorkerStats[]> {
    const results = await Promise.allSettled(
      this.slots.filter((s) => s.started).map((s) => this.request<WorkerStats>(s, (seq) => ({ t: 'stats', seq }))),
    );
    return results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  }

  async connections(limit: number): Promise<Array<ConnectionInfo & { worker: number }>> {
    const started = this.slots.filter((s) => s.started);
    const results = await Promise.allSettled(
      started.map((s) => this.request<ConnectionInfo[]>(s, (seq) => ({ t: 'connections', seq, limit }))),
    );
    return results
      .flatMap((r, i) => (r.status === 'fulfilled' ? r.value.map((c) => ({ ...c, worker: started[i]!.index })) : []))
      .slice(0, limit);
  }

  async lookup(source: string): Promise<Array<SourceLookupRow & { worker: number }>> {
    const started = this.slots.filter((s) => s.started);
    const results = await Promise.allSettled(
      started.map((s) => this.request<SourceLookupRow[]>(s, (seq) => ({ t: 'lookup', seq, source }))),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    // A worker that did not answer may hold the connection asked for: no partial answer.
    if (failed) throw failed.reason;
    return newestFirst(
      results.flatMap((r, i) =>
        r.status === 'fulfilled' ? r.value.map((c) => ({ ...c, worker: started[i]!.index })) : [],
      ),
    );
  }

  ready(): boolean {
    return !this.stopping && this.slots.length === this.count && this.slots.every((s) => s.started);
  }

  forceStop(): void {
    this.stopping = true;
    for (const s of this.slots) s.worker.process.kill('SIGKILL');
  }
}
