// --netns as every command takes it (bin/meshctl): a malformed name is CONFIG_INVALID and a missing namespace
// NETNS_NOT_FOUND before anything is read or created; and the SSH ports are detected where the rules go, so an sshd
// listening on :2222 inside the target namespace is exempt from inbound capture there.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { createVethPair, inNs } from '../helpers/netns.js';
import { builtCli, labNamespaces, meshctl, tempStateDir, waitFor } from '../helpers/netfilter-lab.js';

const { track, cleanup } = labNamespaces();
const scratch = mkdtempSync(join(tmpdir(), 'hc-netns-'));

/** Each command that takes --netns, with the other arguments it needs to get as far as its action. */
const NETNS_COMMANDS: readonly (readonly string[])[] = [
  ['install', '--proxy-user', 'nobody', '--without-proxy'],
  ['uninstall'],
  ['confirm'],
  ['status'],
  ['doctor', '--proxy-user', 'nobody'],
  ['verify'],
  ['explain', '--in', '--dst', '10.0.0.1:80', '--proxy-user', 'nobody'],
];

describe.skipIf(!integrationEnabled)('--netns through bin/meshctl', () => {
  beforeAll(() => builtCli());
  afterAll(() => {
    cleanup();
    rmSync(scratch, { recursive: true, force: true });
  });

  describe.each(NETNS_COMMANDS.map((args) => ({ command: args[0]!, args })))('meshctl $command', ({ args }) => {
    it('refuses a name that is not a namespace name, naming the flag and the value, and creates nothing', () => {
      const stateDir = join(scratch, `state-${args[0]}-bad`);
      const result = meshctl([...args, '--netns', '../hc-x', '--state-dir', stateDir]);
      expect(result.status).toBe(1);
      expect(result.stderr).toContain(
        'meshctl: CONFIG_INVALID: --netns "../hc-x" is not a network namespace name: it contains "/"',
      );
      expect(result.stderr).toContain('hint:    give the name as `ip netns list` shows it');
      expect(existsSync(stateDir)).toBe(false);
    });

    it('names a namespace that does not exist, and creates nothing', () => {
      const stateDir = join(scratch, `state-${args[0]}-missing`);
      const result = meshctl([...args, '--netns', 'hc-cli-missing', '--state-dir', stateDir]);
      expect(result.status).toBe(1);
      expect(result.stderr).toContain(
        'meshctl: NETNS_NOT_FOUND: network namespace "hc-cli-missing" (from --netns) does not exist: /run/netns/hc-cli-missing is missing',
      );
      expect(existsSync(stateDir)).toBe(false);
    });
  });

  it('checks verify --peer-netns the same way, naming that flag', () => {
    const result = meshctl([
      'verify',
      '--peer-netns',
      'hc-cli-missing-peer',
      '--state-dir',
      join(scratch, 'state-peer'),
    ]);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(
      'NETNS_NOT_FOUND: network namespace "hc-cli-missing-peer" (from --peer-netns) does not exist',
    );
  });

  describe('an sshd inside the target namespace', () => {
    const ns = 'hc-ssh-in';
    const peer = 'hc-ssh-peer';
    const children: ChildProcess[] = [];
    let addrs: ReturnType<typeof createVethPair>;
    let stateDir: string;
    const common = () => ['--proxy-user', 'nobody', '--backend', 'iptables-nft'];

    /** A TCP listener in `ns` that greets each client with `greeting`, run as `argv0` (its /proc comm). */
    async function listen(argv0: string, port: number, greeting: string): Promise<void> {
      const script = `require('node:net').createServer((c) => c.end(${JSON.stringify(`${greeting}\n`)})).listen(${port}, '0.0.0.0', () => console.log('listening'))`;
      const child = spawn('ip', ['netns', 'exec', ns, argv0, '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      await waitFor(
        () => out.includes('listening'),
        10_000,
        () => `${argv0} listening on :${port} in ${ns} (output so far: ${JSON.stringify(out)})`,
      );
    }

    /** Connects from the peer namespace; the greeting received, or the connect error code. */
    function connectFromPeer(port: number): string {
      const script = `const s = require('node:net').connect(${port}, ${JSON.stringify(addrs.a4)}); let d = ''; s.setTimeout(5000, () => { console.log('timeout'); s.destroy(); });
        s.on('data', (b) => (d += b)); s.on('end', () => console.log(d.trim())); s.on('error', (e) => console.log('error:' + e.code));`;
      return inNs(peer, process.execPath, ['-e', script]).trim();
    }

    beforeAll(async () => {
      track(ns, peer);
      addrs = createVethPair(ns, peer, 213);
      stateDir = tempStateDir();
      // An sshd-named process (a symlink to node: the kernel takes comm from the name exec'd) on :2222, and a
      // plain listener on :2300 that nothing exempts.
      const sshd = join(scratch, 'sshd');
      symlinkSync(process.execPath, sshd);
      await listen(sshd, 2222, 'sshd-stand-in');
      await listen(process.execPath, 2300, 'plain-listener');
    });

    afterAll(() => {
      for (const child of children) child.kill('SIGKILL');
      meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir]);
    });

    it('is found there, not in the root namespace', () => {
      const root = JSON.parse(meshctl(['config', 'validate', ...common()]).stdout.replace(/^config ok.*\n/, '')) as {
        safety: { sshPorts: number[] };
      };
      expect(root.safety.sshPorts).not.toContain(2222);
      const doctor = meshctl(['doctor', '--netns', ns, ...common(), '--json']);
      const finding = (JSON.parse(doctor.stdout) as { findings: { id: string; message: string }[] }).findings.find(
        (f) => f.id === 'ssh-ports',
      );
      expect(finding?.message).toBe(
        `SSH ports 2222 (from sshd-listening in namespace ${ns}) are never captured inbound`,
      );
    });

    it('is exempt after install: explain says skip-ssh, the rule is there, and a peer reaches it directly', () => {
      const install = meshctl(['install', '--netns', ns, '--state-dir', stateDir, '--without-proxy', ...common()]);
      expect(install.stderr).toBe('');
      expect(install.status).toBe(0);
      expect(inNs(ns, 'iptables-nft-save', ['-t', 'nat'])).toMatch(
        /-A MESHCTL_INBOUND -p tcp -m (tcp --dport|multiport --dports) 2222 -m comment --comment "meshctl:skip-ssh" -j RETURN/,
      );

      const explain = (port: number) =>
        JSON.parse(
          meshctl([
            'explain',
            '--netns',
            ns,
            '--in',
            '--dst',
            `${addrs.a4}:${port}`,
            '--src',
            addrs.b4,
            ...common(),
            '--json',
          ]).stdout,
        ) as { verdict: string; decidedBy: { purpose: string; origin: string } | null };
      expect(explain(2222)).toMatchObject({
        verdict: 'bypassed',
        decidedBy: { purpose: 'skip-ssh', origin: expect.stringContaining('safety.sshPorts') },
      });
      expect(explain(2300)).toMatchObject({ verdict: 'redirected', decidedBy: { purpose: 'inbound-to-proxy' } });

      expect(connectFromPeer(2222)).toBe('sshd-stand-in');
      // Captured like any port: redirected to the inbound proxy port, where nothing listens in this lab.
      expect(connectFromPeer(2300)).toBe('error:ECONNREFUSED');
    });
  });
});
