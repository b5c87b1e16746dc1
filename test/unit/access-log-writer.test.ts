// The access log's writer batches lines into few writes, keeps a pipe's writes within PIPE_BUF at line ends, and
// when the destination never drains holds no more than its bound: it drops lines, counts them, and says so in a
// warning line once there is room again; flushSync at exit neither hangs on a full pipe nor loses what it can write.
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isMeshctlError } from '../../src/errors.js';
import { LineWriter } from '../../src/proxy/access-log-writer.js';
import { AccessLog } from '../../src/proxy/access-log.js';
import { waitUntil } from '../helpers/wait.js';

const dirs: string[] = [];
const fds: number[] = [];
afterEach(() => {
  for (const fd of fds.splice(0)) closeSync(fd);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'al-writer-'));
  dirs.push(dir);
  return dir;
}

const line = (i: number, pad = 300) => `{"i":${i},"pad":"${'x'.repeat(pad)}"}\n`;
const nextTurn = () => new Promise((r) => setImmediate(r));

/** A FIFO that nobody reads until the test does: the reader end (non-blocking) and a non-blocking writer end. */
function fifo(): { reader: number; writer: number } {
  const path = join(tempDir(), 'pipe');
  execFileSync('mkfifo', [path]);
  const reader = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const writer = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
  fds.push(reader, writer);
  return { reader, writer };
}

/** Reads what the FIFO holds now (non-blocking). */
function drain(fd: number): string {
  const buf = Buffer.alloc(1 << 16);
  let out = '';
  for (;;) {
    try {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) return out;
      out += buf.toString('utf8', 0, n);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EAGAIN') return out;
      throw error;
    }
  }
}

describe('LineWriter', () => {
  it('writes the lines of one turn in one write, and each later turn in its own when flushing per turn', async () => {
    const path = join(tempDir(), 'a.log');
    const w = new LineWriter({ kind: 'file', path }, { flushIntervalMs: 0 });
    for (let i = 0; i < 100; i++) w.append(line(i));
    await waitUntil('100 lines written', () => w.written === 100, 5000, { seen: () => `${w.written} written` });
    expect(w.writes).toBe(1);
    for (let turn = 0; turn < 3; turn++) {
      for (let i = 0; i < 10; i++) w.append(line(i));
      await waitUntil(`turn ${turn} written`, () => w.written === 110 + turn * 10, 5000, {
        seen: () => `${w.written} written`,
      });
    }
    expect(w.writes).toBe(4);
    w.close();
    expect(readFileSync(path, 'utf8').split('\n').filter(Boolean)).toHaveLength(130);
  });

  it('gathers the lines of many turns into one write within the flush interval', async () => {
    const path = join(tempDir(), 'a.log');
    const w = new LineWriter({ kind: 'file', path }, { flushIntervalMs: 200 });
    for (let turn = 0; turn < 20; turn++) {
      w.append(line(turn));
      await nextTurn();
    }
    await waitUntil('20 lines written', () => w.written === 20, 5000, { seen: () => `${w.written} written` });
    expect(w.writes).toBe(1);
    w.close();
  });

  it('starts a write at once when a batch is full, without waiting for the interval', async () => {
    const path = join(tempDir(), 'a.log');
    const w = new LineWriter({ kind: 'file', path }, { flushIntervalMs: 60_000, batchBytes: 64 * 1024 });
    for (let i = 0; i < 400; i++) w.append(line(i)); // ~124 KiB: one full batch goes, the rest waits
    await waitUntil('a full batch written', () => w.written > 0, 5000, { seen: () => `${w.written} written` });
    expect(w.written).toBeGreaterThanOrEqual(200);
    expect(w.written).toBeLessThan(400);
    w.close(); // the rest, synchronously
    expect(w.written).toBe(400);
    expect(readFileSync(path, 'utf8').split('\n').filter(Boolean)).toHaveLength(400);
  });

  it('writes multi-byte lines across chunk boundaries, and a line larger than a chunk, byte for byte', async () => {
    const path = join(tempDir(), 'a.log');
    const w = new LineWriter({ kind: 'file', path }, { flushIntervalMs: 0 });
    const lines = [
      ...Array.from({ length: 300 }, (_, i) => `{"i":${i},"s":"grüße 日本語 🚀 ${'é'.repeat(i)}"}\n`),
      `{"big":"${'🚀'.repeat(40_000)}"}\n`, // 160 KB of UTF-8
      '{"after":true}\n',
    ];
    for (const l of lines) w.append(l);
    await waitUntil('all lines written', () => w.written === lines.length, 5000, { seen: () => `${w.written}` });
    w.close();
    expect(readFileSync(path, 'utf8')).toBe(lines.join(''));
    expect(w.bufferedBytes).toBe(0);
  });

  it('cuts writes to a pipe at line ends within PIPE_BUF (4096 bytes)', async () => {
    const { reader, writer } = fifo();
    const w = new LineWriter({ kind: 'fd', fd: writer }, { flushIntervalMs: 0 });
    const lines = Array.from({ length: 40 }, (_, i) => line(i, 1000 + i)); // ~41 KiB, ~1 KiB each
    for (const l of lines) w.append(l);
    await waitUntil('40 lines written', () => w.written === 40, 5000, { seen: () => `${w.written} written` });
    // as many whole lines per write as fit in 4096 bytes (the reader sees them intact, in order)
    let expected = 0;
    let size = 0;
    for (const l of lines) {
      if (size + l.length > 4096) [expected, size] = [expected + 1, 0];
      size += l.length;
    }
    expect(w.writes).toBe(expected + 1);
    expect(drain(reader)).toBe(lines.join(''));
    w.close();
  });

  it('keeps the lines of two writers on one pipe whole while both write at once (threadpool writes in parallel)', async () => {
    const { reader, writer } = fifo();
    const writers = [0, 1].map(() => new LineWriter({ kind: 'fd', fd: writer }, { flushIntervalMs: 0 }));
    const perWriter = 2000;
    let got = '';
    for (let turn = 0; turn < 20; turn++) {
      for (const [k, w] of writers.entries())
        for (let i = 0; i < perWriter / 20; i++)
          w.append(`{"w":${k},"i":${turn * 100 + i},"pad":"${'x'.repeat(900)}"}\n`);
      got += drain(reader);
      await nextTurn();
    }
    await waitUntil(
      'every line of both writers',
      () => {
        got += drain(reader);
        return got.split('\n').length - 1 >= 2 * perWriter;
      },
      10_000,
      { seen: () => `${got.split('\n').length - 1} lines read; written ${writers.map((w) => w.written)}` },
    );
    const parsed = got
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { w: number; i: number });
    for (const k of [0, 1])
      expect(parsed.filter((p) => p.w === k).map((p) => p.i)).toEqual(Array.from({ length: perWriter }, (_, i) => i));
    expect(writers.map((w) => w.dropped)).toEqual([0, 0]);
    for (const w of writers) w.close();
  });

  it('holds no more than its bound when the destination never drains: drops, counts, then warns', async () => {
    const { reader, writer } = fifo();
    const maxBuffered = 32 * 1024;
    const warnings: number[] = [];
    const w = new LineWriter(
      { kind: 'fd', fd: writer },
      {
        flushIntervalMs: 0,
        maxBuffered,
        warnIntervalMs: 0,
        dropWarning: (dropped, total) => {
          warnings.push(dropped);
          return `{"msg":"dropped","dropped":${dropped},"total":${total}}\n`;
        },
      },
    );
    let appended = 0;
    let refused = 0;
    // ~1.6 MB offered over 50 turns into a 64 KiB pipe that nobody reads, plus a 32 KiB bound
    for (let turn = 0; turn < 50; turn++) {
      for (let i = 0; i < 100; i++) {
        if (w.append(line(appended + refused))) appended++;
        else refused++;
      }
      expect(w.bufferedBytes).toBeLessThanOrEqual(maxBuffered);
      await nextTurn();
    }
    expect(refused).toBeGreaterThan(4000);
    expect(w.dropped).toBe(refused);
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    // (a warning may have gone out while the pipe still took writes) the latest drops wait for room to be reported
    expect(sum(warnings)).toBeLessThan(refused);
    // The reader comes back: everything kept arrives whole, then the warning with the count.
    let got = '';
    const all = await waitUntil(
      'the drop warning after the kept lines',
      () => {
        got += drain(reader);
        return got.includes(`"total":${refused}}`) ? got : null;
      },
      10_000,
      { seen: () => `${got.length} bytes read, ${w.written} written, ${w.dropped} dropped` },
    );
    const parsed = all
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { i?: number; msg?: string; dropped?: number; total?: number });
    const kept = parsed.filter((p) => p.i !== undefined);
    expect(kept).toHaveLength(appended);
    expect(kept.map((p) => p.i)).toEqual([...kept.map((p) => p.i!)].sort((a, b) => a - b));
    const warned = parsed.filter((p) => p.msg === 'dropped');
    expect(parsed.at(-1)).toMatchObject({ msg: 'dropped', total: refused });
    expect(sum(warned.map((p) => p.dropped!))).toBe(refused);
    expect(sum(warnings)).toBe(refused);
    w.close();
  });

  it('gives up at exit after a bounded wait on a destination that stays full, counting what it lost', async () => {
    const { writer } = fifo();
    const w = new LineWriter({ kind: 'fd', fd: writer }, { flushIntervalMs: 60_000, maxBuffered: 1 << 20 });
    for (let i = 0; i < 1000; i++) w.append(line(i)); // ~300 KiB into a 64 KiB pipe
    const started = performance.now();
    w.close();
    const tookMs = performance.now() - started;
    expect(tookMs).toBeLessThan(5000);
    expect(w.written + w.dropped).toBe(1000);
    expect(w.dropped).toBeGreaterThan(0);
    expect(w.append(line(0))).toBe(false); // closed
  });

  it('refuses an access log path it cannot open with WRITE_FAILED naming the path', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'file'), '');
    const path = join(dir, 'file', 'access.log');
    let caught: unknown;
    try {
      new AccessLog({ enabled: true, path, sampleRatio: 1, periodicIntervalMs: null });
    } catch (error) {
      caught = error;
    }
    expect(isMeshctlError(caught) && caught.code).toBe('WRITE_FAILED');
    expect((caught as Error).message).toContain(path);
  });

  it('keeps writing to the old file when a reload names one it cannot open', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'file'), '');
    const old = join(dir, 'a.log');
    const log = new AccessLog({ enabled: true, path: old, sampleRatio: 1, periodicIntervalMs: null });
    const bad = { enabled: true, path: join(dir, 'file', 'b.log'), sampleRatio: 1, periodicIntervalMs: null };
    expect(() => log.reconfigure(bad)).toThrow(/proxy\.accessLog\.path/);
    expect(log.enabled).toBe(true);
    log.dnsQuery({ name: 'kept.' });
    log.close();
    expect(JSON.parse(readFileSync(old, 'utf8'))).toMatchObject({ name: 'kept.', msg: 'dns query' });
  });

  it('exposes the lines dropped for metrics, across a reopen', async () => {
    const dir = tempDir();
    const log = new AccessLog(
      { enabled: true, path: join(dir, 'a.log'), sampleRatio: 1, periodicIntervalMs: null },
      {},
      { maxBuffered: 2000, flushIntervalMs: 60_000 },
    );
    const r = {
      id: '0.1',
      direction: 'outbound',
      source: '10.0.0.1:1',
      originalDst: null,
      upstream: null,
      upstreamLocal: null,
      bytesFromClient: 0,
      bytesFromUpstream: 0,
      durationMs: 1,
      connectMs: null,
      result: 'RST',
      detail: 'x',
    } as const;
    for (let i = 0; i < 20; i++) log.closed(r); // ~280 B each: 6 or 7 fit in 2000
    const dropped = log.dropped;
    log.reconfigure({ enabled: true, path: join(dir, 'b.log'), sampleRatio: 1, periodicIntervalMs: null });
    log.closed(r);
    log.close();
    const kept = readFileSync(join(dir, 'a.log'), 'utf8').split('\n').filter(Boolean).length;
    expect(kept).toBeGreaterThan(4);
    expect(dropped).toBe(20 - kept);
    expect(log.dropped).toBe(dropped);
    expect(readFileSync(join(dir, 'b.log'), 'utf8').split('\n').filter(Boolean)).toHaveLength(1);
  });
});
