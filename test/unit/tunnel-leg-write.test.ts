// How a tunnel leg's chunks are written to the TCP socket they are relayed to (src/proxy/tunnel-leg.ts
// writeFromLeg), on a real loopback connection: what one turn of the loop delivers is corked into one write and does
// not ask the relay to pause before 1 MiB waits (Node's 16 KiB mark paused the leg after every TLS record), a socket
// that cannot take more still pauses it and its 'drain' comes, every byte arrives in order, small chunks (RR) go out
// at once.
import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { writeFromLeg } from '../../src/proxy/tunnel-leg.js';

const RECORD = 16 * 1024;

interface Pair {
  readonly writer: Socket;
  readonly reader: Socket;
  readonly server: Server;
}

let open: Pair | null = null;

/** A loopback TCP connection: `writer` is the socket writeFromLeg writes to, `reader` the app's end, paused. */
async function pair(): Promise<Pair> {
  const server = createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const accepted = once(server, 'connection');
  const writer = connect({ host: '127.0.0.1', port });
  await once(writer, 'connect');
  const [reader] = (await accepted) as [Socket];
  open = { writer, reader, server };
  return open;
}

afterEach(() => {
  open?.writer.destroy();
  open?.reader.destroy();
  open?.server.close();
  open = null;
});

/** `length` bytes at `offset` of a stream whose byte k is k % 251 (so a lost, repeated or reordered chunk shows). */
function chunkAt(offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let k = 0; k < length; k++) b[k] = (offset + k) % 251;
  return b;
}

/** Reads from `socket` until `total` bytes came (bounded by `ms`), failing with how many did. */
async function readAll(socket: Socket, total: number, ms = 10_000): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  socket.on('data', (c: Buffer) => {
    parts.push(c);
    got += c.length;
  });
  socket.resume();
  const deadline = Date.now() + ms;
  while (got < total) {
    if (Date.now() > deadline) throw new Error(`read ${got} of ${total} bytes within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return Buffer.concat(parts);
}

describe('writeFromLeg', () => {
  it('does not pause the leg for what one turn delivers, up to 1 MiB corked, and sends it in order', async () => {
    const { writer, reader } = await pair();
    // One turn's worth of records as the tunnel delivers them: ~16 KiB, then the few bytes of the next frame.
    const sizes: number[] = [];
    for (let i = 0; i < 40; i++) sizes.push(RECORD - 9 * (i + 1), 9 * (i + 1));
    const answers: boolean[] = [];
    let offset = 0;
    for (const n of sizes) {
      answers.push(writeFromLeg(writer, chunkAt(offset, n)));
      offset += n;
    }
    expect(writer.writableCorked).toBe(1);
    expect(answers.every((ok) => ok)).toBe(true);
    expect(writer.writableLength).toBe(offset);
    const got = await readAll(reader, offset);
    expect(got.equals(chunkAt(0, offset))).toBe(true);
  });

  it('pauses the leg once 1 MiB waits for a socket that cannot take it, and drains when the app reads', async () => {
    const { writer, reader } = await pair();
    let offset = 0;
    let first = -1;
    for (let i = 0; i < 200 && first < 0; i++) {
      if (!writeFromLeg(writer, chunkAt(offset, RECORD))) first = offset + RECORD;
      offset += RECORD;
    }
    // Refused at the bound, not at Node's 16 KiB mark and not never.
    expect(first).toBeGreaterThanOrEqual(1024 * 1024);
    expect(first).toBeLessThanOrEqual(1024 * 1024 + RECORD);
    const drained = once(writer, 'drain');
    const got = await readAll(reader, offset);
    await drained;
    expect(got.equals(chunkAt(0, offset))).toBe(true);
  });

  it('writes small chunks (RR) at once, uncorked, with Node’s own backpressure', async () => {
    const { writer, reader } = await pair();
    expect(writeFromLeg(writer, chunkAt(0, 64))).toBe(true);
    expect(writer.writableCorked).toBe(0);
    const got = await readAll(reader, 64);
    expect(got.equals(chunkAt(0, 64))).toBe(true);
  });
});
