// An agent for test/integration/front-door-native.test.ts, inside a network namespace: relay threads from the
// project's own src/native/addon.ts (createRelay, through kernel-ts-register's hooks) with listening sockets for
// their front door, end records and accepted connections collected for the test; and the clients and echo servers
// of the lab (run as another uid, so the capture rules redirect them). Driven over IPC (agent-core.mjs).
import { register } from 'node:module';
import { connect, createServer, Socket } from 'node:net';
import { readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { runAgent } from './agent-core.mjs';

register('./kernel-ts-hooks.mjs', import.meta.url);
const addon = await import('../../src/native/addon.ts');
const { formatPackedEndpoint } = await import('../../src/proxy/packed-endpoint.ts');

const relays = new Map(); // name -> { relay, records: [], accepted: [] }
const listeners = new Map(); // name -> net.Server whose fd the relays listen on
const servers = new Map(); // name -> { server, peers: [] }
const held = new Map(); // tag -> client socket kept open
let endNames;

function endName(code) {
  endNames ??= new Map(
    [...Object.entries(addon.relayEndCodes()), ...Object.entries(addon.frontDoorEndCodes())].map(([n, c]) => [c, n]),
  );
  return endNames.get(code) ?? `code-${code}`;
}

/** onEnded's batch as plain objects (the details only where the batch has them). */
function decode(name, records, details) {
  const fields = addon.relayRecordFields();
  const detailFields = addon.relayDetailFields();
  const out = [];
  for (let i = 0; i * fields < records.length; i++) {
    const r = records.subarray(i * fields, (i + 1) * fields);
    const rec = {
      relay: name,
      id: r[0],
      fromClient: r[1],
      fromUpstream: r[2],
      end: endName(r[3]),
      side: r[4],
      errno: r[5],
    };
    if (details) {
      const d = details.numbers.subarray(i * detailFields, (i + 1) * detailFields);
      Object.assign(rec, {
        front: d[0],
        listenerId: d[1],
        durationUs: d[2],
        connectUs: d[3],
        flags: d[4],
        // The endpoints come packed (EndDetails.endpoints): printed as the proxy prints them.
        source: formatPackedEndpoint(details.endpoints, i * 3 * addon.relayEndpointBytes()),
        originalDst: formatPackedEndpoint(details.endpoints, (i * 3 + 1) * addon.relayEndpointBytes()),
        upstreamLocal: formatPackedEndpoint(details.endpoints, (i * 3 + 2) * addon.relayEndpointBytes()),
      });
    }
    out.push(rec);
  }
  return out;
}

/** JS's side of an asked connection: say what the thread handed over, then echo until the client's FIN. */
function serveAsked(entry, a) {
  const socket = new Socket({ fd: a.fd, readable: true, writable: true, allowHalfOpen: true });
  socket.on('error', () => {});
  socket.write(`asked ${a.address}:${a.port} family ${a.family} listener ${a.listenerId}\n`);
  socket.on('data', (d) => socket.write(d));
  socket.on('end', () => socket.end());
  entry.accepted.push({ ...a });
}

function errorInfo(error) {
  return { message: error.message, code: error.code, errno: error.errno, syscall: error.syscall, name: error.name };
}

/** One client exchange: connect (from `localPort` if given), send `send`, half-close, read to the end (or an error). */
function exchange({ host, port, send = '', holdTag, localPort, timeoutMs = 10_000 }) {
  return new Promise((resolve) => {
    const socket = connect({ host, port, allowHalfOpen: true, ...(localPort ? { localPort } : {}) });
    const parts = [];
    let local = null;
    const timer = setTimeout(() => socket.destroy(new Error('timed out')), timeoutMs);
    const done = (error) => {
      clearTimeout(timer);
      resolve({ local, received: Buffer.concat(parts).toString(), error: error ? errorInfo(error) : undefined });
    };
    socket.on('connect', () => {
      local = `${socket.localAddress}:${socket.localPort}`;
      if (holdTag) {
        held.set(holdTag, socket);
        socket.once('data', (d) => {
          clearTimeout(timer);
          resolve({ local, received: d.toString() });
        });
        socket.write(send);
        return;
      }
      socket.end(send);
    });
    socket.on('data', (d) => parts.push(d));
    socket.on('error', done);
    socket.on('close', () => done());
  });
}

const ops = {
  async createRelay({ name, sweepMs = 50, withAccepted = true }) {
    const entry = { records: [], accepted: [] };
    const onEnded = (records, details) => entry.records.push(...decode(name, records, details));
    entry.relay = withAccepted
      ? addon.createRelay(onEnded, sweepMs, (batch) => batch.forEach((a) => serveAsked(entry, a)))
      : addon.createRelay(onEnded, sweepMs);
    entry.relay.ref();
    relays.set(name, entry);
    return true;
  },

  async openListener({ name, host, port }) {
    const server = createServer({ pauseOnConnect: true });
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port, backlog: 1024 }, resolve);
    });
    listeners.set(name, server);
    return server._handle.fd;
  },

  /** Node stops watching (and closes its fd); the relays' dups keep the socket listening. */
  async closeListener({ name }) {
    const server = listeners.get(name);
    listeners.delete(name);
    await new Promise((resolve) => server.close(resolve));
    return true;
  },

  async listen({ relay, listenerId, listener, fd, options }) {
    relays.get(relay).relay.listen(listenerId, fd ?? listeners.get(listener)._handle.fd, options);
    return true;
  },

  async unlisten({ relay, listenerId }) {
    return relays.get(relay).relay.unlisten(listenerId);
  },

  async stats({ relay }) {
    return relays.get(relay).relay.stats();
  },

  async list({ relay, limit = 100 }) {
    return relays.get(relay).relay.list(limit);
  },

  async abort({ relay, id, reset }) {
    return relays.get(relay).relay.abort(id, reset);
  },

  async snapshot({ relay, id }) {
    const out = new Float64Array(3);
    return relays.get(relay).relay.snapshot(id, out) ? Array.from(out) : null;
  },

  async records({ relay }) {
    return relays.get(relay).records;
  },

  async accepted({ relay }) {
    return relays.get(relay).accepted;
  },

  async closeRelay({ relay }) {
    relays.get(relay).relay.close();
    relays.delete(relay);
    return true;
  },

  async fdCount() {
    return readdirSync('/proc/self/fd').length;
  },

  async serveEcho({ name, host, port }) {
    const entry = { peers: [] };
    entry.server = createServer({ allowHalfOpen: true }, (s) => {
      entry.peers.push(`${s.remoteAddress}:${s.remotePort}`);
      s.on('error', () => {});
      s.on('data', (d) => s.write(d));
      s.on('end', () => s.end());
    });
    await new Promise((resolve, reject) => {
      entry.server.once('error', reject);
      entry.server.listen({ host, port, backlog: 1024 }, resolve);
    });
    servers.set(name, entry);
    return true;
  },

  async peers({ name }) {
    return servers.get(name).peers;
  },

  exchange,

  /** Connects (from `localPort` if given) and keeps the connection as `tag`, resolving once connected (nothing is sent). */
  async open({ host, port, tag, localPort }) {
    const socket = connect({ host, port, allowHalfOpen: true, ...(localPort ? { localPort } : {}) });
    socket.on('error', () => {});
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    held.set(tag, socket);
    return `${socket.localAddress}:${socket.localPort}`;
  },

  /** Opens one held connection per tag, all at once (a burst: every connect() in the same tick). */
  async openMany({ host, port, tags }) {
    return Promise.all(tags.map((tag) => ops.open({ host, port, tag })));
  },

  /** Pins every thread of this process to one CPU: its relay threads then take turns, as on a busy machine. */
  async pin({ cpu }) {
    execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(process.pid)], { stdio: 'ignore' });
    return true;
  },

  /** Sends `send` on a held connection and returns what comes back first. */
  async heldSend({ tag, send }) {
    const socket = held.get(tag);
    return new Promise((resolve) => {
      socket.once('data', (d) => resolve({ received: d.toString() }));
      socket.once('error', (e) => resolve({ error: errorInfo(e) }));
      socket.write(send);
    });
  },

  /** Ends a held connection and waits for its close; reports an error (a reset) if one came. */
  async heldEnd({ tag, destroy = false }) {
    const socket = held.get(tag);
    held.delete(tag);
    return new Promise((resolve) => {
      let error;
      socket.on('error', (e) => (error = errorInfo(e)));
      socket.on('close', () => resolve({ error }));
      socket.resume();
      if (destroy) socket.destroy();
      else socket.end();
    });
  },

  /** Waits for the held connection to be closed or reset by the other end (answering a FIN with ours). */
  async heldClosed({ tag }) {
    const socket = held.get(tag);
    held.delete(tag);
    if (socket.closed) return { error: socket.errored ? errorInfo(socket.errored) : undefined };
    return new Promise((resolve) => {
      let error;
      let ended = false;
      socket.on('error', (e) => (error = errorInfo(e)));
      socket.on('end', () => {
        ended = true;
        socket.end();
      });
      socket.on('close', () => resolve({ error, ended }));
      socket.resume();
      // The FIN may have come (and 'end' gone by, with nothing buffered) before anyone listened.
      if (socket.readableEnded) {
        ended = true;
        socket.end();
      }
    });
  },

  /** `count` exchanges of `bytes` bytes, `parallel` at a time; every one must echo its bytes back. */
  async churn({ host, port, count, parallel, bytes = 64 }) {
    const payload = 'x'.repeat(bytes);
    let started = 0;
    let done = 0;
    const errors = [];
    const worker = async () => {
      while (started < count) {
        started++;
        const r = await exchange({ host, port, send: payload });
        if (r.error || r.received !== payload) errors.push(r.error?.code ?? `got ${r.received.length} bytes`);
        else done++;
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    return { done, errors: errors.slice(0, 10), errorCount: errors.length };
  },
};

runAgent(ops, errorInfo);
