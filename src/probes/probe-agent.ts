// The helper process `meshctl verify` runs inside the namespace under test. Node cannot enter a network namespace,
// so a small agent started with `ip netns exec NS node -e …` does the namespace-bound work: it opens listening
// sockets there and hands them to the parent over the IPC channel (the parent accepts and reads SO_ORIGINAL_DST),
// it starts probe clients there as a given uid/gid (the owner match uses the creating process's ids), and it asks
// a running proxy's admin API (on the namespace's loopback) about a probe's connection.
// A probe client binds its source address and port before it connects, so the source is known even when the
// connection is reset before connect() returns; after reporting, it keeps its connection open until the agent
// exits, so that a proxy still holds it (in its live table) when verify asks about it.
// The sources below are plain CommonJS run by `node -e`, identical from src/ (vitest) and dist/ (the CLI).
import { spawn, type ChildProcess } from 'node:child_process';
import type { Server } from 'node:net';
import { MeshctlError } from '../errors.js';

/**
 * Runs in a child with dropped privileges: one connection attempt, reported as one JSON line on stdout; then it
 * holds the connection until its stdin ends (the agent exited) or HOLD_MS pass.
 */
const CLIENT_SOURCE = String.raw`
const net = require('net');
const dgram = require('dgram');
const p = JSON.parse(process.env.MESHCTL_PROBE);
const HOLD_MS = 30000;
const family = p.family === 'ipv6' ? 6 : 4;
let info = { connected: false };
let reported = false;
let timer = null;
const done = (extra) => {
  if (reported) return;
  reported = true;
  clearTimeout(timer);
  process.stdout.write(JSON.stringify(Object.assign(info, extra)) + '\n');
  process.stdin.on('end', () => process.exit(0)).on('error', () => process.exit(0)).resume();
  setTimeout(() => process.exit(0), HOLD_MS);
};
// The address routing picks for the destination (connecting a UDP socket sends nothing), and a free port.
const sourceAddress = (next) => {
  const u = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
  u.on('error', () => { u.close(); next(null); });
  u.connect(p.port, p.host, () => { const a = u.address().address; u.close(); next(a); });
};
const freePort = (address, next) => {
  const server = net.createServer();
  server.on('error', () => next(null));
  server.listen({ host: address, port: 0, exclusive: true }, () => { const port = server.address().port; server.close(() => next(port)); });
};
const start = (address, port, attempt) => {
  const bound = address !== null && port !== null;
  if (bound) info = { connected: false, localAddress: address, localPort: port };
  const s = net.connect(Object.assign({ host: p.host, port: p.port, family }, bound ? { localAddress: address, localPort: port } : {}));
  timer = setTimeout(() => done(info.connected ? { marker: null } : { error: 'ETIMEDOUT' }), p.timeoutMs);
  s.on('connect', () => { info = { connected: true, localAddress: s.localAddress, localPort: s.localPort }; });
  s.on('data', (d) => done({ marker: String(d) }));
  s.on('end', () => done({ marker: null }));
  s.on('error', (e) => {
    // Another process took the port between freePort() and bind(): take another one.
    if (bound && e.code === 'EADDRINUSE' && attempt < 5 && !reported) {
      clearTimeout(timer);
      return freePort(address, (next) => start(address, next, attempt + 1));
    }
    done({ error: e.code || String(e) });
  });
};
sourceAddress((address) => (address === null ? start(null, null, 0) : freePort(address, (port) => start(address, port, 0))));
`;

/** Runs in a child with dropped privileges: one DNS query (base64) over UDP or TCP; the answer (base64) as one JSON line. */
const DNS_CLIENT_SOURCE = String.raw`
const net = require('net');
const dgram = require('dgram');
const p = JSON.parse(process.env.MESHCTL_PROBE);
const query = Buffer.from(p.query, 'base64');
const done = (r) => { process.stdout.write(JSON.stringify(r) + '\n'); process.exit(0); };
setTimeout(() => done({ error: 'ETIMEDOUT' }), p.timeoutMs);
if (p.transport === 'udp') {
  const u = dgram.createSocket(p.family === 'ipv6' ? 'udp6' : 'udp4');
  u.on('error', (e) => done({ error: e.code || String(e) }));
  u.on('message', (m) => done({ answer: m.toString('base64') }));
  u.send(query, p.port, p.host);
} else {
  const s = net.connect({ host: p.host, port: p.port });
  let data = Buffer.alloc(0);
  s.on('connect', () => { const h = Buffer.alloc(2); h.writeUInt16BE(query.length, 0); s.write(Buffer.concat([h, query])); });
  s.on('error', (e) => done({ error: e.code || String(e) }));
  s.on('data', (d) => {
    data = Buffer.concat([data, d]);
    if (data.length >= 2 && data.length >= 2 + data.readUInt16BE(0)) done({ answer: data.subarray(2, 2 + data.readUInt16BE(0)).toString('base64') });
  });
}
`;

/** Runs as root in the namespace: listens on request (passing the server to the parent) and starts clients. */
const AGENT_SOURCE = String.raw`
const net = require('net');
const http = require('http');
const { spawn } = require('child_process');
const CLIENT = ${JSON.stringify(CLIENT_SOURCE)};
const DNS_CLIENT = ${JSON.stringify(DNS_CLIENT_SOURCE)};
process.on('message', (m) => {
  if (m.type === 'listen') {
    const server = net.createServer({ pauseOnConnect: true });
    server.once('error', (e) => process.send({ type: 'listened', id: m.id, error: e.code || String(e) }));
    server.listen({ host: m.host, port: m.port, ipv6Only: m.host === '::' }, () => {
      process.send({ type: 'listened', id: m.id }, server, () => server.close());
    });
  } else if (m.type === 'connect') {
    const child = spawn(process.execPath, ['-e', CLIENT], { uid: m.uid, gid: m.gid, stdio: ['pipe', 'pipe', 'pipe'], env: { MESHCTL_PROBE: JSON.stringify(m) } });
    let out = '';
    let err = '';
    let sent = false;
    const reply = (result) => { if (!sent) { sent = true; process.send({ type: 'connected', id: m.id, result }); } };
    child.stdin.on('error', () => {});
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.indexOf('\n');
      if (line < 0) return;
      try { reply(JSON.parse(out.slice(0, line))); } catch { reply({ connected: false, error: 'probe client wrote ' + out.slice(0, line) }); }
    });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', (e) => reply({ connected: false, error: 'spawn ' + (e.code || String(e)) }));
    child.on('close', () => reply({ connected: false, error: 'probe client failed: ' + err.trim().split('\n').pop() }));
  } else if (m.type === 'dns') {
    const child = spawn(process.execPath, ['-e', DNS_CLIENT], { uid: m.uid, gid: m.gid, stdio: ['ignore', 'pipe', 'pipe'], env: { MESHCTL_PROBE: JSON.stringify(m) } });
    let out = '';
    let err = '';
    let sent = false;
    const reply = (result) => { if (!sent) { sent = true; process.send({ type: 'answered', id: m.id, result }); } };
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', (e) => reply({ error: 'spawn ' + (e.code || String(e)) }));
    child.on('close', () => { try { reply(JSON.parse(out)); } catch { reply({ error: 'dns probe client failed: ' + err.trim().split('\n').pop() }); } });
  } else if (m.type === 'get') {
    const req = http.get({ host: m.host, port: m.port, path: m.path, timeout: m.timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d) => { body += d; });
      res.on('end', () => process.send({ type: 'got', id: m.id, result: { status: res.statusCode, body } }));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
    req.on('error', (e) => process.send({ type: 'got', id: m.id, error: e.code || String(e) }));
  } else if (m.type === 'exit') {
    process.exit(0);
  }
});
process.send({ type: 'ready' });
`;

export interface ClientResult {
  readonly connected: boolean;
  /** The client's source, bound before connecting (absent only when no source could be bound). */
  readonly localAddress?: string;
  readonly localPort?: number;
  /** What the listener wrote back (our marker when the connection reached verify's own listener). */
  readonly marker?: string | null;
  readonly error?: string;
}

export interface ProbeAgent {
  /** Listens on host:port inside the namespace; the server lives in this process. Null with the errno when busy. */
  listen(host: string, port: number): Promise<{ server: Server } | { error: string }>;
  /** One probe connection; the client holds it open until close(). */
  connect(probe: {
    host: string;
    port: number;
    family: 'ipv4' | 'ipv6';
    uid: number;
    gid: number;
    timeoutMs: number;
  }): Promise<ClientResult>;
  /** One DNS query (a whole message) to host:port as uid/gid over UDP or TCP: the answer message, or the errno. */
  dns(probe: {
    host: string;
    port: number;
    family: 'ipv4' | 'ipv6';
    transport: 'udp' | 'tcp';
    uid: number;
    gid: number;
    query: Buffer;
    timeoutMs: number;
  }): Promise<{ answer: Buffer } | { error: string }>;
  /** An HTTP GET from inside the namespace (as root): the status and body, or the errno of a failed request. */
  get(
    host: string,
    port: number,
    path: string,
    timeoutMs: number,
  ): Promise<{ status: number; body: string } | { error: string }>;
  /** Ends the agent and with it every probe client still holding a connection. */
  close(): void;
}

/** Starts the agent in `netns` (or here when null). Throws COMMAND_FAILED when it does not come up. */
export async function startProbeAgent(netns: string | null, env: NodeJS.ProcessEnv): Promise<ProbeAgent> {
  const argv = [process.execPath, '-e', AGENT_SOURCE];
  const child: ChildProcess =
    netns === null
      ? spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env })
      : spawn('ip', ['netns', 'exec', netns, ...argv], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  type Reply = { result?: ClientResult | { status: number; body: string }; error?: string };
  const pending = new Map<number, (message: Reply, handle: unknown) => void>();
  let nextId = 1;
  child.on('message', (message: Reply & { type: string; id?: number }, handle: unknown) => {
    if (message.id !== undefined) {
      const resolve = pending.get(message.id);
      pending.delete(message.id);
      resolve?.(message, handle);
    }
  });
  await new Promise<void>((resolve, reject) => {
    const fail = (why: string) =>
      reject(
        new MeshctlError(
          'COMMAND_FAILED',
          `the verify probe agent did not start${netns ? ` in namespace ${netns}` : ''}: ${why}`,
          'check that node can run there (`ip netns exec NS node -v`)',
          { details: stderr ? [`stderr:  ${stderr.trim()}`] : [] },
        ),
      );
    child.once('error', (e) => fail(e.message));
    child.once('exit', (code) => fail(`exited with ${code}`));
    child.once('message', (m: { type: string }) =>
      m.type === 'ready' ? resolve() : fail(`unexpected message ${m.type}`),
    );
  });
  child.removeAllListeners('exit');
  const request = <T>(payload: Record<string, unknown>, map: (message: Reply, handle: unknown) => T): Promise<T> =>
    new Promise((resolve) => {
      const id = nextId++;
      pending.set(id, (message, handle) => resolve(map(message, handle)));
      child.send({ ...payload, id });
    });
  return {
    listen: (host, port) =>
      request({ type: 'listen', host, port }, (m, handle) =>
        m.error ? { error: m.error } : { server: handle as Server },
      ),
    connect: (probe) =>
      request(
        { type: 'connect', ...probe },
        (m) => (m.result as ClientResult | undefined) ?? { connected: false, error: 'no result' },
      ),
    dns: (probe) =>
      request({ type: 'dns', ...probe, query: probe.query.toString('base64') }, (m) => {
        const r = m.result as { answer?: string; error?: string } | undefined;
        return r?.answer !== undefined
          ? { answer: Buffer.from(r.answer, 'base64') }
          : { error: r?.error ?? m.error ?? 'no result' };
      }),
    get: (host, port, path, timeoutMs) =>
      request({ type: 'get', host, port, path, timeoutMs }, (m) =>
        m.error !== undefined || m.result === undefined
          ? { error: m.error ?? 'no result' }
          : (m.result as { status: number; body: string }),
      ),
    close() {
      if (child.connected) child.send({ type: 'exit' });
      setTimeout(() => child.kill('SIGKILL'), 2000).unref();
    },
  };
}
