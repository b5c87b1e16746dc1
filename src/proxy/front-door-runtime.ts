// The worker's side of the front door: hands its listening sockets to the relay threads (which then accept,
// connect and relay on their own: src/native, src/proxy/front-door.ts for what they may decide), brings the
// connections they ask about back onto the JavaScript accept path, and turns the end records of the ones they
// carried into what a JavaScript connection leaves behind: metrics, an access-log line, a row of the recent ring
// (`/lookup`), a self-loop event.
//
// Handing over: Node has no way to stop accepting on a listening socket it watches, and a socket watched by
// libuv and by EPOLLEXCLUSIVE threads would be accepted by both. So the net.Server opens the socket as before
// (bind, socket activation, cluster sharing, errors), every thread takes a duplicate of its fd (listen()), and
// then Node's handle of it is closed: the socket lives on in the threads' duplicates. Under node:cluster the
// handle's own close() would tell the primary, which then closes its copy of the shared socket once no worker
// holds it, and binds the port anew for the next worker (EADDRINUSE while our duplicates listen): so the handle is
// closed underneath (its prototype's close), and server.close() tells the primary only when the threads let go.
// Connections Node accepted in between are served by Node; those queued after are the threads'.
import { closeSync } from 'node:fs';
import { Socket, type Server, type SocketConstructorOpts } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { OriginalDst } from '../native/original-dst.js';
import type { AccessLog, AccessRecord } from './access-log.js';
import type { ConnectionInfo } from './connection.js';
import type { FrontDoorOptions } from './front-door.js';
import type { ListenerSpec, OpenListener } from './listeners.js';
import type { Direction, ProxyMetrics } from './metrics.js';
import {
  matchesSource,
  type PackedClose,
  type RecentConnections,
  type SourceLookupRow,
  type SourceQuery,
} from './recent-connections.js';
import type { FrontDoorAccepted, FrontDoorEnd, FrontDoorRow, FrontDoorSink, RelayThread } from './relay-thread.js';

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** What the front door needs from its worker. */
export interface FrontDoorHost {
  readonly index: number;
  readonly metrics: ProxyMetrics;
  readonly accessLog: AccessLog;
  readonly recent: RecentConnections;
  readonly mtlsActive: boolean;
  /** An asked connection: the JavaScript accept path with the destination the thread read. */
  acceptAsked(socket: Socket, spec: ListenerSpec, dst: OriginalDst, loopSuspect: boolean): void;
  /** A thread refused one of the proxy's own connections (selfLoop). */
  selfLoop(source: string, originalDst: string): void;
  /** A thread connected to a local app without the passthrough source (its bind gave EADDRNOTAVAIL). */
  sourceFallback(family: OriginalDst['family']): void;
  /** A front-door connection ended (the worker may be waiting for none to be left). */
  frontDoorEnded(): void;
}

/** A listener the threads accept on. */
interface Taken {
  readonly id: number;
  readonly spec: ListenerSpec;
  /** The fd number it had in Node (closed there; the threads hold duplicates). */
  readonly fd: number;
  readonly server: Server;
}

/** The fd of a listening net.Server: it has no public accessor (like net.Socket, see original-dst.ts). */
function serverFd(server: Server): number {
  const fd = (server as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * Closes Node's handle of a listening socket (its fd: Node stops accepting) without node:cluster's close, which
 * tells the primary; the server object keeps its state, and its close() later does the rest.
 */
function closeNodeHandle(server: Server): void {
  const handle = (server as unknown as { _handle?: object | null })._handle;
  if (handle === null || handle === undefined) return;
  const close = (Object.getPrototypeOf(handle) as { close?: (this: object) => void }).close;
  close?.call(handle);
}

export class FrontDoor implements FrontDoorSink {
  private readonly taken = new Map<string, Taken>();
  private readonly byId = new Map<number, Taken>();
  private nextListenerId = 1;
  /** Connections ended by our own abort, and the result to give them (the thread reports them as aborted). */
  private readonly aborted = new Map<number, { result: 'drain'; detail: string }>();
  /** What ended() hands the recent ring for a packed record: one object, refilled per record (the ring copies it). */
  private readonly packedClose: Mutable<PackedClose>;

  constructor(private readonly host: FrontDoorHost) {
    this.packedClose = {
      idPrefix: `${host.index}.`,
      id: 0,
      direction: 'outbound',
      bytes: new Uint8Array(0),
      at: 0,
      result: null,
      detail: '',
      startedAt: 0,
    };
  }

  /**
   * Lets every thread accept on `listener` with `options`, then closes Node's server. False (Node keeps
   * accepting) when a thread cannot listen, or the server has no fd (NODE_CLUSTER_SCHED_POLICY=rr).
   */
  take(key: string, listener: OpenListener, threads: readonly RelayThread[], options: FrontDoorOptions): boolean {
    const fd = serverFd(listener.server);
    if (fd < 0 || threads.length === 0 || !threads.every((t) => t.canListen)) return false;
    const entry: Taken = { id: this.nextListenerId++, spec: listener.spec, fd, server: listener.server };
    const started: RelayThread[] = [];
    try {
      for (const t of threads) {
        t.listen(entry.id, fd, options);
        started.push(t);
      }
    } catch (error) {
      for (const t of started) t.unlisten(entry.id);
      throw error;
    }
    this.taken.set(key, entry);
    this.byId.set(entry.id, entry);
    closeNodeHandle(listener.server);
    return true;
  }

  /**
   * New options for a listener the threads hold (reload). Only the threads that listen on it already: Node's fd
   * is closed since the hand-over (its number may be another file's now), so a thread started by a reload that
   * raised proxy.relayThreads relays handed-off pairs but accepts only on listeners opened after it.
   */
  relisten(key: string, threads: readonly RelayThread[], options: FrontDoorOptions): void {
    const entry = this.taken.get(key);
    if (entry === undefined) return;
    for (const t of threads) if (t.listenerIds.has(entry.id)) t.listen(entry.id, entry.fd, options);
  }

  /** Whether the threads accept on the listener `key`. */
  holds(key: string): boolean {
    return this.taken.has(key);
  }

  /** Stops accepting on `key` in every thread (the socket closes with the last duplicate) and closes the server. */
  release(key: string, threads: readonly RelayThread[]): void {
    const entry = this.taken.get(key);
    if (entry === undefined) return;
    for (const t of threads) t.unlisten(entry.id);
    this.taken.delete(key);
    this.byId.delete(entry.id);
    entry.server.close();
  }

  releaseAll(threads: readonly RelayThread[]): void {
    for (const key of [...this.taken.keys()]) this.release(key, threads);
  }

  /** The live front-door connections of every thread. */
  rows(threads: readonly RelayThread[], limit: number): FrontDoorRow[] {
    const rows: FrontDoorRow[] = [];
    for (const t of threads) {
      if (rows.length >= limit) break;
      rows.push(...t.list(limit - rows.length));
    }
    return rows;
  }

  /** Ends every live front-door connection (drain's deadline: FIN; close: RST); their records follow. */
  abortAll(threads: readonly RelayThread[], detail: string, reset: boolean): number {
    let n = 0;
    for (const t of threads) {
      for (const row of t.list(Number.MAX_SAFE_INTEGER)) {
        if (!t.abort(row.id, reset)) continue;
        this.aborted.set(row.id, { result: 'drain', detail });
        n++;
      }
    }
    return n;
  }

  directionOf(listenerId: number): Direction | null {
    return this.byId.get(listenerId)?.spec.direction ?? null;
  }

  /** `/connections` rows of the live front-door connections. */
  connectionInfo(row: FrontDoorRow): ConnectionInfo {
    return {
      id: `${this.host.index}.${row.id}`,
      direction: this.directionOf(row.listenerId) ?? 'outbound',
      state: row.state,
      source: row.source,
      originalDst: row.originalDst || null,
      upstream: row.originalDst || null,
      ageMs: Math.round(row.ageMs),
      bytesFromClient: row.fromClient,
      bytesFromUpstream: row.fromUpstream,
    };
  }

  /** `/lookup` rows of the live front-door connections from `query`. */
  lookupRows(rows: readonly FrontDoorRow[], query: SourceQuery): SourceLookupRow[] {
    return rows
      .filter((row) => matchesSource(row.source, query))
      .map((row) => ({
        id: `${this.host.index}.${row.id}`,
        direction: this.directionOf(row.listenerId) ?? 'outbound',
        state: row.state,
        source: row.source,
        originalDst: row.originalDst || null,
        ageMs: Math.round(row.ageMs),
        result: null,
        detail: '',
      }));
  }

  readonly accepted = (batch: readonly FrontDoorAccepted[]): void => {
    for (const a of batch) {
      const entry = this.byId.get(a.listenerId);
      if (entry === undefined) {
        // Released since the thread accepted it (a reload removed the listener): refuse as Node's close would.
        closeFd(a.fd);
        continue;
      }
      let socket: Socket;
      try {
        // pauseOnCreate: as the listener's pauseOnConnect, nothing is read until the upstream is connected.
        socket = new Socket({
          fd: a.fd,
          readable: true,
          writable: true,
          allowHalfOpen: true,
          pauseOnCreate: true,
        } as SocketConstructorOpts);
      } catch {
        closeFd(a.fd);
        continue;
      }
      socket.setNoDelay(true);
      const dst: OriginalDst = { address: a.address, port: a.port, family: a.family === 6 ? 'ipv6' : 'ipv4' };
      this.host.acceptAsked(socket, entry.spec, dst, a.loopSuspect === true);
    }
  };

  /**
   * A record from a thread. Nothing here keeps `end` (the thread's cursor moves on) or prints an address unless a
   * consumer needs the text: the ring copies the packed endpoints, the access log and a self-loop event format them.
   */
  readonly ended = (end: FrontDoorEnd): void => {
    const host = this.host;
    const direction = this.directionOf(end.listenerId) ?? 'outbound';
    const ours = this.aborted.size === 0 ? undefined : this.aborted.get(end.id);
    if (ours !== undefined) this.aborted.delete(end.id);
    const result = end.result ?? ours?.result ?? 'drain';
    const detail = end.result !== null ? end.detail : (ours?.detail ?? 'forced');
    host.metrics.accepted(direction);
    if (end.connectMs !== null) host.metrics.connected(direction, end.connectMs);
    if (result === 'refused') host.metrics.refused(detail === 'own-uid' ? 'self-loop' : 'not-redirected');
    host.metrics.closed(direction, result, end.fromClient, end.fromUpstream);
    const now = performance.now();
    const startedAt = now - end.durationMs;
    const packed = end.packed;
    let id: string | null = null;
    if (packed !== undefined) {
      const c = this.packedClose;
      c.id = end.id;
      c.direction = direction;
      c.bytes = packed.bytes;
      c.at = packed.at;
      c.result = result;
      c.detail = detail;
      c.startedAt = startedAt;
      host.recent.addPacked(c, now);
    } else {
      id = `${host.index}.${end.id}`;
      // A record built in JavaScript (tests): its text as it is.
      host.recent.add(
        { id, direction, source: end.source || '?', dst: end.originalDst || null, result, detail, startedAt },
        now,
      );
    }
    if (detail === 'own-uid') host.selfLoop(end.source, end.originalDst);
    if (end.sourceFallback) {
      // The passthrough source has the destination's family; the thread brackets IPv6 addresses.
      const dst = end.originalDst;
      if (dst !== '') host.sourceFallback(dst.startsWith('[') ? 'ipv6' : 'ipv4');
    }
    if (host.accessLog.sampled(result)) {
      host.accessLog.writeClosed(this.record(end, id ?? `${host.index}.${end.id}`, direction, result, detail));
    }
    host.frontDoorEnded();
  };

  private record(
    end: FrontDoorEnd,
    id: string,
    direction: Direction,
    result: AccessRecord['result'],
    detail: string,
  ): AccessRecord {
    const connected = end.connectMs !== null;
    const dst = end.originalDst || null;
    const upstreamLocal = connected ? end.upstreamLocal : '';
    return {
      id,
      direction,
      source: end.source || '?',
      originalDst: dst,
      // The front door connects only as dialled: the upstream is the original destination, once it tried.
      upstream: result === 'refused' ? null : dst,
      upstreamLocal: upstreamLocal !== '' ? upstreamLocal : null,
      bytesFromClient: end.fromClient,
      bytesFromUpstream: end.fromUpstream,
      durationMs: Math.round(end.durationMs * 1000) / 1000,
      connectMs: end.connectMs === null ? null : Math.round(end.connectMs * 1000) / 1000,
      result,
      detail,
      ...(this.host.mtlsActive ? { tls: 'plaintext' as const } : {}),
    };
  }
}

function closeFd(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}
