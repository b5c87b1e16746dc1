// Appends newline-terminated lines to a file or stdout in batches written asynchronously, so the event loop never
// waits on the disk or a pipe; memory is bounded: a line that does not fit while the destination lags is dropped
// and counted, never queued without end.
//
// Each line is encoded to UTF-8 once, into a 64 KiB chunk that becomes the write (no joined string to flatten and
// encode again). Lines wait for their write up to `flushIntervalMs` (default 100 ms; Envoy's file access log also
// batches by time and size), or until `batchBytes` (64 KiB) are pending. One fs.write is in flight at a time, through
// libuv's threadpool; lines appended meanwhile join the next write. Each write costs a threadpool hand-off and a
// wake-up of the event loop when it returns (~30 µs of CPU on a 2-core VM: bench/notes.md), so a write per turn, at
// a few lines per turn, cost as much as pino's write per line did.
// On a pipe or a stream socket (stdout, the journal), every worker of the proxy writes to the same file description:
// each write() is cut at a line end within PIPE_BUF (4096 bytes), which the kernel writes whole, so lines of
// different workers never interleave (a single longer line goes out alone, as it must). A non-blocking stdout (libuv
// makes a pipe O_NONBLOCK as soon as anything touches process.stdout, and the flag is shared by every process on that
// pipe) answers EAGAIN when full: the write is retried after a short backoff while new lines fill the bound, then drop.
import { closeSync, fstatSync, mkdirSync, openSync, write, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { MeshctlError } from '../errors.js';

/** Where lines go: a file (created 0640 with its directories, appended to), the process's stdout, or an fd it keeps. */
export type LineDestination =
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 'stdout' }
  | { readonly kind: 'fd'; readonly fd: number };

export interface LineWriterOptions {
  /** Bytes held at most (pending and in flight); beyond it lines are dropped. */
  readonly maxBuffered?: number;
  /** A write starts at once when this many bytes are pending. */
  readonly batchBytes?: number;
  /** Lines wait at most this long for their write (0: until the end of the event-loop turn); default 100 ms. */
  readonly flushIntervalMs?: number;
  /** Called (at most once per `warnIntervalMs`, once the writer has room again) with the lines dropped since the last call; returns the line to write about it. */
  readonly dropWarning?: (droppedSinceLast: number, droppedTotal: number) => string;
  readonly warnIntervalMs?: number;
}

const PIPE_BUF = 4096;
const DEFAULT_MAX_BUFFERED = 4 * 1024 * 1024;
const DEFAULT_BATCH = 64 * 1024;
/** Lines are encoded into chunks this large (a batch's worth), so a typical write is one chunk, not a copy. */
const CHUNK_BYTES = 64 * 1024;
const DEFAULT_FLUSH_INTERVAL_MS = 100;
/** flushSync gives a destination that answers EAGAIN this long before it drops what is left (exit must not hang). */
const FLUSH_SYNC_PATIENCE_MS = 1000;
const EAGAIN_BACKOFF_MAX_MS = 100;

/** One open destination's batched, bounded, non-blocking appender. */
export class LineWriter {
  private fd: number;
  private readonly ownsFd: boolean;
  /** Cut each write at a line end within PIPE_BUF (pipes and sockets); a regular file takes a batch in one write. */
  private readonly atomicLines: boolean;
  private readonly maxBuffered: number;
  private readonly batchBytes: number;
  private readonly flushIntervalMs: number;
  private readonly dropWarning: LineWriterOptions['dropWarning'];
  private readonly warnIntervalMs: number;

  /** Lines appended since the last write started, as UTF-8: earlier chunks, then the one being filled. */
  private readonly filled: Buffer[] = [];
  private chunk: Buffer = Buffer.alloc(0);
  private chunkUsed = 0;
  private pendingBytes = 0;
  private pendingLines = 0;
  private flushScheduled = false;
  /** A flush came due while a write was in flight: the next write starts as soon as that one returns. */
  private due = false;
  /** The batch being written: its bytes, how far they went out, and what it counts for. */
  private current: { bytes: Buffer; offset: number; lines: number } | null = null;
  private writing = false;
  /** Set by flushSync while a write is in flight: that write is accounted for; its callback only resumes (or closes). */
  private inFlightAccounted = false;
  private closing = false;
  private buffered = 0;
  private backoffMs = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private warnTimer: NodeJS.Timeout | null = null;
  private lastWarnAt = -Infinity;
  private droppedSinceWarn = 0;

  /** Lines dropped since the writer opened: no room while the destination lagged, or a write that failed. */
  dropped = 0;
  /** Lines the kernel took. */
  written = 0;
  /** write() calls made (async and at flushSync), for the bench and the tests of batching. */
  writes = 0;
  /** The last write error other than EAGAIN (e.g. EPIPE, ENOSPC), for diagnostics. */
  lastError: NodeJS.ErrnoException | null = null;

  /** Opens `destination`; throws WRITE_FAILED naming the path when the file cannot be created or opened. */
  constructor(destination: LineDestination, options: LineWriterOptions = {}) {
    this.maxBuffered = options.maxBuffered ?? DEFAULT_MAX_BUFFERED;
    this.batchBytes = options.batchBytes ?? DEFAULT_BATCH;
    this.flushIntervalMs = options.flushIntervalMs ?? DEFAULT_FLUSH_INTERVAL_MS;
    this.dropWarning = options.dropWarning;
    this.warnIntervalMs = options.warnIntervalMs ?? 10_000;
    if (destination.kind !== 'file') {
      this.fd = destination.kind === 'stdout' ? 1 : destination.fd;
      this.ownsFd = false;
    } else {
      try {
        mkdirSync(dirname(destination.path), { recursive: true });
        // 0640: the log names every app's peers and destinations; it is no business of other local users.
        this.fd = openSync(destination.path, 'a', 0o640);
      } catch (error) {
        const e = error as NodeJS.ErrnoException;
        throw new MeshctlError(
          'WRITE_FAILED',
          `cannot open the access log proxy.accessLog.path (${destination.path}): ${e.code ?? e.message}`,
          'check that the directory exists or can be created and is writable by the proxy user, or set proxy.accessLog.path to null (stdout)',
          { cause: error },
        );
      }
      this.ownsFd = true;
    }
    this.atomicLines = !this.isRegularFile();
  }

  private isRegularFile(): boolean {
    try {
      return fstatSync(this.fd).isFile();
    } catch {
      return false;
    }
  }

  /** Bytes held: appended and not yet written (in flight included). */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Appends one line (ending in "\n"); false when it was dropped for want of room or because the writer is closed. */
  append(line: string): boolean {
    if (this.closing) return false;
    if (this.buffered + line.length > this.maxBuffered) {
      this.drop(1);
      return false;
    }
    this.put(line);
    if (this.pendingBytes >= this.batchBytes) this.flushAsync();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      if (this.flushIntervalMs > 0) setTimeout(this.flushWhenDue, this.flushIntervalMs);
      else setImmediate(this.flushWhenDue);
    }
    return true;
  }

  /** Encodes `line` once, into the chunk being filled (a fresh one when it might not fit). */
  private put(line: string): void {
    const worst = line.length * 3; // UTF-8 bytes per UTF-16 unit, at most
    if (this.chunkUsed + worst > this.chunk.length) {
      if (this.chunkUsed > 0) this.filled.push(this.chunk.subarray(0, this.chunkUsed));
      this.chunk = Buffer.allocUnsafe(Math.max(CHUNK_BYTES, worst));
      this.chunkUsed = 0;
    }
    const n = this.chunk.write(line, this.chunkUsed);
    this.chunkUsed += n;
    this.pendingBytes += n;
    this.pendingLines++;
    this.buffered += n;
  }

  /** The pending bytes as one buffer; the chunk's unused rest stays to be filled (what was taken is never touched). */
  private takePending(): Buffer {
    if (this.chunkUsed > 0) {
      this.filled.push(this.chunk.subarray(0, this.chunkUsed));
      this.chunk = this.chunk.subarray(this.chunkUsed);
      this.chunkUsed = 0;
    }
    const bytes = this.filled.length === 1 ? this.filled[0]! : Buffer.concat(this.filled);
    this.filled.length = 0;
    this.pendingBytes = 0;
    this.pendingLines = 0;
    return bytes;
  }

  private readonly flushWhenDue = (): void => {
    this.flushScheduled = false;
    this.flushAsync();
  };

  /** Starts writing what is pending, or marks it due if a write is in flight (or waits to be retried). */
  private flushAsync(): void {
    if (this.pendingLines === 0 || this.closing) return;
    if (this.writing || this.retryTimer !== null) {
      this.due = true;
      return;
    }
    this.due = false;
    const lines = this.pendingLines;
    this.current = { bytes: this.takePending(), offset: 0, lines };
    this.writeCurrent();
  }

  private writeCurrent(): void {
    const { bytes, offset } = this.current!;
    this.writing = true;
    this.writes++;
    write(this.fd, bytes, offset, this.cut(bytes, offset) - offset, null, this.afterWrite);
  }

  /** Where the write starting at `offset` ends: the batch's end, or for a pipe the last line end within PIPE_BUF. */
  private cut(bytes: Buffer, offset: number): number {
    if (!this.atomicLines || bytes.length - offset <= PIPE_BUF) return bytes.length;
    const lastNewline = bytes.lastIndexOf(10, offset + PIPE_BUF - 1);
    if (lastNewline >= offset) return lastNewline + 1;
    const lineEnd = bytes.indexOf(10, offset); // one line longer than PIPE_BUF: alone, as a whole
    return lineEnd < 0 ? bytes.length : lineEnd + 1;
  }

  private readonly afterWrite = (error: NodeJS.ErrnoException | null, n: number): void => {
    this.writing = false;
    if (this.inFlightAccounted) {
      this.inFlightAccounted = false;
      if (this.closing) this.closeFd();
      else this.next();
      return;
    }
    const current = this.current!;
    if (error !== null) {
      if (error.code === 'EAGAIN') {
        this.backoffMs = Math.min(EAGAIN_BACKOFF_MAX_MS, Math.max(1, this.backoffMs * 2));
        this.retryTimer = setTimeout(this.retry, this.backoffMs);
        return;
      }
      // EPIPE (no reader), ENOSPC, EIO...: this batch is lost; later ones are tried (the condition may pass).
      this.lastError = error;
      this.finishCurrent(current, false);
    } else {
      this.backoffMs = 0;
      current.offset += n;
      if (current.offset < current.bytes.length) {
        this.writeCurrent(); // the rest of the batch (a pipe's next PIPE_BUF, or a short write)
        return;
      }
      this.finishCurrent(current, true);
    }
    this.next();
  };

  /** After a batch: the next one if it came due meanwhile or is already a full batch. */
  private next(): void {
    if (this.writing) return; // the drop warning may have started one
    if (this.current !== null) this.writeCurrent();
    else if (this.due || this.pendingBytes >= this.batchBytes) this.flushAsync();
  }

  private readonly retry = (): void => {
    this.retryTimer = null;
    if (this.current !== null) this.writeCurrent();
    else this.next();
  };

  private finishCurrent(current: NonNullable<LineWriter['current']>, ok: boolean): void {
    this.current = null;
    this.buffered -= current.bytes.length;
    if (ok) this.written += current.lines;
    else this.drop(current.lines);
    if (this.droppedSinceWarn > 0) this.warnWhenDue();
  }

  private drop(lines: number): void {
    this.dropped += lines;
    this.droppedSinceWarn += lines;
    if (this.warnTimer === null) this.warnWhenDue();
  }

  /** Writes the drop warning now if it is due and there is room, else arms a timer for when it may be. */
  private warnWhenDue(): void {
    if (this.dropWarning === undefined || this.closing) return;
    const now = performance.now();
    const due = this.lastWarnAt + this.warnIntervalMs;
    // Room: the warning goes out once the destination has drained to half the bound, not into the same wall.
    if (now >= due && this.buffered <= this.maxBuffered / 2) {
      const line = this.dropWarning(this.droppedSinceWarn, this.dropped);
      this.lastWarnAt = now;
      this.droppedSinceWarn = 0;
      this.put(line);
      this.flushAsync();
      return;
    }
    if (this.warnTimer !== null) return;
    this.warnTimer = setTimeout(
      () => {
        this.warnTimer = null;
        if (this.droppedSinceWarn > 0) this.warnWhenDue();
      },
      Math.max(now < due ? due - now : 0, 100),
    );
    this.warnTimer.unref();
  }

  /**
   * Writes out everything held, synchronously (for exit and reopen). A write already in flight lands on its own (it
   * may land after what this writes); a destination that stays full for FLUSH_SYNC_PATIENCE_MS loses the rest
   * (counted as dropped).
   */
  flushSync(): void {
    if (this.closing) return;
    if (this.retryTimer !== null) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
    const parts: Buffer[] = [];
    let lines = 0;
    let held = 0;
    if (this.current !== null) {
      const { bytes, offset } = this.current;
      // What is in flight is [offset, cut): the kernel gets it from the threadpool; the rest is ours.
      const from = this.writing ? this.cut(bytes, offset) : offset;
      if (from < bytes.length) parts.push(bytes.subarray(from));
      lines += this.current.lines;
      held += bytes.length;
      this.current = null;
      if (this.writing) this.inFlightAccounted = true;
    }
    if (this.pendingLines > 0) {
      lines += this.pendingLines;
      held += this.pendingBytes;
      parts.push(this.takePending());
    }
    this.due = false;
    if (lines === 0) return;
    const ok = this.writeAllSync(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
    this.buffered -= held;
    if (ok) this.written += lines;
    else this.drop(lines);
  }

  private writeAllSync(bytes: Buffer): boolean {
    let offset = 0;
    let deadline = 0;
    while (offset < bytes.length) {
      try {
        this.writes++;
        offset += writeSync(this.fd, bytes, offset, this.cut(bytes, offset) - offset);
      } catch (error) {
        const e = error as NodeJS.ErrnoException;
        if (e.code !== 'EAGAIN') {
          this.lastError = e;
          return false;
        }
        const now = performance.now();
        if (deadline === 0) deadline = now + FLUSH_SYNC_PATIENCE_MS;
        if (now > deadline) return false;
        Atomics.wait(sleeper, 0, 0, 1); // the reader needs a moment; nothing else may run at exit anyway
      }
    }
    return true;
  }

  /** Flushes and closes (the fd once a write in flight has returned); later appends are dropped. */
  close(): void {
    if (this.closing) return;
    this.flushSync();
    this.closing = true;
    if (this.warnTimer !== null) clearTimeout(this.warnTimer);
    if (!this.writing) this.closeFd(); // else the write's callback closes it: the fd number must not be reused under it
  }

  private closeFd(): void {
    if (!this.ownsFd || this.fd < 0) return;
    try {
      closeSync(this.fd);
    } catch {
      // already closed: nothing to release
    }
    this.fd = -1;
  }
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));
