// `meshctl install` refuses to capture when no proxy is ready on the admin port (inside the --netns namespace),
// `--without-proxy` overrides it, and a running proxy satisfies it; `meshctl proxy-ready` (the unit's
// ExecStartPost) waits for /ready and fails with PROXY_NOT_READY when nothing answers.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { createIsolatedNs, deleteNs, inNs } from '../helpers/netns.js';
import { REPO_ROOT } from '../helpers/nspawn-lab.js';
import { waitUntil } from '../helpers/wait.js';

const NS = 'ms-ready';
const MESHCTL = join(REPO_ROOT, 'bin/meshctl');

describe.skipIf(!integrationEnabled)('proxy readiness before capture', () => {
  let dir = '';
  let configFile = '';
  let env: NodeJS.ProcessEnv = {};
  let proxy: ChildProcess | null = null;

  const meshctl = (args: string[]) =>
    spawnSync(process.execPath, [MESHCTL, ...args], { encoding: 'utf8', env, timeout: 60_000 });
  const natRules = () => inNs(NS, 'iptables-save', ['-t', 'nat']);

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ms-ready-'));
    configFile = join(dir, 'config.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        proxy: { user: 'nobody', workers: 1, drainTimeout: '1s' },
        capture: { ipv6: 'block' },
        stateDir: join(dir, 'state'),
      }),
    );
    env = { ...process.env, XTABLES_LOCKFILE: join(dir, 'xtables.lock') };
    createIsolatedNs(NS);
  });

  afterAll(async () => {
    if (proxy && proxy.exitCode === null) {
      proxy.kill('SIGKILL');
      const killed = proxy;
      await waitUntil('the killed proxy to exit', () => killed.exitCode !== null || killed.signalCode !== null, 10_000);
    }
    meshctl(['uninstall', '--netns', NS, '--config', configFile]);
    deleteNs(NS);
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses to install capture when nothing is ready on the admin port in the namespace', () => {
    const r = meshctl(['install', '--netns', NS, '--config', configFile]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('PROXY_NOT_READY');
    expect(r.stderr).toContain(`127.0.0.1:15000 in network namespace ${NS}`);
    expect(r.stderr).toContain('ECONNREFUSED');
    expect(r.stderr).toContain('--without-proxy');
    expect(natRules()).not.toContain('MESHCTL');
  });

  it('installs without a proxy when --without-proxy is given', () => {
    const r = meshctl(['install', '--netns', NS, '--config', configFile, '--without-proxy']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(natRules()).toContain('MESHCTL_OUTPUT');
    expect(meshctl(['uninstall', '--netns', NS, '--config', configFile]).status).toBe(0);
    expect(natRules()).not.toContain('MESHCTL');
  });

  it('installs once a proxy in the namespace reports ready', async () => {
    proxy = spawn('ip', ['netns', 'exec', NS, process.execPath, MESHCTL, 'proxy', '--config', configFile], {
      stdio: 'ignore',
      env,
    });
    const inside = spawnSync(
      'ip',
      ['netns', 'exec', NS, process.execPath, MESHCTL, 'proxy-ready', '--config', configFile, '--timeout', '20s'],
      { encoding: 'utf8', env },
    );
    expect(inside.stdout).toContain('proxy ready on 127.0.0.1:15000');
    const r = meshctl(['install', '--netns', NS, '--config', configFile]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(natRules()).toContain('MESHCTL_OUTPUT');
    expect(meshctl(['uninstall', '--netns', NS, '--config', configFile]).status).toBe(0);
    proxy.kill('SIGTERM');
    await new Promise((resolve) => proxy!.once('exit', resolve));
  });

  it('proxy-ready fails with PROXY_NOT_READY after its timeout, and --json reports instead of failing', () => {
    const r = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        NS,
        process.execPath,
        MESHCTL,
        'proxy-ready',
        '--admin',
        '127.0.0.1:15000',
        '--timeout',
        '300ms',
      ],
      { encoding: 'utf8', env },
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('PROXY_NOT_READY: the proxy on 127.0.0.1:15000 did not report ready within 300ms');
    const j = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        NS,
        process.execPath,
        MESHCTL,
        'proxy-ready',
        '--admin',
        '127.0.0.1:15000',
        '--timeout',
        '100ms',
        '--json',
      ],
      { encoding: 'utf8', env },
    );
    expect(j.status).toBe(0);
    expect(JSON.parse(j.stdout)).toMatchObject({ ready: false, admin: '127.0.0.1:15000' });
  });
});
