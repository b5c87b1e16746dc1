// The access log alone: CPU µs per logged connection and lines/s, writing N realistic lines (built per line as
// src/proxy/connection.ts's record() builds them, then AccessLog.closed()) to a file on tmpfs (/dev/shm), in a fresh
// child process per repetition, measured with process.cpuUsage() (all threads, so the writes count) from the first
// line until the last is on disk. Candidates, run interleaved:
//   dist  AccessLog from a build of src/ (dist/, or --dist DIR): what the proxy runs today.
//   pino  the access log as it was before issue 19 (pino + pino.destination, async sonic-boom, one info() per line),
//         kept here so the "before" row stays measurable.
//   none  the driver alone (see below).
// Lines are handed over `--per-turn` at a time per event-loop turn (a worker closes a few connections per turn).
// Run `npm run build` first. Usage:
//   node bench/access-log-micro.mjs [--lines 200000] [--per-turn 32 | --rate N] [--reps 5] [--candidates none,dist,pino]
//     [--dist DIR] [--flush-ms N] [--dir /dev/shm] [--semi-space 1] [--cpu-prof DIR] [--json]
// --semi-space MiB: V8's semi-space of the child (default 1, as the proxy's cluster workers run; also
//   --no-memory-reducer, as they run with the relay thread).
// --per-turn 1: one line per turn, the worst case for writing (nothing to batch with unless a write is in flight).
// --rate N: instead of back-to-back turns, N lines/s paced by a 1 ms timer, the loop idle in between (as a worker's at
//   5k connections/s): each write's completion then wakes the loop on its own, as it does in the proxy.
// --flush-ms N: the dist candidate's writer waits up to N ms to batch lines into a write (default: its own default).
// Candidate `none` builds the records and discards them: the driver's own cost, to subtract from the others.
// Prints a line per repetition (stderr) and median (min–max) per candidate (stdout), over the repetitions that dropped
// no line (the writer's bound); --json also prints raw results.
import { fork } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = fileURLToPath(import.meta.url);

function arg(argv, flag, fallback) {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : fallback;
}

// ---------------------------------------------------------------- child: one candidate, one repetition

/** The access log as it was before issue 19 (src/proxy/access-log.ts at 9a9c5f2), for the "before" row. */
async function pinoAccessLog(path, base) {
  const { pino } = await import('pino');
  const destination = pino.destination({ dest: path, sync: false, mkdir: true, append: true, mode: 0o640 });
  const logger = pino({ base, timestamp: pino.stdTimeFunctions.isoTime, messageKey: 'msg' }, destination);
  return {
    closed(record) {
      logger.info(record, 'connection closed');
    },
    close() {
      // as before: flushSync needs the destination open (it opens asynchronously)
      return new Promise((resolve) => {
        const end = () => {
          destination.flushSync();
          destination.end();
          resolve();
        };
        if (destination.fd >= 0) end();
        else destination.once('ready', end);
      });
    },
  };
}

/** The driver alone (records built, then discarded): subtract it to get the access log's own cost. */
function noAccessLog() {
  let sink = 0;
  return {
    closed(record) {
      sink += record.bytesFromClient;
    },
    close: () => Promise.resolve(sink),
  };
}

async function distAccessLog(path, base, dist, flushMs) {
  const { AccessLog } = await import(new URL('proxy/access-log.js', dist).href);
  const options = flushMs === '' ? {} : { flushIntervalMs: Number(flushMs) };
  const log = new AccessLog({ enabled: true, path, sampleRatio: 1, periodicIntervalMs: null }, base, options);
  return {
    closed: (record) => log.closed(record),
    close() {
      log.close();
      return Promise.resolve();
    },
    dropped: () => log.dropped ?? 0,
  };
}

/** A closed connection's record as Connection.record() builds it (performance.now() times, 3-decimal rounding). */
function makeRecord(i, startedAt, connectedAt, now) {
  return {
    id: `0.${i}`,
    direction: i % 4 === 0 ? 'inbound' : 'outbound',
    source: `10.0.${(i >> 8) & 255}.${i & 255}:${32768 + (i % 28000)}`,
    originalDst: '10.96.14.7:8080',
    upstream: '10.96.14.7:8080',
    upstreamLocal: `10.0.0.5:${40000 + (i % 20000)}`,
    bytesFromClient: 64 + (i % 7),
    bytesFromUpstream: 64 + (i % 5) * 1000,
    durationMs: Math.round((now - startedAt) * 1000) / 1000,
    connectMs: connectedAt > 0 ? Math.round((connectedAt - startedAt) * 1000) / 1000 : null,
    result: 'FIN',
    detail: i % 2 === 0 ? 'client-first' : 'upstream-first',
    service: undefined,
    attempts: undefined,
  };
}

async function child() {
  const candidate = arg(process.argv, '--candidate', 'dist');
  const lines = Number(arg(process.argv, '--lines', '200000'));
  const perTurn = Number(arg(process.argv, '--per-turn', '32'));
  const path = arg(process.argv, '--path', '');
  const dist = new URL(arg(process.argv, '--dist-url', ''));
  const base = { worker: 0 };
  const rate = Number(arg(process.argv, '--rate', '0'));
  const log =
    candidate === 'pino'
      ? await pinoAccessLog(path, base)
      : candidate === 'none'
        ? noAccessLog()
        : await distAccessLog(path, base, dist, arg(process.argv, '--flush-ms', ''));
  // No warm-up: at 200k lines the first turns' compile time is noise, and a proxy's first lines are cold too.
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  let i = 0;
  const emit = (end) => {
    for (; i < end; i++) {
      const startedAt = performance.now() - 1.5;
      log.closed(makeRecord(i, startedAt, startedAt + 0.2, performance.now()));
    }
  };
  await new Promise((resolve) => {
    if (rate > 0) {
      // Paced: every millisecond the lines due by then; the loop sleeps in between, as a proxy's does under load.
      const timer = setInterval(() => {
        emit(Math.min(lines, Math.floor(((performance.now() - t0) * rate) / 1000)));
        if (i >= lines) {
          clearInterval(timer);
          resolve();
        }
      }, 1);
      return;
    }
    const turn = () => {
      emit(Math.min(lines, i + perTurn));
      if (i < lines) setImmediate(turn);
      else resolve();
    };
    turn();
  });
  await log.close();
  const cpu = process.cpuUsage(cpu0);
  const wallMs = performance.now() - t0;
  const size = candidate === 'none' ? 0 : statSync(path).size;
  process.send({
    candidate,
    lines,
    cpuUsPerLine: (cpu.user + cpu.system) / lines,
    userUsPerLine: cpu.user / lines,
    systemUsPerLine: cpu.system / lines,
    linesPerSec: lines / (wallMs / 1000),
    bytesPerLine: size / lines,
    dropped: log.dropped?.() ?? 0,
  });
}

// ---------------------------------------------------------------- parent: interleaved repetitions

function runOnce(candidate, opts, rep) {
  const path = join(opts.dir, `${candidate}-${rep}.log`);
  // As a cluster worker runs with the relay thread (src/proxy/workers.ts workerExecArgv): 1 MiB semi-spaces, so
  // per-line garbage costs what it costs there, and no memory reducer (its idle-time GCs would land on the paced runs).
  const execArgv = [`--max-semi-space-size=${opts.semiSpace}`, '--no-memory-reducer'];
  if (opts.cpuProf)
    execArgv.push(
      '--cpu-prof',
      '--cpu-prof-dir',
      opts.cpuProf,
      '--cpu-prof-name',
      `access-log-${candidate}-${rep}.cpuprofile`,
    );
  const child = fork(
    here,
    [
      '--child',
      '--candidate',
      candidate,
      '--lines',
      String(opts.lines),
      '--per-turn',
      String(opts.perTurn),
      '--path',
      path,
      '--dist-url',
      opts.dist.href,
      '--rate',
      String(opts.rate),
      ...(opts.flushMs === null ? [] : ['--flush-ms', opts.flushMs]),
    ],
    { execArgv },
  );
  return new Promise((resolve, reject) => {
    let result = null;
    child.on('message', (m) => (result = m));
    child.on('exit', (code) => {
      rmSync(path, { force: true });
      if (code === 0 && result) resolve(result);
      else reject(new Error(`${candidate} repetition ${rep} exited with ${code} without a result`));
    });
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (xs, digits) =>
  `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)})`;

async function parent() {
  const argv = process.argv;
  const distArg = arg(argv, '--dist', null);
  const opts = {
    lines: Number(arg(argv, '--lines', '200000')),
    perTurn: Number(arg(argv, '--per-turn', '32')),
    reps: Number(arg(argv, '--reps', '5')),
    candidates: arg(argv, '--candidates', 'none,dist,pino').split(','),
    dist: distArg ? new URL(`${pathToFileURL(distArg).href}/`) : new URL('../dist/', import.meta.url),
    cpuProf: arg(argv, '--cpu-prof', null),
    semiSpace: Number(arg(argv, '--semi-space', '1')),
    rate: Number(arg(argv, '--rate', '0')),
    flushMs: arg(argv, '--flush-ms', null),
    dir: null,
  };
  const root = arg(argv, '--dir', existsSync('/dev/shm') ? '/dev/shm' : '/tmp');
  opts.dir = mkdtempSync(join(root, 'al-micro-'));
  const results = [];
  try {
    for (let rep = 0; rep < opts.reps; rep++) {
      for (const candidate of opts.candidates) {
        const r = await runOnce(candidate, opts, rep);
        results.push(r);
        process.stderr.write(
          `${candidate} #${rep}: ${r.cpuUsPerLine.toFixed(2)} µs CPU/line (user ${r.userUsPerLine.toFixed(2)}, ` +
            `sys ${r.systemUsPerLine.toFixed(2)}), ${Math.round(r.linesPerSec)} lines/s, ` +
            `${r.bytesPerLine.toFixed(0)} B/line, dropped ${r.dropped}\n`,
        );
      }
    }
  } finally {
    rmSync(opts.dir, { recursive: true, force: true });
  }
  console.log(
    `access log, ${opts.lines} lines, ${opts.rate > 0 ? `${opts.rate}/s paced` : `${opts.perTurn} per turn`}, semi-space ${opts.semiSpace} MiB, ${opts.reps} reps: median (min–max)`,
  );
  console.log('| candidate | CPU µs/line | user µs/line | sys µs/line | lines/s | reps that dropped lines |');
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const candidate of opts.candidates) {
    const all = results.filter((r) => r.candidate === candidate);
    // A repetition that dropped lines (the writer's bound: its destination or its threadpool thread fell behind,
    // e.g. on a loaded machine) did less work per line: it is left out of the figures and counted in the last column.
    const kept = all.filter((r) => r.dropped === 0);
    const mine = kept.length > 0 ? kept : all;
    const col = (f, digits) => fmt(mine.map(f), digits);
    const dropped = all.length - kept.length;
    console.log(
      `| ${candidate} | ${col((r) => r.cpuUsPerLine, 2)} | ${col((r) => r.userUsPerLine, 2)} | ` +
        `${col((r) => r.systemUsPerLine, 2)} | ${col((r) => r.linesPerSec / 1000, 0)}k | ` +
        `${dropped === 0 ? '0' : `${dropped} of ${all.length} reps (max ${Math.max(...all.map((r) => r.dropped))} lines)`} |`,
    );
  }
  if (argv.includes('--json')) console.log(JSON.stringify(results));
}

if (process.argv.includes('--child')) await child();
else await parent();
