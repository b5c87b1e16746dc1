// `meshctl demo` end to end, as a user runs it: the report shows three intercepted connections, one direct and one
// through the mTLS tunnel to the mesh host with both proxies' identities, and afterwards no namespace, process, rule or scratch directory of the lab is left, also after Ctrl-C and after
// an earlier run was killed. Without root it says so and touches nothing.
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { deleteNs } from '../helpers/netns.js';
import { REPO_ROOT } from '../helpers/nspawn-lab.js';

const MESHCTL = join(REPO_ROOT, 'bin/meshctl');
const PREFIX = 'ms-demo';
const ARGS = ['demo', '--prefix', PREFIX, '--subnet', '214'];

const labNamespaces = () =>
  spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((l) => l.startsWith(`${PREFIX}-`));
const labProcesses = () =>
  spawnSync('pgrep', ['-af', 'meshctl-demo-'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((l) => l && !l.includes('pgrep'));
const scratchDirs = () => readdirSync(tmpdir()).filter((d) => d.startsWith('meshctl-demo-'));
const rootNat = () =>
  spawnSync('iptables-save', ['-t', 'nat'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((l) => !l.startsWith('#'))
    .join('\n');

describe.skipIf(!integrationEnabled)('meshctl demo', () => {
  it('reports three intercepted connections, one direct and one tunneled with both identities, then leaves nothing behind', () => {
    const scratchBefore = scratchDirs();
    const natBefore = rootNat();
    const r = spawnSync(process.execPath, [MESHCTL, ...ARGS], { encoding: 'utf8', timeout: 120_000 });
    expect(r.stderr).toContain('installed capture: meshctl install --netns ms-demo-app');
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout.match(/ INTERCEPTED$/gm)).toHaveLength(3);
    expect(r.stdout).toMatch(/^5\. mTLS out .* INTERCEPTED, mTLS$/m);
    expect(r.stdout).toContain(
      "This proxy is spiffe://demo.test/app; the server's proxy proved spiffe://demo.test/mesh (tls mtls)",
    );
    expect(r.stdout).toMatch(
      /The mesh host's proxy logged the client as spiffe:\/\/demo\.test\/app \(tls mtls\) and passed it to its app from 127\.0\.0\.6:\d+\./,
    );
    expect(r.stdout).toContain('The client got "HTTP/1.1 200 OK"');
    expect(r.stdout).toMatch(/^4\. excluded .* DIRECT \(not intercepted\)$/m);
    expect(r.stdout).toContain('the proxy read the original destination 10.214.77.2:80');
    expect(r.stdout).toContain('The client got "220 peer.demo ESMTP ready"');
    expect(r.stdout).toContain('The client got "you reached the app host from 127.0.0.6:');
    expect(r.stdout).toMatch(/Proxy \/stats: 3 outbound and 1 inbound connections accepted/);
    expect(r.stdout).toContain('verdict: INTERCEPTED → proxy port 15001');
    expect(r.stdout).toContain('All 5 connections behaved as the config says.');
    expect(r.stdout).toContain('Nothing was left behind.');
    expect(labNamespaces()).toEqual([]);
    expect(labProcesses()).toEqual([]);
    expect(scratchDirs()).toEqual(scratchBefore);
    expect(rootNat()).toBe(natBefore);
  });

  it('tears the lab down on Ctrl-C', async () => {
    const child = spawn(process.execPath, [MESHCTL, ...ARGS], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (err.includes('installed capture')) child.kill('SIGINT');
    });
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    expect(err).toContain('SIGINT: tearing the demo lab down');
    expect(err).toContain('removed capture: meshctl uninstall --netns ms-demo-app');
    expect(err).toContain('demo lab removed; nothing left behind');
    expect(code).toBe(130);
    expect(labNamespaces()).toEqual([]);
    expect(labProcesses()).toEqual([]);
  });

  it('first removes what a killed earlier run left behind', async () => {
    spawnSync('ip', ['netns', 'add', `${PREFIX}-app`]);
    const stray = spawn('ip', ['netns', 'exec', `${PREFIX}-app`, 'sleep', '300'], { stdio: 'ignore' });
    const strayExit = new Promise<string>((resolve) =>
      stray.once('exit', (code, signal) => resolve(signal ?? String(code))),
    );
    try {
      const r = spawnSync(process.execPath, [MESHCTL, ...ARGS, '--quiet'], { encoding: 'utf8', timeout: 120_000 });
      expect(r.stderr).toContain('removing what an interrupted earlier demo left behind: ms-demo-app');
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(
        await Promise.race([strayExit, new Promise((resolve) => setTimeout(() => resolve('still running'), 5000))]),
      ).toBe('SIGKILL');
      expect(labNamespaces()).toEqual([]);
    } finally {
      stray.kill('SIGKILL');
      deleteNs(`${PREFIX}-app`);
    }
  });

  it('says clearly that it needs root, and changes nothing, when run as another user', () => {
    const r = spawnSync(
      'setpriv',
      ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, MESHCTL, ...ARGS],
      { encoding: 'utf8', cwd: '/' },
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('meshctl: NOT_ROOT: meshctl demo needs root');
    expect(r.stderr).toContain('sudo npm run demo');
    expect(labNamespaces()).toEqual([]);
  });
});
