// The demo's tiny servers and clients, written to the lab's scratch directory and run with this node inside the
// namespaces. Each client prints one JSON line: what it sent and received, and its own address, so the report can
// match it to the proxy's access-log record for the same connection.

/** `node server.mjs <http|banner|whoami> <host> <port> [host name]`: prints "listening" once bound. */
export const SERVER_SCRIPT = `import net from 'node:net';
const [mode, host, port, name] = [process.argv[2], process.argv[3], Number(process.argv[4]), process.argv[5] ?? 'peer'];
const server = net.createServer((s) => {
  s.on('error', () => {});
  if (mode === 'banner') {
    // Server-first protocol (SMTP-like): the greeting goes out before the client has said anything.
    s.write('220 peer.demo ESMTP ready\\r\\n');
    s.on('data', () => s.end('221 bye\\r\\n'));
    return;
  }
  if (mode === 'whoami') {
    s.end('you reached the app host from ' + s.remoteAddress + ':' + s.remotePort + '\\n');
    return;
  }
  let buf = '';
  s.on('data', (d) => {
    buf += d;
    if (!buf.includes('\\r\\n\\r\\n')) return;
    const body = 'hello from the ' + name + ' host\\n';
    s.end('HTTP/1.1 200 OK\\r\\ncontent-type: text/plain\\r\\ncontent-length: ' + body.length + '\\r\\nconnection: close\\r\\n\\r\\n' + body);
  });
});
server.listen({ host, port }, () => process.stdout.write('listening\\n'));
process.on('SIGTERM', () => process.exit(0));
`;

/** `node client.mjs <http|banner|whoami> <host> <port>`: one connection, one JSON line, exit 0 (1 on error). */
export const CLIENT_SCRIPT = `import net from 'node:net';
const [mode, host, port] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const started = Date.now();
let sent = 0, received = 0, text = '';
const s = net.connect({ host, port });
const send = (data) => { sent += Buffer.byteLength(data); s.write(data); };
s.setTimeout(8000, () => s.destroy(new Error('no answer within 8 s')));
let local = '?';
s.on('connect', () => {
  local = s.localAddress + ':' + s.localPort; // gone once the socket is closed
  if (mode === 'http') send('GET / HTTP/1.1\\r\\nhost: ' + host + '\\r\\nconnection: close\\r\\n\\r\\n');
});
s.on('data', (d) => {
  received += d.length;
  text += d;
  if (mode === 'banner' && sent === 0 && text.includes('\\r\\n')) send('QUIT\\r\\n');
});
s.on('close', () => {
  if (process.exitCode === 1) return;
  process.stdout.write(JSON.stringify({ ok: true, local, sent, received, firstLine: text.split(/\\r?\\n/)[0], lastLine: text.trim().split(/\\r?\\n/).pop(), ms: Date.now() - started }) + '\\n');
});
s.on('error', (e) => {
  process.exitCode = 1;
  process.stdout.write(JSON.stringify({ ok: false, error: e.code ?? e.message, local, sent, received }) + '\\n');
});
`;
