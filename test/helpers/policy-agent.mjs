// A test agent for the policy labs, living inside a network namespace (apps run it as uid 1000): endpoint servers
// that name themselves on connect, clients that count which endpoint served them, a control-plane HTTP server with
// ETags and a DNS server (the proxy's own wire codec, from dist/). Driven over IPC by test/helpers/policy-lab.ts.
import { createServer as createHttpServer } from 'node:http';
import { createSocket } from 'node:dgram';
import { connect, createServer } from 'node:net';
import { performance } from 'node:perf_hooks';
import { runAgent } from './agent-core.mjs';

const servers = new Map(); // name -> { close(), records }
const held = new Map(); // tag -> Set<socket>

function errorInfo(error) {
  return { message: error.message, code: error.code, errno: error.errno, syscall: error.syscall };
}

/** Connects, reads the server's first line (its id); resolves { id } or { error } (reset, refused, timeout). */
function dialForId({ host, port, localAddress, timeoutMs = 5000, keep }) {
  return new Promise((resolve) => {
    const started = performance.now();
    const socket = connect({ host, port, noDelay: true, ...(localAddress ? { localAddress } : {}) });
    let buffer = '';
    let settled = false;
    const done = (result) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off('data', onData);
      if (!result.id || !keep) socket.destroy();
      resolve({ ...result, ms: performance.now() - started, socket: result.id && keep ? socket : undefined });
    };
    const timer = setTimeout(() => done({ error: 'timeout' }), timeoutMs);
    const onData = (d) => {
      buffer += d;
      const nl = buffer.indexOf('\n');
      if (nl >= 0) done({ id: buffer.slice(0, nl) });
    };
    socket.setEncoding('utf8');
    socket.on('data', onData);
    socket.on('error', (e) => done({ error: e.code ?? e.message }));
    socket.on('close', () => done({ error: 'closed' }));
  });
}

const ops = {
  /** A TCP server that writes `${id}\n` on every connection, then echoes. Records each accepted connection. */
  async serve({ name, host, port, id }) {
    const sockets = new Set();
    const records = [];
    const server = createServer({ noDelay: true }, (socket) => {
      records.push({ remote: socket.remoteAddress, at: performance.now() });
      sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => sockets.delete(socket));
      socket.write(`${id}\n`);
      socket.pipe(socket);
    });
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port, backlog: 4096, ipv6Only: host.includes(':') }, resolve);
    });
    servers.set(name, {
      records,
      sockets,
      close: () =>
        new Promise((resolve) => {
          for (const s of sockets) s.destroy();
          server.close(() => resolve());
        }),
    });
    return { port: server.address().port };
  },

  async records({ name }) {
    return servers.get(name)?.records ?? [];
  },

  async openCount({ name }) {
    return servers.get(name)?.sockets.size ?? 0;
  },

  async closeServer({ name }) {
    const s = servers.get(name);
    servers.delete(name);
    if (s) await s.close();
    return {};
  },

  /**
   * Dials `count` connections, `concurrency` at a time, each reading the serving endpoint's id. With `hold`, the
   * connections that got an id stay open under that tag. Returns the ids (or `ERR:<code>`) in dial order.
   */
  async dial({ host, port, count, concurrency = 20, localAddress, hold, timeoutMs }) {
    const results = new Array(count);
    const ms = new Array(count);
    let next = 0;
    const set = hold ? (held.get(hold) ?? new Set()) : null;
    if (hold) held.set(hold, set);
    const worker = async () => {
      for (;;) {
        const i = next++;
        if (i >= count) return;
        const r = await dialForId({ host, port, localAddress, timeoutMs, keep: Boolean(hold) });
        results[i] = r.id ?? `ERR:${r.error}`;
        ms[i] = r.ms;
        if (r.socket) {
          r.socket.on('error', (e) => {
            r.socket.heldError = e.code ?? e.message;
          });
          set.add(r.socket);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
    return { ids: results, ms };
  },

  /** Sends a line on every held connection of `tag` and checks the echo (after the id line). */
  async pingHeld({ tag, payload = 'ping\n', timeoutMs = 5000 }) {
    const set = held.get(tag) ?? new Set();
    let ok = 0;
    const failures = [];
    await Promise.all(
      [...set].map(
        (socket) =>
          new Promise((resolve) => {
            if (socket.destroyed) {
              failures.push(`closed:${socket.heldError ?? ''}`);
              resolve();
              return;
            }
            let buffer = '';
            const onData = (d) => {
              buffer += d;
              if (buffer === payload) {
                socket.off('data', onData);
                clearTimeout(timer);
                ok++;
                resolve();
              }
            };
            const timer = setTimeout(() => {
              socket.off('data', onData);
              failures.push('timeout');
              resolve();
            }, timeoutMs);
            socket.on('data', onData);
            socket.write(payload);
          }),
      ),
    );
    return { ok, failures, held: set.size };
  },

  async closeHeld({ tag }) {
    const set = held.get(tag) ?? new Set();
    await Promise.all(
      [...set].map(
        (socket) =>
          new Promise((resolve) => {
            if (socket.destroyed) return resolve();
            socket.once('close', resolve);
            socket.end();
          }),
      ),
    );
    held.delete(tag);
    return {};
  },

  /**
   * Starts one connection every `intervalMs` for `durationMs` (at most `max`), and reports how many were served
   * (got an id line) and how many were refused (reset/closed without one).
   */
  async rate({ host, port, durationMs, intervalMs, localAddress, max = 5000 }) {
    const started = performance.now();
    const pending = [];
    let n = 0;
    while (performance.now() - started < durationMs && n < max) {
      const due = started + n * intervalMs;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      if (performance.now() - started >= durationMs) break;
      pending.push(dialForId({ host, port, localAddress, timeoutMs: 3000 }));
      n++;
    }
    const results = await Promise.all(pending);
    const served = results.filter((r) => r.id).length;
    const errors = {};
    for (const r of results) if (!r.id) errors[r.error] = (errors[r.error] ?? 0) + 1;
    return { attempts: results.length, served, errors, elapsedMs: performance.now() - started };
  },

  /** An HTTP server serving one document with an ETag (304 on If-None-Match); `setDocument` changes it. */
  async serveDocument({ name, host, port, body, etag, status = 200 }) {
    const state = { body, etag, status, requests: [] };
    const server = createHttpServer((req, res) => {
      const inm = req.headers['if-none-match'] ?? null;
      state.requests.push({ at: Date.now(), ifNoneMatch: inm });
      if (state.status !== 200) {
        res.writeHead(state.status, { 'content-type': 'text/plain' });
        res.end('control plane unavailable\n');
        return;
      }
      if (state.etag && inm === state.etag) {
        res.writeHead(304, { etag: state.etag });
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json', ...(state.etag ? { etag: state.etag } : {}) });
      res.end(state.body);
    });
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, resolve);
    });
    servers.set(name, {
      records: state.requests,
      state,
      sockets: new Set(),
      close: () =>
        new Promise((resolve) => {
          server.closeAllConnections?.();
          server.close(() => resolve());
        }),
    });
    return {};
  },

  async setDocument({ name, body, etag, status }) {
    const s = servers.get(name).state;
    if (body !== undefined) s.body = body;
    if (etag !== undefined) s.etag = etag;
    if (status !== undefined) s.status = status;
    return {};
  },

  /**
   * A DNS server (UDP and TCP) answering from `zone`: { name: { ttl, A: [...], AAAA: [...], SRV: [{ priority,
   * weight, port, target }] } }; other names get NXDOMAIN. `setZone` replaces the zone; queries are recorded.
   */
  async serveDns({ name, host, port = 53, zone }) {
    const { RR, RCODE, decodeMessage, encodeMessage } = await import(
      new URL('../../dist/policy/dns-wire.js', import.meta.url)
    );
    const state = { zone, queries: [] };
    const answer = (buf) => {
      const q = decodeMessage(buf);
      const question = q.questions[0];
      state.queries.push({ name: question.name, type: question.type, at: performance.now() });
      const entry = state.zone[question.name];
      const records = [];
      if (entry) {
        const ttl = entry.ttl ?? 60;
        if (question.type === RR.A)
          for (const address of entry.A ?? []) records.push({ name: question.name, ttl, type: RR.A, address });
        if (question.type === RR.AAAA)
          for (const address of entry.AAAA ?? []) records.push({ name: question.name, ttl, type: RR.AAAA, address });
        if (question.type === RR.SRV)
          for (const s of entry.SRV ?? []) records.push({ name: question.name, ttl, type: RR.SRV, ...s });
      }
      return encodeMessage({
        id: q.id,
        response: true,
        rcode: entry ? RCODE.NOERROR : RCODE.NXDOMAIN,
        questions: q.questions,
        answers: records,
      });
    };
    const udp = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    udp.on('message', (buf, rinfo) => {
      try {
        udp.send(answer(buf), rinfo.port, rinfo.address);
      } catch {
        // malformed query: no answer
      }
    });
    await new Promise((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(port, host, resolve);
    });
    const tcp = createServer((socket) => {
      let data = Buffer.alloc(0);
      socket.on('error', () => {});
      socket.on('data', (d) => {
        data = Buffer.concat([data, d]);
        while (data.length >= 2 && data.length >= 2 + data.readUInt16BE(0)) {
          const reply = answer(data.subarray(2, 2 + data.readUInt16BE(0)));
          data = data.subarray(2 + data.readUInt16BE(0));
          const framed = Buffer.alloc(reply.length + 2);
          framed.writeUInt16BE(reply.length, 0);
          reply.copy(framed, 2);
          socket.write(framed);
        }
      });
    });
    await new Promise((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen({ host, port }, resolve);
    });
    servers.set(name, {
      records: state.queries,
      state,
      sockets: new Set(),
      close: () =>
        new Promise((resolve) => {
          udp.close();
          tcp.close(() => resolve());
        }),
    });
    return {};
  },

  async setZone({ name, zone }) {
    servers.get(name).state.zone = zone;
    return {};
  },
};

runAgent(ops, errorInfo);
