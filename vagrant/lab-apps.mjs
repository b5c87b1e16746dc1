// The lab's apps. `server NAME PORT`: greets each connection with "NAME saw PEER_ADDRESS" and echoes.
// `client HOST PORT`: one connection, prints the greeting. `client HOST PORT loop STOPFILE`: sequential connections
// until STOPFILE exists (at most 60 s), then one JSON line {ok, failed, errors}.
import net from 'node:net';
import { existsSync } from 'node:fs';

const [role, ...args] = process.argv.slice(2);
if (role === 'server') {
  const [name, port] = [args[0], Number(args[1])];
  net.createServer((s) => {
    s.on('error', () => {});
    s.write(`${name} saw ${s.remoteAddress.replace(/^::ffff:/, '')}\n`);
    s.pipe(s);
  }).listen({ port, host: '::' });
} else {
  const [host, port, mode, stopFile] = [args[0], Number(args[1]), args[2], args[3]];
  const once = () => new Promise((resolve) => {
    const s = net.connect({ host, port });
    let buf = '';
    const timer = setTimeout(() => { s.destroy(); resolve({ ok: false, why: 'timeout' }); }, 20000);
    s.on('connect', () => s.write('ping\n'));
    s.on('data', (d) => {
      buf += d;
      const lines = buf.split('\n');
      if (lines.length >= 3) { clearTimeout(timer); s.destroy(); resolve({ ok: lines[1] === 'ping', greeting: lines[0], why: lines[1] }); }
    });
    s.on('error', (e) => { clearTimeout(timer); resolve({ ok: false, why: e.code ?? e.message }); });
  });
  if (mode !== 'loop') {
    const r = await once();
    if (!r.ok) { console.error(`lab-client: ${host}:${port}: ${r.why}`); process.exit(1); }
    console.log(r.greeting);
  } else {
    const started = Date.now();
    const r = { ok: 0, failed: 0, errors: [] };
    while (!existsSync(stopFile) && Date.now() - started < 60000) {
      const one = await once();
      if (one.ok) r.ok++; else { r.failed++; if (r.errors.length < 5) r.errors.push(one.why); }
    }
    console.log(JSON.stringify(r));
  }
}
