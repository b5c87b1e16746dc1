// The relay on real loopback sockets, in-process (no namespace): FIN per direction, RST mirroring, backpressure,
// connect failures and the bounds, once with Node streams and once with the addon's relay thread (which also
// gets the cases only it has: abort, max duration, failed handoff). The netns lab repeats the key cases through
// iptables.
import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { constants } from 'node:os';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import type { ProxyConfig } from '../../src/config/types.js';
import { ProxyMetrics } from '../../src/proxy/metrics.js';
import { Connection, type ConnectionOwner } from '../../src/proxy/connection.js';
import { describeEnd, relayBounds, RelayThread } from '../../src/proxy/relay-thread.js';
import {
  checkEndCodes,
  FRONT_DOOR_ENDS,
  frontDoorEndCodes,
  RELAY_ENDS,
  relayEndCodes,
  relayRecordFields,
} from '../../src/native/addon.js';
import { isMeshctlError } from '../../src/errors.js';
import { waitUntil } from '../helpers/wait.js';

type Engine = 'node' | 'native';

const base = configFromObject({ proxy: { user: 'nobody' }, safety: { sshPorts: [22] } }).proxy;

interface Harness {
  proxyPort: number;
  closed: Connection[];
  conns: Connection[];
  metrics: ProxyMetrics;
  whenClosed(n?: number): Promise<Connection>;
  handoffFailures: unknown[];
}

const servers: Server[] = [];
const sockets: Socket[] = [];
const threads: RelayThread[] = [];
afterEach(() => {
  for (const t of threads.splice(0)) t.close();
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0)) s.close();
});

function listen(server: Server): Promise<number> {
  servers.push(server);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** A proxy front door on loopback that relays every accepted socket to 127.0.0.1:upstreamPort. */
async function makeHarness(
  upstreamPort: number,
  cfg: ProxyConfig,
  engine: Engine,
  thread?: RelayThread,
): Promise<Harness> {
  const metrics = new ProxyMetrics();
  const closed: Connection[] = [];
  const conns: Connection[] = [];
  const waiters: (() => void)[] = [];
  const handoffFailures: unknown[] = [];
  let relayThread: RelayThread | null = null;
  if (engine === 'native') {
    relayThread = thread ?? new RelayThread(25);
    threads.push(relayThread);
  }
  const owner: ConnectionOwner = {
    metrics,
    connectionClosed(c) {
      closed.push(c);
      for (const w of waiters.splice(0)) w();
    },
    passthroughSourceMissing() {},
    relayThread,
    relayHandoffFailed(error) {
      handoffFailures.push(error);
    },
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
  return { proxyPort, closed, conns, metrics, whenClosed, handoffFailures };
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

describe.each<[Engine]>([['node'], ['native']])('relay with %s', (engine) => {
  const harness = (port: number, cfg: ProxyConfig = base) => makeHarness(port, cfg, engine);

  it("mirrors the client's FIN: the client shuts down writing and still receives the whole reply", async () => {
    const request = randomBytes(1 << 20);
    const reply = randomBytes(1 << 20);
    let serverGot = '';
    const upstream = createServer({ allowHalfOpen: true }, (s) => {
      void readAll(s).then((data) => {
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
    expect(conn.record()).toMatchObject({
      bytesFromClient: request.length,
      bytesFromUpstream: reply.length,
      result: 'FIN',
    });
  });

  it("mirrors the server's FIN: the server closes first and the client can still send", async () => {
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
    let upstreamGotData = false;
    const upstream = createServer((s) => {
      upstreamError = new Promise((resolve) => s.on('error', resolve));
      s.once('data', () => (upstreamGotData = true));
    });
    const h = await harness(await listen(upstream));
    const c = client(h.proxyPort);
    c.write('x');
    await waitUntil("the client's byte at the upstream (the relay established)", () => upstreamGotData, 10_000, {
      seen: () => h.conns[0]?.state ?? 'no connection accepted',
    });
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
    const conn = await waitUntil(
      'the proxy to relay the first bytes',
      () => (h.conns[0] && h.conns[0].bytesFromClient > 0 ? h.conns[0] : null),
      10_000,
      { seen: () => h.conns[0]?.state ?? 'no connection accepted' },
    );
    // Wait for the proxy's reading to stall (the same count on 5 polls in a row): with backpressure it stops at the
    // buffers' size; an unbounded reader would only stop once it had all 128 MiB, which the bound below refuses.
    let last = -1;
    let steady = 0;
    await waitUntil(
      'the proxy to stop reading from the client',
      () => {
        const now = conn.bytesFromClient;
        steady = now === last ? steady + 1 : 0;
        last = now;
        return steady >= 5;
      },
      10_000,
      { intervalMs: 50, seen: () => `${last} bytes read from the client` },
    );
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
    if (engine === 'node') {
      const t0 = performance.now();
      expect(conn.sweep(t0)).toBeNull(); // records the bytes seen so far as activity at t0
      expect(conn.sweep(t0 + 150)).toBeNull();
      expect(conn.sweep(t0 + 250)).toMatchObject({ detail: 'idle' });
    } else {
      // The thread sweeps on its own (every 25 ms here); the JS sweep leaves relayed connections to it.
      expect(conn.sweep(performance.now() + 10_000)).toBeNull();
    }
    const lastActivity = performance.now();
    await new Promise((r) => c.on('end', r));
    const done = await h.whenClosed();
    expect([done.result, done.detail]).toEqual(['timeout', 'idle']);
    // Never before the bound (less one sweep: the thread dates activity by the sweep that saw it).
    if (engine === 'native') expect(performance.now() - lastActivity).toBeGreaterThanOrEqual(175);
  });

  it('closes a connection left half-closed past halfCloseTimeout', async () => {
    let upstreamGotFin = false;
    const upstream = createServer({ allowHalfOpen: true }, (s) =>
      s.on('data', () => {}).on('end', () => (upstreamGotFin = true)),
    );
    const h = await harness(await listen(upstream), { ...base, halfCloseTimeoutMs: 100 });
    const c = client(h.proxyPort);
    c.end('bye');
    await waitUntil("the client's FIN at the upstream", () => upstreamGotFin, 10_000, {
      seen: () => h.conns[0]?.state ?? 'no connection accepted',
    });
    const conn = h.conns[0]!;
    // The relay thread may already have applied the bound on a loaded machine; until then it is half-closed.
    if (engine === 'node' || conn.state !== 'closed')
      expect(conn.info(performance.now()).state).toMatch(
        engine === 'node' ? /^half-closed$/ : /^(half-closed|closed)$/,
      );
    if (engine === 'node') expect(conn.sweep(performance.now() + 200)).toMatchObject({ detail: 'half-close' });
    const done = await h.whenClosed();
    expect([done.result, done.detail]).toEqual(['timeout', 'half-close']);
  });
});

describe('relay thread only', () => {
  it("hands every established connection to the thread and closes Node's sockets", async () => {
    const upstream = createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
    const h = await makeHarness(await listen(upstream), base, 'native');
    const c = client(h.proxyPort);
    c.write('ping');
    await new Promise((r) => c.once('data', r));
    const conn = h.conns[0]!;
    expect(conn.client).toBeNull();
    expect(conn.upstream).toBeNull();
    expect(conn.info(performance.now())).toMatchObject({
      state: 'open',
      bytesFromClient: 4,
      bytesFromUpstream: 4,
      source: `127.0.0.1:${c.localPort}`,
    });
    c.end();
    const done = await h.whenClosed();
    expect(done.record()).toMatchObject({
      result: 'FIN',
      detail: 'client-first',
      bytesFromClient: 4,
      bytesFromUpstream: 4,
    });
  });

  it('aborts on request: FIN to both peers for a drain, RST for a forced stop', async () => {
    const upstreamEnds: Promise<string>[] = [];
    const upstream = createServer({ allowHalfOpen: true }, (s) => {
      upstreamEnds.push(
        new Promise((resolve) => {
          s.on('end', () => resolve('FIN'));
          s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
        }),
      );
      s.pipe(s);
    });
    const h = await makeHarness(await listen(upstream), base, 'native');
    const gentle = client(h.proxyPort);
    const forced = client(h.proxyPort);
    for (const c of [gentle, forced]) {
      c.write('x');
      await new Promise((r) => c.once('data', r));
    }
    const gentleEnd = new Promise((r) => gentle.on('end', () => r('FIN')));
    const forcedEnd = new Promise((r) => forced.on('error', (e: NodeJS.ErrnoException) => r(e.code)));
    h.conns[0]!.abort('drain', 'deadline', 'close');
    h.conns[1]!.abort('drain', 'forced', 'reset');
    expect(await gentleEnd).toBe('FIN');
    expect(await forcedEnd).toBe('ECONNRESET');
    expect(await upstreamEnds[0]).toBe('FIN');
    expect(await upstreamEnds[1]).toBe('ECONNRESET');
    await h.whenClosed(2);
    expect(h.closed.map((c) => [c.result, c.detail]).sort()).toEqual([
      ['drain', 'deadline'],
      ['drain', 'forced'],
    ]);
  });

  it('ends a connection at maxConnectionDuration although it is busy', async () => {
    const upstream = createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
    const h = await makeHarness(await listen(upstream), { ...base, maxConnectionDurationMs: 300 }, 'native');
    const c = client(h.proxyPort);
    const timer = setInterval(() => c.write('tick'), 20);
    const done = await h.whenClosed();
    clearInterval(timer);
    expect([done.result, done.detail]).toEqual(['timeout', 'max-duration']);
    expect(done.record().bytesFromClient).toBeGreaterThan(0);
    expect(done.record().durationMs).toBeGreaterThanOrEqual(300);
  });

  it('relays 64 MiB each way at once through the thread with equal checksums', async () => {
    const up = randomBytes(64 << 20);
    const down = randomBytes(64 << 20);
    let serverGot: Promise<string> | undefined;
    const upstream = createServer({ allowHalfOpen: true }, (s) => {
      serverGot = readAll(s).then(sha);
      s.end(down);
    });
    const h = await makeHarness(await listen(upstream), base, 'native');
    const c = client(h.proxyPort);
    const got = readAll(c).then(sha);
    c.end(up);
    expect(await got).toBe(sha(down));
    expect(await serverGot).toBe(sha(up));
    const done = await h.whenClosed();
    expect(done.record()).toMatchObject({ result: 'FIN', bytesFromClient: up.length, bytesFromUpstream: down.length });
  });

  it('keeps a connection on Node streams, and says so, when the thread cannot take it', async () => {
    const closedThread = new RelayThread(25);
    closedThread.close();
    const upstream = createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
    const h = await makeHarness(await listen(upstream), base, 'native', closedThread);
    const c = client(h.proxyPort);
    c.write('ping');
    await new Promise((r) => c.once('data', r));
    expect(h.handoffFailures).toHaveLength(1);
    expect(h.conns[0]!.client).not.toBeNull();
    c.end();
    expect((await h.whenClosed()).result).toBe('FIN');
  });

  it('finds a pair adopted a moment ago: snapshot and abort do not miss one the loop has not registered yet', async () => {
    // adopt() only queues the pair; the loop registers it on its next pass. Snapshot and abort register what is
    // queued first, so asking at once, many times over, must always find the pair.
    const accepted: Socket[] = [];
    const server = createServer((s) => accepted.push(s));
    const port = await listen(server);
    const thread = new RelayThread(25);
    threads.push(thread);
    for (let i = 0; i < 50; i++) {
      const a = client(port);
      const b = client(port);
      await Promise.all([a, b].map((s) => new Promise((r) => s.once('connect', r))));
      await waitUntil(`the server to accept pair ${i}`, () => accepted.length >= 2 * (i + 1), 10_000, {
        seen: () => `${accepted.length} accepted`,
        intervalMs: 1,
      });
      const [x, y] = accepted.slice(-2) as [Socket, Socket];
      const fd = (s: Socket) => (s as unknown as { _handle: { fd: number } })._handle.fd;
      const ended = new Promise<unknown[]>((resolve) => {
        const id = thread.adopt({ relayEnded: (...args) => resolve(args) }, fd(x), fd(y), {
          maxRemainingMs: -1,
          idleMs: -1,
          halfCloseMs: -1,
          keepaliveSec: -1,
        });
        expect(thread.snapshot(id)).toEqual({ fromClient: 0, fromUpstream: 0, halfClosed: false });
        expect(thread.abort(id, true)).toBe(true);
        expect(thread.abort(id, true)).toBe(false);
      });
      x.destroy();
      y.destroy();
      const [, , result] = await ended;
      expect(result).toBeNull(); // ended on our own request
      const reset = await Promise.all(
        [a, b].map((s) => new Promise((r) => s.once('error', (e: NodeJS.ErrnoException) => r(e.code)))),
      );
      expect(reset).toEqual(['ECONNRESET', 'ECONNRESET']);
    }
  });

  it('names a pair the thread could not watch: RST with the errno', () => {
    expect(describeEnd(relayEndCodes().adoptFailed, 1, 12)).toEqual({ result: 'RST', detail: 'relay-ENOMEM' });
  });

  it('rounds the remaining max duration up, so the thread never ends a connection before the bound', () => {
    const cfg = {
      maxConnectionDurationMs: 300,
      idleTimeoutMs: null,
      halfCloseTimeoutMs: 60_000,
      keepaliveDelayMs: 30_000,
    };
    expect(relayBounds(cfg, 0.6)).toEqual({ maxRemainingMs: 300, idleMs: -1, halfCloseMs: 60_000, keepaliveSec: 30 });
    expect(relayBounds(cfg, 400).maxRemainingMs).toBe(0);
  });
});

describe('the relay end codes: one table, in the addon', () => {
  it('names every end once with its own code, and relay-thread describes each by name', () => {
    const codes = relayEndCodes();
    expect(Object.keys(codes).sort()).toEqual([...RELAY_ENDS].sort());
    expect(new Set(Object.values(codes)).size).toBe(RELAY_ENDS.length);
    const { ECONNRESET, ECONNREFUSED } = constants.errno;
    expect(RELAY_ENDS.map((end) => [end, describeEnd(codes[end], 1, ECONNRESET)])).toEqual([
      ['fin', { result: 'FIN', detail: 'upstream-first' }],
      ['reset', { result: 'RST', detail: 'upstream-reset' }],
      ['error', { result: 'RST', detail: 'upstream-ECONNRESET' }],
      ['keepalive', { result: 'timeout', detail: 'upstream-keepalive' }],
      ['idle', { result: 'timeout', detail: 'idle' }],
      ['halfClose', { result: 'timeout', detail: 'half-close' }],
      ['maxDuration', { result: 'timeout', detail: 'max-duration' }],
      ['aborted', null],
      ['adoptFailed', { result: 'RST', detail: 'relay-ECONNRESET' }],
    ]);
    // The front door's own ends, in the words the JavaScript accept path uses for the same outcomes.
    const front = frontDoorEndCodes();
    expect(FRONT_DOOR_ENDS.map((end) => [end, describeEnd(front[end], 1, ECONNREFUSED)])).toEqual([
      ['connectFailed', { result: 'connect-failed', detail: 'ECONNREFUSED' }],
      ['connectTimeout', { result: 'timeout', detail: 'connect' }],
      ['selfLoop', { result: 'refused', detail: 'own-uid' }],
      ['notRedirected', { result: 'refused', detail: 'ECONNREFUSED' }],
    ]);
    expect(describeEnd(front.notRedirected, 0, 0)).toEqual({ result: 'refused', detail: 'not-redirected' });
    const unknown = Math.max(...Object.values(codes), ...Object.values(front)) + 1;
    expect(describeEnd(unknown, 0, 0)).toEqual({ result: 'RST', detail: `relay-code-${unknown}` });
  });

  it('writes records of the six fields the worker reads (id, bytes from client and upstream, code, side, errno)', () => {
    expect(relayRecordFields()).toBe(6);
  });

  it('refuses an addon whose table differs from the ends this meshctl knows, naming each difference', () => {
    const codes = relayEndCodes();
    const { adoptFailed: _dropped, ...rest } = codes;
    let caught: unknown;
    try {
      checkEndCodes({ ...rest, reset: codes.fin, renamed: 42, idle: 'four' }, '/x/meshctl_native.node');
    } catch (error) {
      caught = error;
    }
    expect(isMeshctlError(caught) && caught.code).toBe('ADDON_UNAVAILABLE');
    expect((caught as Error).message).toBe(
      'the relay end codes of the native addon at /x/meshctl_native.node do not match this meshctl: ' +
        'no code for "adoptFailed"; an unknown end "renamed"; "idle" is four, not an integer; "reset" repeats code 0',
    );
    expect(checkEndCodes(codes, 'x')).toEqual(codes);
  });
});
