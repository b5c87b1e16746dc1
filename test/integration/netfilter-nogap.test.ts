// No gap during re-install: while an ordinary uid opens connections in a loop (IPv4 and IPv6, one after the other),
// the config is re-applied 20 times (50 in npm run test:soak), alternating between two configs that both capture
// the destination. Every connection must arrive at the (stand-in) proxy port: none may reach the real destination,
// none may fail.
import { once } from 'node:events';
import { afterAll, describe, expect, it } from 'vitest';
import { installCapture } from '../../src/netfilter/install.js';
import { uninstallCapture } from '../../src/netfilter/uninstall.js';
import { integrationEnabled } from '../helpers/integration.js';
import { createVethPair, inNs, sh, spawnInNs } from '../helpers/netns.js';
import { BACKEND_SHORT, BACKENDS, labConfig, labEnv, labNamespaces, tempStateDir } from '../helpers/netfilter-lab.js';
import { soakCount } from '../helpers/soak.js';
import { waitUntil } from '../helpers/wait.js';

const REAPPLIES = soakCount(20, 50);
import type { ChildProcess } from 'node:child_process';

/** Listens on each host:port and answers every connection with one tag byte. Prints "ready" once listening. */
const TAG_SERVER = String.raw`
const net = require('net');
const specs = JSON.parse(process.argv[1]);
let pending = specs.length;
for (const { host, port, tag } of specs) {
  net.createServer((s) => { s.on('error', () => {}); s.end(tag); })
    .listen({ host, port, ipv6Only: host.includes(':') }, () => { if (--pending === 0) console.log('ready'); });
}
`;

/** Connects in a loop, alternating targets, until stdin closes; prints {tags, errors, total} as JSON. */
const CLIENT_LOOP = String.raw`
const net = require('net');
const targets = JSON.parse(process.argv[1]);
const tags = {}; const errors = []; let total = 0; let stop = false;
process.stdin.on('end', () => { stop = true; }); process.stdin.resume();
const one = (t) => new Promise((resolve) => {
  const s = net.connect({ host: t.host, port: t.port });
  const timer = setTimeout(() => { errors.push(t.host + ' timeout'); s.destroy(); resolve(); }, 3000);
  let got = '';
  s.on('data', (d) => { got += d; });
  s.on('end', () => { clearTimeout(timer); tags[got] = (tags[got] || 0) + 1; resolve(); });
  s.on('error', (e) => { clearTimeout(timer); errors.push(t.host + ' ' + e.code); resolve(); });
});
(async () => {
  console.log('started');
  // A short pause between connections leaves CPU to the re-installs; a connection still starts every few ms.
  for (let i = 0; !stop; i++) { await one(targets[i % targets.length]); total++; await new Promise((r) => setTimeout(r, 2)); }
  console.log(JSON.stringify({ tags, errors, total }));
})();
`;

const { track, cleanup } = labNamespaces();
const children: ChildProcess[] = [];

async function waitLine(child: ChildProcess, text: string): Promise<void> {
  let buffer = '';
  child.stdout!.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    const onData = (d: string) => {
      buffer += d;
      if (buffer.includes(text)) {
        child.stdout!.off('data', onData);
        resolve();
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`exited with ${code} before printing "${text}"`)));
  });
}

describe.skipIf(!integrationEnabled)('re-installing under load', () => {
  afterAll(() => {
    for (const child of children) child.kill('SIGKILL');
    cleanup();
  });

  it.each(BACKENDS.map((backend, i) => ({ backend, subnet: 181 + i })))(
    `redirects every connection while $backend re-applies the config ${REAPPLIES} times`,
    async ({ backend, subnet }) => {
      const a = `mn-gap-${BACKEND_SHORT[backend]}`;
      const b = `mn-gap-${BACKEND_SHORT[backend]}-p`;
      track(a, b);
      const addrs = createVethPair(a, b, subnet);
      const ifB = `${b}-v`.slice(0, 15);
      sh('ip', ['-n', a, 'route', 'add', 'default', 'via', addrs.b4]);
      sh('ip', ['-n', a, '-6', 'route', 'add', 'default', 'via', addrs.b6]);
      sh('ip', ['-n', b, 'addr', 'add', '192.0.2.10/32', 'dev', ifB]);
      sh('ip', ['-n', b, '-6', 'addr', 'add', '2001:db8::10/128', 'dev', ifB, 'nodad']);

      const direct = spawnInNs(
        b,
        process.execPath,
        [
          '-e',
          TAG_SERVER,
          JSON.stringify([
            { host: '192.0.2.10', port: 80, tag: 'D' },
            { host: '2001:db8::10', port: 80, tag: 'D' },
          ]),
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      const proxy = spawnInNs(
        a,
        process.execPath,
        [
          '-e',
          TAG_SERVER,
          JSON.stringify([
            { host: '0.0.0.0', port: 15001, tag: 'R' },
            { host: '::', port: 15001, tag: 'R' },
          ]),
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      children.push(direct, proxy);
      await Promise.all([waitLine(direct, 'ready'), waitLine(proxy, 'ready')]);

      // Before install the destination answers directly; after it, the stand-in proxy does.
      expect(
        inNs(a, process.execPath, [
          '-e',
          'require("net").connect(80,"192.0.2.10").on("data",d=>{process.stdout.write(d)})',
        ]),
      ).toBe('D');
      const stateDir = tempStateDir();
      const configs = [5432, 5433].map((port) =>
        labConfig(stateDir, backend, { capture: { outbound: { excludePorts: [port] } } }),
      );
      await installCapture({ config: configs[0]!, netns: a, env: labEnv });

      const client = spawnInNs(
        a,
        'setpriv',
        [
          '--reuid=4242',
          '--regid=4242',
          '--clear-groups',
          process.execPath,
          '-e',
          CLIENT_LOOP,
          JSON.stringify([
            { host: '192.0.2.10', port: 80 },
            { host: '2001:db8::10', port: 80 },
          ]),
        ],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      );
      children.push(client);
      let output = '';
      client.stdout!.setEncoding('utf8');
      client.stdout!.on('data', (d: string) => {
        output += d;
      });
      await waitUntil(
        'the client loop to print "started"',
        () => output.includes('started') || client.exitCode !== null,
        15_000,
        { seen: () => output },
      );

      const actions: string[] = [];
      for (let i = 1; i <= REAPPLIES; i++)
        actions.push((await installCapture({ config: configs[i % 2]!, netns: a, env: labEnv })).action);
      client.stdin!.end();
      await once(client, 'exit');
      const result = JSON.parse(output.split('\n').find((l) => l.startsWith('{'))!) as {
        tags: Record<string, number>;
        errors: string[];
        total: number;
      };

      expect(actions).toEqual(Array(REAPPLIES).fill('updated'));
      expect(result.errors).toEqual([]);
      expect(result.tags.D ?? 0).toBe(0);
      expect(result.tags.R).toBe(result.total);
      expect(result.total).toBeGreaterThanOrEqual(100);
      await uninstallCapture({ stateDir, netns: a, env: labEnv });
      direct.kill();
      proxy.kill();
    },
  );
});
