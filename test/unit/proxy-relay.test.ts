// The relay on real loopback sockets, in-process (no namespace, no addon): FIN per direction, RST mirroring,
// backpressure, connect failures and the sweep's bounds. The netns lab repeats the key cases through iptables.
import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import type { ProxyConfig } from '../../src/config/types.js';
import { ProxyMetrics } from '../../src/proxy/metrics.js';
import { Connection, type ConnectionOwner } from '../../src/proxy/relay.js';

const base = configFromObject({ proxy: { user: 'nobody' }, safety: { sshPorts: [22] } }).proxy;

interface Harness {
  proxyPort: number;
  closed: Connection[];
  conns: Connection[];
  metrics: ProxyMetrics;
  whenClosed(n?: number): Promise<Connection>;
}

const servers: Server[] = [];
const sockets: Socket[] = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0)) s.close();
});

function listen(server: Server): Promise<number> {
  servers.push(server);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** A proxy front door on loopback that relays every accepted socket to 127.0.0.1:upstreamPort. */
async function harness(upstreamPort: number, cfg: ProxyConfig = base): Promise<Harness> {
  const metrics = new ProxyMetrics();
  const closed: Connection[] = [];
  const conns: Connection[] = [];
  const waiters: (() => void)[] = [];
  const owner: ConnectionOwner = {
    metrics,
    connectionClosed(c) {
      closed.push(c);
      for (const w of waiters.splice(0)) w();
    },
    passthroughSourceMissing() {},
  };
  const front = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) => {
    metrics.accepted('outbound');
    const conn = new Connection(`t.${conns.length + 1}`, 'outbound', socket, cfg, owner);
    conns.push(conn);
    conn.connect({ kind: 'connect', host: '127.0.0.1', port: upstreamPort, localAddress: null });
  });
  const proxyPort = await listen(front);
  const whenClosed = async (n = 1) => {
    while (closed.length < n) await new Promise<void>((r) => waiters.push(r));
    return closed[n - 1]!;
  };
  return { proxyPort, closed, conns, metrics, whenClosed };
}

function client(port: number): Socket {
  const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  sockets.push(s);
  return s;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function readAll(socket: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    socket.on('data', (d: Buffer) => parts.push(d));
    socket.on('end', () => resolve(Buffer.concat(parts)));
    socket.on('error', reject);
  });
}

describe('relay', () => {
  it('mirrors the client\'s FIN: the client shuts down writing and still receives the whole reply', async () => {
    const request = randomBytes(1 << 20);
    const reply = randomBytes(1 << 20);
    let serverGot = '';
    const upstream = createServer({ allowHalfOpen: true }, (s) => {
      readAll(s).then((data) => {
        serverGot = sha(data);
        s.end(reply);
      });
    });
    const h = await harness(await listen(upstream));
    const c = client(h.proxyPort);
    c.end(request);
    const got = await readAll(c);
    expect(sha(got)).toBe(sha(reply));
    expect(serverGot).toBe(sha(request));
    const conn = await h.whenClosed();
    expect(conn.result).toBe('FIN');
    expect(conn.detail).toBe('client-first');
    expect(conn.record()).toMatchObject({ bytesFromClient: request.length, bytesFromUpstream: reply.length, result: 'FIN' });
  });

  it('mirrors the server\'s FIN: the server closes first and the client can still send', async () => {
    const hello = randomBytes(300_000);
    const late = randomBytes(500_000);
    let serverGot: Promise<string> | undefined;
    const upstream = createServer({ allowHalfOpen: true }, (s) => {
      s.end(hello);
      serverGot = readAll(s).then(sha);
    });
    const h = await harness(await listen(upstream));
    const c = client(h.proxyPort);
    const got = await readAll(c);
    expect(sha(got)).toBe(sha(hello));
    c.end(late);
    const conn = await h.whenClosed();
    expect(await serverGot).toBe(sha(late));
    expect(conn.result).toBe('FIN');
    expect(conn.detail).toBe('upstream-first');
  });

  it('mirrors an upstream RST to the client as a reset', async () => {
    const upstream = createServer((s) => s.once('data', () => s.resetAndDestroy()));
    const h = await harness(await listen(upstream));
    const c = client(h.proxyPort);
    c.write('x');
    const error = await new Promise<NodeJS.ErrnoException>((resolve) => c.on('error', resolve));
    expect(error.code).toBe('ECONNRESET');
    const conn = await h.whenClosed();
    expect([conn.result, conn.detail]).toEqual(['RST', 'upstream-reset']);
  });

  it('mirrors a client RST to the upstream as a reset', async () => {
    let upstreamError: Promise<NodeJS.ErrnoException> | undefined;
    const upstream = createServer((s) => {
      upstreamError = new Promise((resolve) => s.on('error', resolve));
      s.once('data', () => {});
    });
    const h = await harness(await listen(upstream));
    const c = client(h.proxyPort);
    c.write('x');
    await new Promise((r) => setTimeout(r, 50));
    c.resetAndDestroy();
    const conn = await h.whenClosed();
    expect([conn.result, conn.detail]).toEqual(['RST', 'client-reset']);
    expect((await upstreamError!).code).toBe('ECONNRESET');
  });

  it('resets the client at once when the upstream refuses the connection', async () => {
    const closedPort = await listen(createServer());
    servers.pop()!.close();
    const h = await harness(closedPort);
    const c = client(h.proxyPort);
    const started = performance.now();
    const error = await new Promise<NodeJS.ErrnoException>((resolve) => c.on('error', resolve));
    expect(error.code).toBe('ECONNRESET');
    expect(performance.now() - started).toBeLessThan(1000);
    const conn = await h.whenClosed();
    expect([conn.result, conn.detail]).toEqual(['connect-failed', 'ECONNREFUSED']);
    expect(h.metrics.snapshot().directions.outbound.closed['connect-failed']).toBe(0); // the harness owner does not count closes
  });

  it('honours backpressure: a stalled upstream stops the proxy reading from the client', async () => {
    let upstreamSocket: Socket | undefined;
    const upstream = createServer((s) => {
      upstreamSocket = s;
      s.pause();
    });
    const h = await harness(await listen(upstream));
    const c = client(h.proxyPort);
    // Queue 128 MiB at once: without backpressure the proxy would read all of it within the wait below.
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < 128; i++) c.write(chunk);
    await new Promise((r) => setTimeout(r, 500));
    const conn = h.conns[0]!;
    // Kernel socket buffers plus one stream highWaterMark per leg; nowhere near what the client tried to send.
    expect(conn.bytesFromClient).toBeGreaterThan(0);
    expect(conn.bytesFromClient).toBeLessThan(32 << 20);
    expect(c.writableLength).toBeGreaterThan(64 << 20);
    upstreamSocket!.destroy();
    c.destroy();
  });

  it('closes a connection idle past idleTimeout on the next sweep, and not before', async () => {
    const upstream = createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
    const h = await harness(await listen(upstream), { ...base, idleTimeoutMs: 200 });
    const c = client(h.proxyPort);
    c.write('ping');
    await new Promise((r) => c.once('data', r));
    const conn = h.conns[0]!;
    const t0 = performance.now();
    expect(conn.sweep(t0)).toBeNull(); // records the bytes seen so far as activity at t0
    expect(conn.sweep(t0 + 150)).toBeNull();
    expect(conn.sweep(t0 + 250)).toMatchObject({ detail: 'idle' });
    await new Promise((r) => c.on('end', r));
    expect((await h.whenClosed()).result).toBe('timeout');
  });

  it('closes a connection left half-closed past halfCloseTimeout', async () => {
    const upstream = createServer({ allowHalfOpen: true }, (s) => s.on('data', () => {}));
    const h = await harness(await listen(upstream), { ...base, halfCloseTimeoutMs: 100 });
    const c = client(h.proxyPort);
    c.end('bye');
    await new Promise((r) => setTimeout(r, 50));
    const conn = h.conns[0]!;
    expect(conn.state).toBe('half-closed');
    expect(conn.sweep(performance.now() + 200)).toMatchObject({ detail: 'half-close' });
    const done = await h.whenClosed();
    expect([done.result, done.detail]).toEqual(['timeout', 'half-close']);
  });
});
