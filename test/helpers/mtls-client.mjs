// A bare HTTP/2 CONNECT client over TLS 1.3 with given certificate files, run inside a namespace by the mTLS tunnel
// test to present certificates no proxy would (another trust domain, expired): it prints one JSON line saying how
// the tunnel server answered (status, the GOAWAY's reason, or the error).
// Usage: node mtls-client.mjs HOST PORT CERT KEY CA AUTHORITY
import { readFileSync } from 'node:fs';
import { connect } from 'node:http2';
import { connect as tlsConnect } from 'node:tls';

const [host, port, cert, key, ca, authority] = process.argv.slice(2);
const out = { status: null, goaway: null, error: null };
const done = () => {
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(0);
};
setTimeout(done, 5000).unref();
const session = connect(`https://${host}:${port}`, {
  createConnection: () =>
    tlsConnect({
      host,
      port: Number(port),
      cert: readFileSync(cert),
      key: readFileSync(key),
      ca: readFileSync(ca),
      ALPNProtocols: ['h2'],
      minVersion: 'TLSv1.3',
      rejectUnauthorized: false,
      checkServerIdentity: () => undefined,
    }),
});
session.on('goaway', (_code, _last, data) => {
  out.goaway = data?.toString('latin1') ?? '';
  session.destroy();
});
session.on('error', (e) => {
  out.error ??= e.code ?? e.message;
});
session.on('close', done);
const stream = session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
stream.on('response', (h) => {
  out.status = h[':status'];
  session.close();
});
stream.on('error', (e) => {
  out.error ??= e.code ?? e.message;
});
