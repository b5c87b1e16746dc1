// The helper process `meshctl verify` runs inside the namespace under test. Node cannot enter a network namespace,
// so a small agent started with `ip netns exec NS node -e …` does the namespace-bound work: it opens listening
// sockets there and hands them to the parent over the IPC channel (the parent accepts and reads SO_ORIGINAL_DST),
// and it starts probe clients there as a given uid/gid (the owner match uses the creating process's ids).
// The sources below are plain CommonJS run by `node -e`, identical from src/ (vitest) and dist/ (the CLI).
import { spawn, type ChildProcess } from 'node:child_process';
import type { Server } from 'node:net';
import { MeshctlError } from '../errors.js';

/** Runs in a child with dropped privileges: one connection attempt, reported as JSON on stdout. */
const CLIENT_SOURCE = String.raw`
const net = require('net');
const p = JSON.parse(process.env.MESHCTL_PROBE);
let info = { connected: false };
const done = (extra) => { process.stdout.write(JSON.stringify(Object.assign(info, extra))); process.exit(0); };
const s = net.connect({ host: p.host, port: p.port, family: p.family === 'ipv6' ? 6 : 4 });
const timer = setTimeout(() => done(info.connected ? { marker: null } : { error: 'ETIMEDOUT' }), p.timeoutMs);
s.on('connect', () => { info = { connected: true, localAddress: s.localAddress, localPort: s.localPort }; });
s.on('data', (d) => { clearTimeout(timer); done({ marker: String(d) }); });
s.on('end', () => { clearTimeout(timer); done({ marker: null }); });
s.on('error', (e) => { clearTimeout(timer); done({ error: e.code || String(e) }); });
`;

/** Runs as root in the namespace: listens on request (passing the server to the parent) and starts clients. */
const AGENT_SOURCE = String.raw`
const net = require('net');
const { spawn } = require('child_process');
const CLIENT = ${JSON.stringify(CLIENT_SOURCE)};
process.on('message', (m) => {
  if (m.type === 'listen') {
    const server = net.createServer({ pauseOnConnect: true });
    server.once('error', (e) => process.send({ type: 'listened', id: m.id, error: e.code || String(e) }));
    server.listen({ host: m.host, port: m.port, ipv6Only: m.host === '::' }, () => {
      process.send({ type: 'listened', id: m.id }, server, () => server.close());
    });
  } else if (m.type === 'connect') {
    const child = spawn(process.execPath, ['-e', CLIENT], { uid: m.uid, gid: m.gid, stdio: ['ignore', 'pipe', 'pipe'], env: { MESHCTL_PROBE: JSON.stringify(m) } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', (e) => process.send({ type: 'connected', id: m.id, result: { connected: false, error: 'spawn ' + (e.code || String(e)) } }));
    child.on('close', () => {
      let result;
      try { result = JSON.parse(out); } catch { result = { connected: false, error: 'probe client failed: ' + err.trim().split('\n').pop() }; }
      process.send({ type: 'connected', id: m.id, result });
    });
  } else if (m.type === 'exit') {
    process.exit(0);
  }
});
process.send({ type: 'ready' });
`;

export interface ClientResult {
  readonly connected: boolean;
  readonly localAddress?: string;
  readonly localPort?: number;
  /** What the listener wrote back (our marker when the connection reached verify's own listener). */
  readonly marker?: string | null;
  readonly error?: string;
}

export interface ProbeAgent {
  /** Listens on host:port inside the namespace; the server lives in this process. Null with the errno when busy. */
  listen(host: string, port: number): Promise<{ server: Server } | { error: string }>;
  connect(probe: { host: string; port: number; family: 'ipv4' | 'ipv6'; uid: number; gid: number; timeoutMs: number }): Promise<ClientResult>;
  close(): void;
}

/** Starts the agent in `netns` (or here when null). Throws COMMAND_FAILED when it does not come up. */
export async function startProbeAgent(netns: string | null, env: NodeJS.ProcessEnv): Promise<ProbeAgent> {
  const argv = [process.execPath, '-e', AGENT_SOURCE];
  const child: ChildProcess = netns === null
    ? spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env })
    : spawn('ip', ['netns', 'exec', netns, ...argv], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
  const pending = new Map<number, (message: { result?: ClientResult; error?: string }, handle: unknown) => void>();
  let nextId = 1;
  child.on('message', (message: { type: string; id?: number; result?: ClientResult; error?: string }, handle: unknown) => {
    if (message.id !== undefined) {
      const resolve = pending.get(message.id);
      pending.delete(message.id);
      resolve?.(message, handle);
    }
  });
  await new Promise<void>((resolve, reject) => {
    const fail = (why: string) => reject(new MeshctlError('COMMAND_FAILED', `the verify probe agent did not start${netns ? ` in namespace ${netns}` : ''}: ${why}`,
      'check that node can run there (`ip netns exec NS node -v`)', { details: stderr ? [`stderr:  ${stderr.trim()}`] : [] }));
    child.once('error', (e) => fail(e.message));
    child.once('exit', (code) => fail(`exited with ${code}`));
    child.once('message', (m: { type: string }) => (m.type === 'ready' ? resolve() : fail(`unexpected message ${m.type}`)));
  });
  child.removeAllListeners('exit');
  const request = <T>(payload: Record<string, unknown>, map: (message: { result?: ClientResult; error?: string }, handle: unknown) => T): Promise<T> =>
    new Promise((resolve) => {
      const id = nextId++;
      pending.set(id, (message, handle) => resolve(map(message, handle)));
      child.send({ ...payload, id });
    });
  return {
    listen: (host, port) => request({ type: 'listen', host, port }, (m, handle) => (m.error ? { error: m.error } : { server: handle as Server })),
    connect: (probe) => request({ type: 'connect', ...probe }, (m) => m.result ?? { connected: false, error: 'no result' }),
    close() {
      if (child.connected) child.send({ type: 'exit' });
      setTimeout(() => child.kill('SIGKILL'), 2000).unref();
    },
  };
}
