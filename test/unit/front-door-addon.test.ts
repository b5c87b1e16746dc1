// The front door's contract without a namespace (src/native/front_door.cc through createRelay in addon.ts): options
// checked field by field before the addon sees them, system errors with `code` for a socket that does not listen,
// a family that is not the socket's and a table that needs JS without an onAccepted; the end-code tables; and a
// loopback listener with no NAT, whose connections have no original destination and are refused with a record.
import { closeSync, openSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import {
  createRelay,
  FRONT_DOOR_ENDS,
  frontDoorEndCodes,
  relayDetailFields,
  relayEndpointBytes,
  relayEndCodes,
  relayRecordFields,
  type EndDetails,
  type FrontDoorOptions,
  type NativeRelay,
} from '../../src/native/addon.js';
import { formatPackedEndpoint } from '../../src/proxy/packed-endpoint.js';
import { waitUntil } from '../helpers/wait.js';

const options: FrontDoorOptions = {
  direction: 'outbound',
  family: 4,
  passthrough: true,
  ask: [],
  sourceAddress: null,
  selfLoopUid: -1,
  connectTimeoutMs: 1000,
  maxDurationMs: -1,
  idleMs: -1,
  halfCloseMs: -1,
  keepaliveSec: -1,
};

const relays: NativeRelay[] = [];
const servers: Server[] = [];
afterEach(() => {
  for (const r of relays.splice(0)) r.close();
  for (const s of servers.splice(0)) s.close();
});

function relay(onAccepted?: () => void): NativeRelay {
  const r = createRelay(() => {}, 50, onAccepted);
  relays.push(r);
  return r;
}

async function listening(host = '127.0.0.1'): Promise<{ server: Server; fd: number; port: number }> {
  const server = createServer({ pauseOnConnect: true });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  return { server, fd, port: (server.address() as AddressInfo).port };
}

describe('front door options', () => {
  it.each([
    ['direction', { direction: 'sideways' }, 'options.direction'],
    ['family', { family: 5 }, 'options.family'],
    ['passthrough', { passthrough: 'yes' }, 'options.passthrough'],
    ['ask', { ask: 'all' }, 'options.ask'],
    ['an ask address', { ask: [{ address: 'example.com', prefix: 32, port: 0 }] }, 'options.ask[0].address'],
    ['an ask prefix', { ask: [{ address: '10.0.0.0', prefix: 33, port: 0 }] }, 'options.ask[0].prefix'],
    ['an ask port', { ask: [{ address: '::', prefix: 0, port: 70000 }] }, 'options.ask[0].port'],
    ['sourceAddress', { sourceAddress: '127.0.0.6:1' }, 'options.sourceAddress'],
    ['selfLoopUid', { selfLoopUid: -2 }, 'options.selfLoopUid'],
    ['connectTimeoutMs', { connectTimeoutMs: 1.5 }, 'options.connectTimeoutMs'],
    ['keepaliveSec', { keepaliveSec: -3 }, 'options.keepaliveSec'],
  ])('rejects a bad %s with a TypeError naming it', async (_name, change, field) => {
    const { fd } = await listening();
    expect(() => relay().listen(1, fd, { ...options, ...change } as unknown as FrontDoorOptions)).toThrow(
      new RegExp(`^listen: ${field.replace(/[[\].]/g, '\\$&')} must be`),
    );
  });

  it('rejects bad ids and fds before the addon', () => {
    expect(() => relay().listen(-1, 3, options)).toThrow(TypeError);
    expect(() => relay().listen(1, 1.5, options)).toThrow(TypeError);
  });

  it('gives EINVAL for a TCP socket that does not listen, ENOTSOCK for a file', async () => {
    const { port } = await listening();
    const socket = connect({ port, host: '127.0.0.1' });
    await new Promise((resolve) => socket.once('connect', resolve));
    const socketFd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
    expect(() => relay().listen(1, socketFd, options)).toThrow(
      expect.objectContaining({ code: 'EINVAL', syscall: 'listen' }),
    );
    socket.destroy();
    const file = openSync('/dev/null', 'r');
    try {
      expect(() => relay().listen(1, file, options)).toThrow(expect.objectContaining({ code: 'ENOTSOCK' }));
    } finally {
      closeSync(file);
    }
  });

  it('gives EAFNOSUPPORT when family is not the socket\u2019s, and EINVAL when the table needs JS but there is no onAccepted', async () => {
    const { fd } = await listening();
    expect(() => relay().listen(1, fd, { ...options, family: 6 })).toThrow(
      expect.objectContaining({ code: 'EAFNOSUPPORT' }),
    );
    expect(() => relay().listen(1, fd, { ...options, passthrough: false })).toThrow(
      expect.objectContaining({ code: 'EINVAL' }),
    );
    expect(() => relay(() => {}).listen(1, fd, { ...options, passthrough: false })).not.toThrow();
  });

  it('unlisten says whether the id was listening; stats and list start empty', async () => {
    const { fd } = await listening();
    const r = relay();
    expect(r.unlisten(1)).toBe(false);
    r.listen(1, fd, options);
    expect(r.unlisten(1)).toBe(true);
    expect(r.unlisten(1)).toBe(false);
    expect(r.list(10)).toEqual([]);
    expect(r.stats()).toMatchObject({ accepted: 0, asked: 0, connected: 0, open: 0, connecting: 0 });
  });
});

describe('front door end codes', () => {
  it('are a table of their own, distinct from the adopted pairs\u2019 codes', () => {
    const front = frontDoorEndCodes();
    expect(Object.keys(front).sort()).toEqual([...FRONT_DOOR_ENDS].sort());
    const adopted = new Set(Object.values(relayEndCodes()));
    expect(Object.values(front).filter((code) => adopted.has(code))).toEqual([]);
  });
});

describe('front door on loopback without NAT', () => {
  it('refuses a connection that has no original destination, with a notRedirected record', async () => {
    const { server, fd, port } = await listening();
    const seen: { records: number[]; details?: EndDetails }[] = [];
    const r = createRelay((records, details) => seen.push({ records: Array.from(records), details }), 20);
    relays.push(r);
    r.ref();
    r.listen(7, fd, options);
    server.close();
    const error = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
      const c = connect({ port, host: '127.0.0.1' });
      c.on('error', resolve);
      c.on('close', () => resolve(null));
    });
    expect(error?.code).toBe('ECONNRESET');
    const batch = await waitUntil('the notRedirected record', () => seen[0], 5000, { seen: () => seen });
    const codes = frontDoorEndCodes();
    expect(batch.records.slice(3, 6)[0]).toBe(codes.notRedirected);
    const d = batch.details!;
    expect(Array.from(d.numbers.slice(0, relayDetailFields()))).toEqual([1, 7, expect.any(Number), -1, 0]);
    // Packed endpoints: the source (127.0.0.1 and the client's port), then no original destination (family 0).
    const bytes = relayEndpointBytes();
    expect(d.endpoints.length).toBe(3 * bytes);
    expect(formatPackedEndpoint(d.endpoints, 0)).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(Array.from(d.endpoints.subarray(0, 8))).toEqual([
      4,
      0,
      expect.any(Number),
      expect.any(Number),
      127,
      0,
      0,
      1,
    ]);
    expect(formatPackedEndpoint(d.endpoints, bytes)).toBe('');
    expect(r.stats()).toMatchObject({ accepted: 1, notRedirected: 1 });
  });
});

describe('end-record batches', () => {
  /** A relay whose sweep never runs during the test: only the batch tick can deliver what it holds. */
  async function refusing() {
    const { server, fd, port } = await listening();
    const arrivals: { at: number; count: number }[] = [];
    const r = createRelay(
      (records) => arrivals.push({ at: performance.now(), count: records.length / relayRecordFields() }),
      60_000,
    );
    relays.push(r);
    r.ref();
    r.listen(9, fd, options);
    server.close();
    return { r, port, arrivals };
  }

  function refusedConnection(port: number): Promise<void> {
    return new Promise((resolve) => {
      const c = connect({ port, host: '127.0.0.1' });
      c.on('error', () => resolve());
      c.on('close', () => resolve());
    });
  }

  it('delivers the last record of a quiet moment within the ~1 ms tick, not at the next sweep (60 s here)', async () => {
    const { port, arrivals } = await refusing();
    for (let i = 1; i <= 3; i++) {
      await refusedConnection(port);
      const reset = performance.now();
      const got = await waitUntil(`record ${i}`, () => (arrivals.length === i ? arrivals[i - 1] : undefined), 5000, {
        seen: () => arrivals,
      });
      // The reset reaches the client before the record leaves the thread; a loaded machine adds scheduling delay.
      expect(got.at - reset).toBeLessThan(250);
    }
  });

  it('loses none of a burst larger than a batch (64 records at once, the rest at the tick)', async () => {
    const { r, port, arrivals } = await refusing();
    await Promise.all(Array.from({ length: 300 }, () => refusedConnection(port)));
    const total = () => arrivals.reduce((n, a) => n + a.count, 0);
    await waitUntil('300 records', () => (total() === 300 ? true : undefined), 5000, {
      seen: () => ({ total: total(), stats: r.stats() }),
    });
    expect(r.stats()).toMatchObject({ accepted: 300, notRedirected: 300 });
    // Batched: fewer deliveries than records.
    expect(arrivals.length).toBeLessThan(300);
  });
});
