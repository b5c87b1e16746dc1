// A test agent living inside a network namespace (and, for apps, under a non-root uid): real servers and real
// clients driven by the test over the Node IPC channel. Plain JS because it runs under `ip netns exec` + setpriv
// with the system node; test/helpers/proxy-lab.ts starts it and wraps its operations in typed calls.
import { createHash, randomBytes } from 'node:crypto';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer } from 'node:net';
import { performance } from 'node:perf_hooks';
import { runAgent } from './agent-core.mjs';

const servers = new Map(); // name -> { server, records: [] }
const held = new Map(); // tag -> Set<socket>

/** Deterministic-free random payload in 64 KiB chunks, hashed as it is produced. */
function sendRandom(socket, total, hash, done) {
  let left = total;
  const pump = () => {
    while (left > 0) {
      const n = Math.min(65536, left);
      const chunk = randomBytes(n);
      hash.update(chunk);
      left -= n;
      if (!socket.write(chunk)) {
        socket.once('drain', pump);
        return;
      }
    }
    done();
  };
  pump();
}

function errorInfo(error) {
  return {
    message: error.message,
    code: error.code,
    errno: error.errno,
    syscall: error.syscall,
    name: error.name,
    causeCode: error.cause?.code,
    causeErrno: error.cause?.errno,
    causeSyscall: error.cause?.syscall,
  };
}

/** Counts and hashes what the client sends into `record`; `then` runs after the client's EOF. */
function recordInbound(socket, record, then = () => {}) {
  const inHash = createHash('sha256');
  let received = 0;
  socket.on('data', (d) => {
    received += d.length;
    inHash.update(d);
  });
  socket.on('end', () => {
    record.received = received;
    record.receivedHash = inHash.digest('hex');
    then();
  });
}

/** Sends `bytes` random bytes, records their count and hash in `record`, then shuts down the write side. */
function sendRecorded(socket, bytes, record) {
  const outHash = createHash('sha256');
  sendRandom(socket, bytes, outHash, () => {
    record.sentHash = outHash.digest('hex');
    record.sent = bytes;
    socket.end();
  });
}

const serverKinds = {
  echo(socket) {
    socket.pipe(socket);
  },
  banner(socket, opts) {
    socket.write(opts.banner ?? '220 meshctl-lab ESMTP ready\r\n');
    socket.pipe(socket);
  },
  // Reads to EOF, then replies with replyBytes and closes its side.
  'reply-after-eof'(socket, opts, record) {
    recordInbound(socket, record, () => sendRecorded(socket, opts.replyBytes, record));
  },
  // Sends sendBytes and shuts down its write side first; keeps reading until the client's EOF.
  'send-first'(socket, opts, record) {
    recordInbound(socket, record, () => {
      record.clientEndedAt = performance.now();
    });
    sendRecorded(socket, opts.sendBytes, record);
  },
  // Answers the client's first bytes with a reset (RST, not FIN).
  'reset-on-data'(socket, opts, record) {
    socket.once('data', (d) => {
      record.received = d.length;
      socket.resetAndDestroy();
    });
  },
  // Both directions at once: sends sendBytes while reading everything the client sends.
  stream(socket, opts, record) {
    recordInbound(socket, record);
    sendRecorded(socket, opts.sendBytes, record);
  },
};

const ops = {
  /** Listens, connects to `connect` (which the namespace's rules may redirect), and reads the accepted socket's original destination. */
  async originalDst({ listen, connect: target }) {
    const { readOriginalDst } = await import(new URL('../../dist/native/original-dst.js', import.meta.url));
    const server = createServer();
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: listen.host, port: listen.port, ipv6Only: listen.host.includes(':') }, resolve);
    });
    try {
      const accepted = new Promise((resolve) => server.once('connection', resolve));
      const client = connect({ host: target.host, port: target.port });
      client.on('error', () => {});
      const socket = await accepted;
      try {
        return {
          ok: true,
          dst: readOriginalDst(socket),
          local: { address: socket.localAddress, port: socket.localPort },
        };
      } catch (error) {
        return { ok: false, error: errorInfo(error) };
      } finally {
        socket.destroy();
        client.destroy();
      }
    } finally {
      server.close();
    }
  },

  /** Calls the addon's typed loader directly with arbitrary arguments (bad-argument checks). */
  async addonCall({ fd, family }) {
    const { originalDst } = await import(new URL('../../dist/native/addon.js', import.meta.url));
    try {
      return { ok: true, result: originalDst(fd, family) };
    } catch (error) {
      return { ok: false, error: errorInfo(error), isTypeError: error instanceof TypeError };
    }
  },

  async serve({ name, kind, host, port, opts = {} }) {
    const records = [];
    let server;
    if (kind === 'http') {
      server = createHttpServer((req, res) => {
        const body = JSON.stringify({
          path: req.url,
          remote: req.socket.remoteAddress,
          remotePort: req.socket.remotePort,
          local: req.socket.localAddress,
          localPort: req.socket.localPort,
        });
        records.push({ remote: req.socket.remoteAddress, path: req.url });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(body);
      });
    } else {
      server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
        const record = { remote: socket.remoteAddress, remotePort: socket.remotePort, at: performance.now() };
        records.push(record);
        socket.on('error', (e) => {
          record.error = e.code ?? e.message;
        });
        socket.on('close', () => {
          record.closed = true;
        });
        serverKinds[kind](socket, opts, record);
      });
    }
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port, backlog: 4096, ipv6Only: host.includes(':') }, resolve);
    });
    servers.set(name, { server, records });
    return { port: server.address().port };
  },

  async records({ name }) {
    return servers.get(name)?.records ?? [];
  },

  async closeServer({ name }) {
    const s = servers.get(name);
    if (s) await new Promise((resolve) => s.server.close(() => resolve()));
    servers.delete(name);
    return {};
  },

  /** Connects and measures the time from the established connection to the server's first bytes. */
  async banner({ host, port, timeoutMs = 3000 }) {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port });
      let connectedAt = 0;
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error('no banner within timeout'));
      }, timeoutMs);
      socket.on('connect', () => {
        connectedAt = performance.now();
      });
      socket.once('data', (d) => {
        const ms = performance.now() - connectedAt;
        clearTimeout(timer);
        socket.destroy();
        resolve({ banner: d.toString('utf8'), msAfterConnect: ms });
      });
      socket.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  },

  /**
   * One TCP exchange with hashes on both directions. mode: `send-then-read` (write, shut down writing, read to EOF),
   * `read-then-send` (read to EOF, then write and shut down), `concurrent` (both at once).
   */
  async exchange({ host, port, family, sendBytes, mode, timeoutMs = 60000 }) {
    return new Promise((resolve) => {
      const socket = connect({ host, port, family, allowHalfOpen: true, noDelay: true });
      const inHash = createHash('sha256');
      const outHash = createHash('sha256');
      let received = 0;
      let sentHash = null;
      let receivedHash = null;
      let settled = false;
      const started = performance.now();
      const finish = (extra) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({
          sent: sentHash ? sendBytes : 0,
          sentHash,
          received,
          receivedHash,
          ms: performance.now() - started,
          ...extra,
        });
      };
      const timer = setTimeout(() => {
        finish({ error: 'timeout' });
        socket.destroy();
      }, timeoutMs);
      const send = () =>
        sendRandom(socket, sendBytes, outHash, () => {
          sentHash = outHash.digest('hex');
          socket.end();
        });
      socket.on('data', (d) => {
        received += d.length;
        inHash.update(d);
      });
      socket.on('end', () => {
        receivedHash = inHash.digest('hex');
        if (mode === 'read-then-send') send();
      });
      socket.on('error', (e) => finish({ error: e.code ?? e.message }));
      socket.on('close', () => finish({}));
      socket.on('connect', () => {
        if (mode !== 'read-then-send') send();
      });
    });
  },

  /** Connects and reports how the connection ended without sending anything: reset, end (FIN), refused, or timeout. */
  async connectOutcome({ host, port, family, timeoutMs = 5000, send }) {
    return new Promise((resolve) => {
      const started = performance.now();
      const socket = connect({ host, port, family });
      let connected = false;
      let bytes = 0;
      let settled = false;
      const done = (outcome, code) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        resolve({ outcome, code, connected, bytes, ms: performance.now() - started });
      };
      const timer = setTimeout(() => done('timeout'), timeoutMs);
      socket.on('connect', () => {
        connected = true;
        if (send) socket.write(send);
      });
      socket.on('data', (d) => {
        bytes += d.length;
      });
      socket.on('end', () => done('end'));
      socket.on('error', (e) =>
        done(e.code === 'ECONNREFUSED' ? 'refused' : e.code === 'ECONNRESET' ? 'reset' : 'error', e.code),
      );
      socket.on('close', () => done('closed'));
    });
  },

  /**
   * Opens `count` connections to an echo server at once and keeps them; each has echoed `hello` before this resolves.
   * `localPort` binds the (single) connection's source port.
   */
  async hold({ tag, host, port, family, count, localPort, timeoutMs = 30000 }) {
    const set = held.get(tag) ?? new Set();
    held.set(tag, set);
    const errors = [];
    const one = () =>
      new Promise((resolve) => {
        const socket = connect({ host, port, family, noDelay: true, ...(localPort ? { localPort } : {}) });
        let buffer = '';
        const timer = setTimeout(() => {
          errors.push('timeout');
          socket.destroy();
          resolve();
        }, timeoutMs);
        socket.setEncoding('utf8');
        socket.on('error', (e) => {
          socket.heldError = e.code ?? e.message;
        });
        socket.on('close', () => {
          socket.closedAt = performance.now();
        });
        const onData = (d) => {
          buffer += d;
          if (buffer === 'hello\n') {
            socket.off('data', onData);
            clearTimeout(timer);
            set.add(socket);
            resolve();
          }
        };
        socket.on('data', onData);
        socket.on('connect', () => socket.write('hello\n'));
        socket.once('close', () => {
          if (!set.has(socket)) {
            clearTimeout(timer);
            errors.push(socket.heldError ?? 'closed');
            resolve();
          }
        });
      });
    await Promise.all(Array.from({ length: count }, one));
    return { open: set.size, errors };
  },

  /** Sends a line on every held connection and checks that each echoes it back. */
  async pingHeld({ tag, payload = 'ping\n', timeoutMs = 10000 }) {
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
            const timer = setTimeout(() => {
              socket.off('data', onData);
              failures.push('timeout');
              resolve();
            }, timeoutMs);
            const onData = (d) => {
              buffer += d;
              if (buffer === payload) {
                socket.off('data', onData);
                clearTimeout(timer);
                ok++;
                resolve();
              }
            };
            socket.on('data', onData);
            socket.write(payload);
          }),
      ),
    );
    return { ok, failures };
  },

  /** Ends every held connection (FIN) and waits for them to close. */
  async closeHeld({ tag }) {
    const set = held.get(tag) ?? new Set();
    const errors = [];
    await Promise.all(
      [...set].map(
        (socket) =>
          new Promise((resolve) => {
            if (socket.destroyed) {
              resolve();
              return;
            }
            socket.once('close', () => {
              if (socket.heldError) errors.push(socket.heldError);
              resolve();
            });
            socket.end();
          }),
      ),
    );
    held.delete(tag);
    return { errors };
  },

  /** Reports which held connections are still open (not closed by the peer). */
  async heldState({ tag }) {
    const set = held.get(tag) ?? new Set();
    let open = 0;
    const closed = [];
    for (const socket of set) {
      if (socket.destroyed) closed.push(socket.heldError ?? 'closed');
      else open++;
    }
    return { open, closed };
  },

  /** `count` connections all open at once, each sending `bytes` and reading the full echo; then all close. */
  async concurrent({ host, port, family, count, bytes = 1024, timeoutMs = 60000 }) {
    const sockets = [];
    const errors = [];
    let echoed = 0;
    let peakOpen = 0;
    let open = 0;
    let release;
    const barrier = new Promise((resolve) => {
      release = resolve;
    });
    const payload = randomBytes(bytes);
    const one = () =>
      new Promise((resolve) => {
        const socket = connect({ host, port, family, noDelay: true });
        sockets.push(socket);
        let got = 0;
        let failed = false;
        const fail = (why) => {
          if (!failed) {
            failed = true;
            errors.push(why);
            // The others need not wait at the barrier for an echo that will never come: the error is the result.
            release();
          }
        };
        const timer = setTimeout(() => {
          fail('timeout');
          socket.destroy();
        }, timeoutMs);
        socket.on('connect', () => {
          open++;
          peakOpen = Math.max(peakOpen, open);
          socket.write(payload);
        });
        socket.on('data', (d) => {
          got += d.length;
          if (got === bytes) {
            echoed++;
            if (echoed === count) release();
            barrier.then(() => socket.end());
          }
        });
        socket.on('error', (e) => fail(e.code ?? e.message));
        socket.on('close', () => {
          clearTimeout(timer);
          open--;
          if (got !== bytes) fail(`short:${got}`);
          resolve();
        });
      });
    const all = Promise.all(Array.from({ length: count }, one));
    // If some connection fails, the others must not wait forever at the barrier.
    const guard = setTimeout(() => release(), timeoutMs);
    await all;
    clearTimeout(guard);
    return { count, echoed, peakOpen, errors: errors.slice(0, 20), errorCount: errors.length };
  },

  /**
   * Connection churn: `count` short connections, `parallel` at a time, each connecting, writing `bytes`, reading
   * the echo and closing (the cycle that ends relayed pairs while new ones are being handed over).
   */
  async churn({ host, port, family, count, parallel = 32, bytes = 64, timeoutMs = 60000 }) {
    const payload = randomBytes(bytes);
    const errors = [];
    let done = 0;
    let started = 0;
    const one = () =>
      new Promise((resolve) => {
        const socket = connect({ host, port, family, noDelay: true });
        let got = 0;
        const timer = setTimeout(() => {
          errors.push('timeout');
          socket.destroy();
        }, timeoutMs);
        socket.on('connect', () => socket.write(payload));
        socket.on('data', (d) => {
          got += d.length;
          if (got >= bytes) socket.end();
        });
        socket.on('error', (e) => errors.push(e.code ?? e.message));
        socket.on('close', () => {
          clearTimeout(timer);
          if (got === bytes) done++;
          else errors.push(`short:${got}`);
          resolve();
        });
      });
    const lane = async () => {
      while (started < count) {
        started++;
        await one();
      }
    };
    await Promise.all(Array.from({ length: Math.min(parallel, count) }, lane));
    return { count, done, errors: errors.slice(0, 20), errorCount: errors.length };
  },
};

runAgent(ops, errorInfo);
