// The mTLS tunnel over loopback, without namespaces or capture: CPU seconds per GB (bulk) and CPU µs per 64 B
// request/response (rr) of meshctl's tunnel code (a build of src/: TunnelDialer and its client leg → TLS 1.3 + HTTP/2
// CONNECT → TunnelServer and its server leg), in two processes, each measured with process.cpuUsage(). Run
// `npm run build` first (or pass --dist). Usage:
//   node bench/tunnel-micro.mjs [--workloads bulk,rr] [--secs 3] [--warmup 1] [--reps 5] [--conns 32] [--chunk 65536]
//     [--legs tunnel|tcp] [--candidate meshctl|haproxy] [--dist DIR] [--cpu-prof DIR] [--node-flags FLAGS] [--json]
// --legs tunnel (default): the client process writes into its legs itself, the server's legs sink (bulk) or echo (rr):
//   the tunnel alone. --legs tcp: a generator → TCP → client end → tunnel → server end → TCP → app, relayed as
//   src/proxy/connection.ts relays a tunnel stream (the generator and the app run in the parent; their CPU is not
//   counted): what one connection costs both sidecars, as in bench/pair.ts, without the namespaces.
// --candidate haproxy: the same TCP path through two HAProxy (nbthread 1 each) doing TLS 1.3 with client certificates
//   verified both ways, as bench/pair.ts's haproxy-tls; CPU from /proc. Compare within one run: the machine is shared.
// --dist DIR: another build of src/ than dist/ (e.g. a variant compiled with tsc --outDir), to compare side by side.
// --node-flags "FLAGS": Node/V8 flags for both ends (space-separated), e.g. "--max-semi-space-size=1", the young
//   generation the proxy runs with (src/proxy/heap-flags.ts keeps it at 1 MiB), or "--trace-gc".
// Prints a line per repetition (stderr) and median (min–max) per workload (stdout); --json also prints the raw results.
import { fork, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { connect, createServer } from 'node:net';

const here = fileURLToPath(import.meta.url);
// --dist DIR: another build of src/ (e.g. a variant to compare); children inherit it through the argv.
const distArg = process.argv.indexOf('--dist');
const dist =
  distArg >= 0 ? new URL(`${pathToFileURL(process.argv[distArg + 1]).href}/`) : new URL('../dist/', import.meta.url);
const load = (path) => import(new URL(path, dist).href);

function arg(argv, flag, fallback) {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : fallback;
}

// ---------------------------------------------------------------- child processes: one tunnel end each

/**
 * Relays a and b as src/proxy/connection.ts does: write, pause the reader while the writer is over its mark; what a
 * tunnel leg delivers goes through tunnel-leg's writeFromLeg when the build has it (older builds: plain writes).
 */
function relay(a, b, counted, writeFromLeg) {
  const toB = writeFromLeg && isLeg(a) ? (chunk) => writeFromLeg(b, chunk) : (chunk) => b.write(chunk);
  const toA = writeFromLeg && isLeg(b) ? (chunk) => writeFromLeg(a, chunk) : (chunk) => a.write(chunk);
  a.on('data', (chunk) => {
    counted(chunk.length);
    if (!toB(chunk)) a.pause();
  });
  b.on('data', (chunk) => {
    if (!toA(chunk)) b.pause();
  });
  a.on('drain', () => b.resume());
  b.on('drain', () => a.resume());
  a.on('end', () => b.end());
  b.on('end', () => a.end());
  a.resume();
  b.resume();
}

const isLeg = (socket) => typeof socket.respond === 'function' || typeof socket.session === 'object';

async function identityOf(dir) {
  const { loadIdentity, identityPathsIn } = await load('mtls/identity.js');
  return loadIdentity(identityPathsIn(dir));
}

/** Waits for the parent's 'start', measures until 'stop', answers with the CPU used and what `counted` returned. */
function measured(counted) {
  let cpu0 = null;
  let count0 = 0;
  process.on('message', (m) => {
    if (m.cmd === 'start') {
      count0 = counted();
      cpu0 = process.cpuUsage();
    } else if (m.cmd === 'stop') {
      const cpu = process.cpuUsage(cpu0);
      process.send({ cpuUs: cpu.user + cpu.system, user: cpu.user, system: cpu.system, count: counted() - count0 });
    } else if (m.cmd === 'exit') process.exit(0);
  });
}

async function serverMain(argv) {
  const { silentLogger } = await load('log.js');
  const { TunnelServer } = await load('proxy/tunnel-server.js');
  const { TunnelMetrics } = await load('proxy/tunnel-metrics.js');
  const { serverLeg, legEstablished, writeFromLeg } = await load('proxy/tunnel-leg.js');
  const workload = arg(argv, '--workload');
  const identity = await identityOf(arg(argv, '--identity'));
  let bytes = 0;
  let ops = 0;
  const appPort = Number(arg(argv, '--app-port', '0'));
  const onStream = (stream, _dst, peer) => {
    const leg = serverLeg(stream, { ...peer, localIdentity: identity.spiffeId.text }, () => 'refused');
    leg.on('error', () => {});
    if (appPort > 0) {
      // As the proxy's inbound side: connect to the app, answer the CONNECT, relay.
      const app = connect({ host: '127.0.0.1', port: appPort });
      app.setNoDelay(true);
      app.on('error', () => {});
      app.once('connect', () => {
        legEstablished(leg);
        relay(leg, app, (n) => (workload === 'bulk' ? (bytes += n) : (ops += 1)), writeFromLeg);
      });
      return;
    }
    legEstablished(leg);
    if (workload === 'bulk')
      leg.on('data', (chunk) => {
        bytes += chunk.length;
      });
    else
      leg.on('data', (chunk) => {
        ops += 1;
        leg.write(chunk);
      });
    leg.resume();
  };
  const server = new TunnelServer(identity, onStream, new TunnelMetrics(), silentLogger);
  await server.listen(0, [{ family: 'ipv4', fd: null }]);
  const port = Number(/:(\d+)$/.exec(server.listening[0])[1]);
  measured(() => (workload === 'bulk' ? bytes : ops));
  process.send({ port });
}

async function clientMain(argv) {
  const { silentLogger } = await load('log.js');
  const { TunnelDialer } = await load('proxy/tunnel-client.js');
  const legModule = await load('proxy/tunnel-leg.js');
  const { TunnelMetrics } = await load('proxy/tunnel-metrics.js');
  const workload = arg(argv, '--workload');
  const conns = Number(arg(argv, '--conns', '32'));
  const chunk = Buffer.alloc(Number(arg(argv, '--chunk', '65536')), 0x61);
  const identity = await identityOf(arg(argv, '--identity'));
  const dialer = new TunnelDialer(identity, new TunnelMetrics(), silentLogger);
  const target = {
    host: '127.0.0.1',
    tunnelPort: Number(arg(argv, '--port')),
    authority: '127.0.0.1:7',
    allowed: [],
    fallback: false,
  };
  let ops = 0;
  const open = (onConnect) =>
    new Promise((resolve, reject) => {
      const leg = dialer.dial(target);
      leg.once('error', reject);
      leg.once('connect', () => {
        leg.removeListener('error', reject);
        leg.on('error', (e) => {
          process.send({ error: `${e.code}: ${e.message}` });
        });
        onConnect(leg);
        resolve(leg);
      });
    });
  const legs = arg(argv, '--legs', 'tunnel');
  if (legs === 'tcp') {
    // As the proxy's outbound side: accept the generator's connections, dial the tunnel, relay.
    const listener = createServer({ pauseOnConnect: true, noDelay: true }, (socket) => {
      socket.on('error', () => {});
      open((leg) => relay(socket, leg, () => (ops += 1), legModule.writeFromLeg)).catch((e) =>
        process.send({ error: String(e) }),
      );
    });
    await new Promise((r) => listener.listen(0, '127.0.0.1', r));
    measured(() => ops);
    process.send({ ready: true, port: listener.address().port });
    return;
  }
  if (workload === 'bulk') {
    await open((leg) => {
      // Whole chunks, as a relay writes what it read from the client's socket, with the relay's backpressure.
      const pump = () => {
        while (leg.write(Buffer.from(chunk)));
      };
      leg.on('drain', pump);
      pump();
    });
  } else {
    const request = Buffer.alloc(64, 0x62);
    for (let i = 0; i < conns; i++)
      await open((leg) => {
        leg.on('data', () => {
          ops += 1;
          leg.write(Buffer.from(request));
        });
        leg.write(Buffer.from(request));
      });
  }
  measured(() => ops);
  process.send({ ready: true });
}

// ---------------------------------------------------------------- the parent: identities, repetitions, summary

function child(role, args, profDir) {
  const execArgv = profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [];
  // --node-flags "...": Node/V8 flags of both ends, e.g. the proxy's young generation (--max-semi-space-size=1).
  const nodeFlags = arg(process.argv, '--node-flags', '');
  if (nodeFlags !== '') execArgv.push(...nodeFlags.split(/\s+/));
  const distArgs = process.argv.includes('--dist') ? ['--dist', process.argv[process.argv.indexOf('--dist') + 1]] : [];
  const proc = fork(here, ['--role', role, ...args, ...distArgs], {
    execArgv,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const next = (pred) =>
    new Promise((resolve, reject) => {
      const onMessage = (m) => {
        if (m.error) return reject(new Error(`${role}: ${m.error}`));
        if (!pred(m)) return;
        proc.removeListener('message', onMessage);
        proc.removeListener('exit', onExit);
        resolve(m);
      };
      const onExit = (code) => reject(new Error(`${role} exited (${code}) before answering`));
      proc.on('message', onMessage);
      proc.once('exit', onExit);
    });
  return { proc, next };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The app behind the server end (a sink, or an echo for rr), here in the parent (its CPU is not counted). */
async function appServer(workload) {
  const server = createServer({ noDelay: true }, (socket) => {
    socket.on('error', () => {});
    if (workload === 'bulk') socket.on('data', (chunk) => app.counted(chunk.length));
    else socket.on('data', (chunk) => socket.write(chunk));
  });
  const app = server;
  app.counted = () => {};
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return server;
}

/** The load generator, here in the parent: one connection writing `chunk`s, or `conns` 64 B ping-pongs. */
function generate(workload, port, opts, counted = () => {}) {
  const sockets = [];
  const chunk = Buffer.alloc(opts.chunk, 0x61);
  const request = Buffer.alloc(64, 0x62);
  for (let i = 0; i < (workload === 'bulk' ? 1 : opts.conns); i++) {
    const socket = connect({ host: '127.0.0.1', port, noDelay: true });
    socket.on('error', () => {});
    sockets.push(socket);
    if (workload === 'bulk') {
      const pump = () => {
        while (socket.write(chunk));
      };
      socket.on('drain', pump);
      socket.once('connect', pump);
    } else {
      socket.on('data', () => {
        counted(1);
        socket.write(request);
      });
      socket.once('connect', () => socket.write(request));
    }
  }
  return () => sockets.forEach((s) => s.destroy());
}

/** A free loopback port (bound and released). */
async function freePort() {
  const server = createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

/** utime + stime of `pid` (all threads), in µs, from /proc. */
function procCpuUs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / 100;
}

/**
 * --candidate haproxy: the same path through two HAProxy (one thread each) doing what bench/pair.ts's haproxy-tls
 * does (TLS 1.3, client certificate, both verified against the bundle), for a ratio on the same machine and minute.
 */
async function haproxyRepetition(workload, dirs, opts) {
  const app = await appServer(workload);
  const [portA, portB] = [await freePort(), await freePort()];
  const global = ['global', '  nbthread 1', 'defaults', '  mode tcp', '  timeout connect 10s', '  timeout client 1h'];
  global.push('  timeout server 1h');
  const pem = (d) => join(d, 'haproxy.pem');
  for (const d of [dirs.a, dirs.b])
    writeFileSync(pem(d), readFileSync(join(d, 'svid.pem'), 'utf8') + readFileSync(join(d, 'svid_key.pem'), 'utf8'));
  const tls = (d) => `ssl ssl-min-ver TLSv1.3 crt ${pem(d)} ca-file ${join(d, 'svid_bundle.pem')} verify required`;
  const cfgB = [...global, 'frontend tunnel', `  bind 127.0.0.1:${portB} ${tls(dirs.b)}`, '  default_backend app'];
  cfgB.push('backend app', `  server app 127.0.0.1:${app.address().port}`, '');
  const cfgA = [...global, 'frontend outbound', `  bind 127.0.0.1:${portA}`, '  default_backend b'];
  cfgA.push('backend b', `  server b 127.0.0.1:${portB} ${tls(dirs.a)}`, '');
  writeFileSync(join(dirs.b, 'haproxy.cfg'), cfgB.join('\n'));
  writeFileSync(join(dirs.a, 'haproxy.cfg'), cfgA.join('\n'));
  const procs = [dirs.b, dirs.a].map((d) =>
    spawn('haproxy', ['-f', join(d, 'haproxy.cfg'), '-db'], { stdio: ['ignore', 'ignore', 'inherit'] }),
  );
  let stop = () => {};
  try {
    for (const port of [portB, portA])
      for (let i = 0; ; i++) {
        const ok = await new Promise((r) => {
          const s = connect({ host: '127.0.0.1', port }, () => r(s.destroy() ?? true)).on('error', () => r(false));
        });
        if (ok) break;
        if (i > 100) throw new Error(`haproxy did not listen on 127.0.0.1:${port} within 5 s`);
        await sleep(50);
      }
    let count = 0;
    const counted = (n) => (count += n);
    app.counted = counted;
    stop = generate(workload, portA, opts, counted);
    await sleep(opts.warmup * 1000);
    const count0 = count;
    const cpu0 = procs.map((p) => procCpuUs(p.pid));
    const t0 = process.hrtime.bigint();
    await sleep(opts.secs * 1000);
    const [b, a] = procs.map((p, i) => procCpuUs(p.pid) - cpu0[i]);
    const n = count - count0;
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    return result(workload, secs, n, a, b);
  } finally {
    stop();
    app.close();
    for (const p of procs) p.kill();
  }
}

/** One repetition's numbers: `n` bytes (bulk) or ops (rr) in `secs`, with the CPU µs of each end. */
function result(workload, secs, n, clientUs, serverUs) {
  if (workload === 'bulk') {
    const gb = n / 1e9;
    return {
      workload,
      gbitPerS: (n * 8) / 1e9 / secs,
      cpuSPerGb: (clientUs + serverUs) / 1e6 / gb,
      clientCpuSPerGb: clientUs / 1e6 / gb,
      serverCpuSPerGb: serverUs / 1e6 / gb,
    };
  }
  return {
    workload,
    opsPerS: n / secs,
    cpuUsPerOp: (clientUs + serverUs) / n,
    clientCpuUsPerOp: clientUs / n,
    serverCpuUsPerOp: serverUs / n,
  };
}

async function repetition(workload, dirs, opts) {
  if (opts.candidate === 'haproxy') return haproxyRepetition(workload, dirs, opts);
  const app = opts.legs === 'tcp' ? await appServer(workload) : null;
  const appArgs = app === null ? [] : ['--app-port', String(app.address().port)];
  const server = child('server', ['--workload', workload, '--identity', dirs.b, ...appArgs], opts.profDir);
  const { port } = await server.next((m) => m.port !== undefined);
  const client = child(
    'client',
    ['--workload', workload, '--identity', dirs.a, '--port', String(port), '--conns', String(opts.conns)].concat([
      '--chunk',
      String(opts.chunk),
      '--legs',
      opts.legs,
    ]),
    opts.profDir,
  );
  let stop = () => {};
  try {
    const ready = await client.next((m) => m.ready === true);
    if (app !== null) stop = generate(workload, ready.port, opts);
    await sleep(opts.warmup * 1000);
    for (const c of [server, client]) c.proc.send({ cmd: 'start' });
    const t0 = process.hrtime.bigint();
    await sleep(opts.secs * 1000);
    const answers = [server.next((m) => m.cpuUs !== undefined), client.next((m) => m.cpuUs !== undefined)];
    for (const c of [server, client]) c.proc.send({ cmd: 'stop' });
    const [s, c] = await Promise.all(answers);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    return result(workload, secs, workload === 'bulk' ? s.count : c.count, c.cpuUs, s.cpuUs);
  } finally {
    stop();
    app?.close();
    for (const c of [server, client]) if (c.proc.connected) c.proc.send({ cmd: 'exit' });
    await Promise.all(
      [server, client].map((c) => (c.proc.exitCode === null ? new Promise((r) => c.proc.once('exit', r)) : null)),
    );
  }
}

function summary(values) {
  const sorted = [...values].sort((x, y) => x - y);
  const median = sorted[Math.floor(sorted.length / 2)];
  const f = (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
  return `${f(median)} (${f(sorted[0])}–${f(sorted[sorted.length - 1])})`;
}

async function main(argv) {
  const { initCa, issueIdentity } = await load('mtls/ca.js');
  const opts = {
    workloads: arg(argv, '--workloads', 'bulk,rr').split(','),
    secs: Number(arg(argv, '--secs', '3')),
    warmup: Number(arg(argv, '--warmup', '1')),
    reps: Number(arg(argv, '--reps', '5')),
    conns: Number(arg(argv, '--conns', '32')),
    chunk: Number(arg(argv, '--chunk', '65536')),
    candidate: arg(argv, '--candidate', 'meshctl'),
    legs: argv.includes('--candidate') ? 'tcp' : arg(argv, '--legs', 'tunnel'),
    profDir: arg(argv, '--cpu-prof'),
  };
  const root = mkdtempSync(join(tmpdir(), 'meshctl-tunnel-micro-'));
  try {
    await initCa(join(root, 'ca'), { trustDomain: 'bench.test' });
    const dirs = { a: join(root, 'a'), b: join(root, 'b') };
    await issueIdentity({ caDir: join(root, 'ca'), id: 'spiffe://bench.test/sidecar-a', outDir: dirs.a });
    await issueIdentity({ caDir: join(root, 'ca'), id: 'spiffe://bench.test/sidecar-b', outDir: dirs.b });
    const results = [];
    for (let rep = 0; rep < opts.reps; rep++)
      for (const workload of opts.workloads) {
        const r = await repetition(workload, dirs, opts);
        results.push(r);
        process.stderr.write(`${JSON.stringify(r)}\n`);
      }
    if (argv.includes('--json')) console.log(JSON.stringify(results));
    for (const workload of opts.workloads) {
      const rs = results.filter((r) => r.workload === workload);
      if (workload === 'bulk')
        console.log(
          `${opts.legs} legs, ${opts.candidate}, bulk (${opts.chunk} B writes, 1 stream): ${summary(rs.map((r) => r.gbitPerS))} Gbit/s; ` +
            `CPU ${summary(rs.map((r) => r.cpuSPerGb))} s/GB (client ${summary(rs.map((r) => r.clientCpuSPerGb))}, ` +
            `server ${summary(rs.map((r) => r.serverCpuSPerGb))})`,
        );
      else
        console.log(
          `${opts.legs} legs, ${opts.candidate}, rr (64 B, ${opts.conns} streams): ${summary(rs.map((r) => r.opsPerS))} ops/s; ` +
            `CPU ${summary(rs.map((r) => r.cpuUsPerOp))} µs/op (client ${summary(rs.map((r) => r.clientCpuUsPerOp))}, ` +
            `server ${summary(rs.map((r) => r.serverCpuUsPerOp))})`,
        );
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

const argv = process.argv.slice(2);
const role = arg(argv, '--role');
const run = role === 'server' ? serverMain : role === 'client' ? clientMain : main;
run(argv).catch((error) => {
  console.error(error);
  process.exit(1);
});
