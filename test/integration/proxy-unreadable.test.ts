// `meshctl proxy` started as root from a built tree the proxy user cannot read (a 0700 directory, like a checkout
// under /root): one PROXY_UNREADABLE error naming the file, the user and the fix, before any worker is forked;
// not a MODULE_NOT_FOUND stack trace per worker. The same tree made readable starts.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { builtCli, labNamespaces, ROOT, waitFor } from '../helpers/netfilter-lab.js';

const { freshNs, cleanup } = labNamespaces();

describe.skipIf(!integrationEnabled)('meshctl proxy from a tree the proxy user cannot read', () => {
  const base = mkdtempSync(join(tmpdir(), 'hc-unreadable-'));
  const tree = join(base, 'meshctl');
  let ns: string;

  beforeAll(() => {
    builtCli();
    chmodSync(base, 0o755);
    // The built tree as an install would ship it: launcher, dist/, the schema, package.json and the addon.
    for (const part of ['bin', 'dist', 'rules', 'package.json'])
      cpSync(join(ROOT, part), join(tree, part), { recursive: true });
    mkdirSync(join(tree, 'build/Release'), { recursive: true });
    cpSync(join(ROOT, 'build/Release/meshctl_native.node'), join(tree, 'build/Release/meshctl_native.node'));
    symlinkSync(join(ROOT, 'node_modules'), join(tree, 'node_modules'));
    ns = freshNs('hc-unreadable');
  });

  afterAll(() => {
    cleanup();
    rmSync(base, { recursive: true, force: true });
  });

  const args = () => [
    'netns',
    'exec',
    ns,
    process.execPath,
    join(tree, 'bin/meshctl'),
    'proxy',
    '--proxy-user',
    'nobody',
    '--proxy-workers',
    '2',
  ];

  it('fails once, naming the unreadable worker entry, the user and the fix', () => {
    chmodSync(tree, 0o700);
    const result = spawnSync('ip', args(), { encoding: 'utf8', timeout: 30_000 });
    expect(result.stderr).toContain(
      `meshctl: PROXY_UNREADABLE: the proxy runs its workers as nobody (uid 65534, gid 65534), which cannot read ${tree}/dist/proxy/worker-main.js (EACCES): no worker could start`,
    );
    expect(result.stderr).toContain(
      'hint:    install meshctl where the proxy user can read it (e.g. under /opt or /usr/lib',
    );
    expect(result.stderr).not.toContain('Cannot find module');
    expect(result.stderr).not.toMatch(/^\s+at /m);
    expect(result.stderr.match(/^meshctl: /gm)).toHaveLength(1);
    expect(result.status).toBe(1);
  });

  it('starts from the same tree once the proxy user can read it', async () => {
    chmodSync(tree, 0o755);
    const child = spawn('ip', args(), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      await waitFor(
        () => out.includes('"msg":"proxy ready"') || child.exitCode !== null,
        20_000,
        () => `"proxy ready" from the proxy (output so far: ${out.slice(-2000)})`,
      );
      expect(out).toContain('"msg":"proxy ready"');
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });

  it('drains and exits 0 on a SIGTERM sent at its first log line, before it is ready', async () => {
    chmodSync(tree, 0o755);
    const child = spawn('ip', args(), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let signalled = false;
    const onOutput = (d: Buffer) => {
      out += d.toString();
      // The earliest moment the process shows it runs: its handlers must already be in place.
      if (!signalled && out.includes('"msg":')) {
        signalled = true;
        child.kill('SIGTERM');
      }
    };
    child.stdout!.on('data', onOutput);
    child.stderr!.on('data', onOutput);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on('exit', (code, signal) => resolve({ code, signal })),
    );
    await waitFor(
      () => child.exitCode !== null || child.signalCode !== null,
      30_000,
      () => `the proxy to exit after SIGTERM (signalled: ${signalled}; output so far: ${out.slice(-2000)})`,
    );
    expect(await exited, out.slice(-2000)).toEqual({ code: 0, signal: null });
    expect(signalled).toBe(true);
    expect(out).toContain('"msg":"proxy stopped"');
  });
});
