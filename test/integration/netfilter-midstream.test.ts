// Connections that exist before capture is installed keep working: on a host whose conntrack was not loaded yet (a
// fresh VM, this fresh namespace), their next packets are picked up mid-stream as "new"; if the nat rules acted on
// them, an SSH session would be cut the moment meshctl installs. Only a SYN may start capture (meshctl:skip-midstream).
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { installCapture } from '../../src/netfilter/install.js';
import { uninstallCapture } from '../../src/netfilter/uninstall.js';
import { integrationEnabled } from '../helpers/integration.js';
import { createVethPair, deleteNs } from '../helpers/netns.js';

const ECHO_SERVER = `
const net = require('node:net');
for (const port of process.argv.slice(1).map(Number)) net.createServer((s) => s.pipe(s)).listen(port, '::', () => console.log('listening ' + port));`;
// Reads "<host> <port>" once to connect, then sends every further stdin line and prints what comes back.
const LINE_CLIENT = `
const net = require('node:net');
const rl = require('node:readline').createInterface({ input: process.stdin });
let sock = null;
rl.on('line', (line) => {
  if (!sock) {
    const [host, port] = line.split(' ');
    sock = net.connect(Number(port), host, () => console.log('connected'));
    sock.on('data', (d) => console.log('echo ' + d.toString().trim()));
    sock.on('error', (e) => console.log('error ' + e.code));
    sock.on('close', () => console.log('closed'));
  } else sock.write(line + '\\n');
});`;

interface LineProcess {
  readonly child: ChildProcessWithoutNullStreams;
  next(): Promise<string>;
  send(line: string): void;
}

function start(ns: string, script: string, args: string[] = [], uid?: number): LineProcess {
  // setns needs root, so the namespace is entered first and the uid dropped inside it.
  const drop = uid === undefined ? [] : ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups'];
  const child = spawn('ip', ['netns', 'exec', ns, ...drop, process.execPath, '-e', script, ...args]);
  const lines: string[] = [];
  const waiters: ((line: string) => void)[] = [];
  createInterface({ input: child.stdout }).on('line', (line) => {
    const waiter = waiters.shift();
    if (waiter) waiter(line);
    else lines.push(line);
  });
  return {
    child,
    send: (line) => child.stdin.write(`${line}\n`),
    next: () =>
      new Promise((resolve, reject) => {
        const queued = lines.shift();
        if (queued !== undefined) return resolve(queued);
        const timer = setTimeout(() => reject(new Error(`no output from ${ns} within 5 s`)), 5000);
        waiters.push((line) => {
          clearTimeout(timer);
          resolve(line);
        });
      }),
  };
}

describe.skipIf(!integrationEnabled)('connections older than the capture rules', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mn-midstream-'));
  const children: ChildProcessWithoutNullStreams[] = [];
  const namespaces: string[] = [];
  afterAll(() => {
    for (const c of children) c.kill('SIGKILL');
    for (const ns of namespaces) deleteNs(ns);
    rmSync(dir, { recursive: true, force: true });
  });

  it.each(['iptables-nft', 'iptables-legacy', 'nftables'] as const)(
    'keep working after install with %s, in both directions',
    async (backend) => {
      const host = `mn-mid-${backend.slice(-3)}-h`;
      const peer = `mn-mid-${backend.slice(-3)}-p`;
      namespaces.push(host, peer);
      const subnet = { 'iptables-nft': 231, 'iptables-legacy': 232, nftables: 233 }[backend];
      const addrs = createVethPair(host, peer, subnet);

      // An SSH-like session into the host (port 22, never captured) and an app connection into port 8080 (captured
      // for new connections), plus an app's outbound connection to the peer (captured for new connections).
      const hostServer = start(host, ECHO_SERVER, ['22', '8080']);
      const peerServer = start(peer, ECHO_SERVER, ['9000']);
      children.push(hostServer.child, peerServer.child);
      expect([await hostServer.next(), await hostServer.next(), await peerServer.next()]).toHaveLength(3);
      const ssh = start(peer, LINE_CLIENT);
      const inbound = start(peer, LINE_CLIENT);
      const outbound = start(host, LINE_CLIENT, [], 1000);
      children.push(ssh.child, inbound.child, outbound.child);
      ssh.send(`${addrs.a4} 22`);
      inbound.send(`${addrs.a4} 8080`);
      outbound.send(`${addrs.b4} 9000`);
      for (const c of [ssh, inbound, outbound]) {
        expect(await c.next()).toBe('connected');
        c.send('before');
        expect(await c.next()).toBe('echo before');
      }

      const config = configFromObject(
        { proxy: { user: 'nobody' }, capture: { backend }, safety: { sshPorts: [22] }, stateDir: join(dir, backend) },
        { env: {} },
      );
      const result = await installCapture({
        config,
        netns: host,
        env: { ...process.env, XTABLES_LOCKFILE: join(dir, `${backend}.lock`) },
      });
      expect(result.action).toBe('installed');

      for (const [name, c] of [
        ['ssh', ssh],
        ['inbound', inbound],
        ['outbound', outbound],
      ] as const) {
        c.send(`after-${name}`);
        expect(await c.next(), `${name} connection after install`).toBe(`echo after-${name}`);
      }

      // A new connection is still captured: nothing listens on the proxy ports here, so it is refused.
      const fresh = start(host, LINE_CLIENT, [], 1000);
      children.push(fresh.child);
      fresh.send(`${addrs.b4} 9000`);
      expect(await fresh.next()).toBe('error ECONNREFUSED');

      await uninstallCapture({
        stateDir: config.stateDir,
        netns: host,
        env: { ...process.env, XTABLES_LOCKFILE: join(dir, `${backend}.lock`) },
      });
    },
  );
});
