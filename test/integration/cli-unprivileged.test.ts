// bin/meshctl run by a non-root user (uid 65534): commands that change rules or state refuse with NOT_ROOT before
// touching anything; read commands answer read-only and never create the state directory; status says what it
// could read of a root-owned ledger instead of guessing.
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { builtCli, labEnv, labNamespaces, MESHCTL, meshctl } from '../helpers/netfilter-lab.js';

const { freshNs, cleanup } = labNamespaces();

/** Runs bin/meshctl as nobody (no groups, no capabilities) from `/`. */
function asNobody(args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(
    'setpriv',
    ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, MESHCTL, ...args],
    { encoding: 'utf8', env: labEnv, cwd: '/', timeout: 60_000 },
  );
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe.skipIf(!integrationEnabled)('bin/meshctl as a non-root user', () => {
  const base = mkdtempSync(join(tmpdir(), 'hc-unpriv-'));
  const stateDir = join(base, 'state');
  let ns: string;

  beforeAll(() => {
    builtCli();
    chmodSync(base, 0o755);
    ns = freshNs('hc-unpriv');
  });

  afterAll(() => {
    cleanup();
    rmSync(base, { recursive: true, force: true });
  });

  it.each([
    ['install', ['install', '--proxy-user', 'nobody', '--without-proxy']],
    ['install', ['install', '--proxy-user', 'nobody', '--dry-run']],
    ['uninstall', ['uninstall']],
    ['uninstall', ['rollback']],
    ['confirm', ['confirm']],
    ['recover', ['recover']],
    ['verify', ['verify']],
  ])('refuses meshctl %s (%j) with NOT_ROOT before touching anything', (name, args) => {
    const result = asNobody([...args, '--netns', ns, '--state-dir', stateDir]);
    expect(result.stderr).toMatch(
      new RegExp(`^meshctl: NOT_ROOT: meshctl ${name} .*, which needs root \\(running as uid 65534\\)$`, 'm'),
    );
    expect(result.stderr).toContain(`hint:    run it with sudo: sudo meshctl ${name} …`);
    expect(result.status).toBe(1);
    expect(existsSync(stateDir)).toBe(false);
  });

  it.each(['install', 'uninstall'])('refuses meshctl service %s with NOT_ROOT', (sub) => {
    const result = asNobody(['service', sub]);
    expect(result.stderr).toContain(`meshctl: NOT_ROOT: meshctl service ${sub} `);
    expect(result.stderr).toContain(`hint:    run it with sudo: sudo meshctl service ${sub} …`);
    expect(result.status).toBe(1);
  });

  it('answers the read commands without creating the state directory', () => {
    const status = asNobody(['status', '--netns', ns, '--state-dir', stateDir]);
    expect(status.stdout).toContain(
      `not installed in namespace ${ns} (no ledger at ${stateDir}/netns/${ns}/ledger.json)`,
    );
    expect(status.status).toBe(3);
    expect(asNobody(['status', '--state-dir', stateDir]).status).toBe(3);

    const doctor = asNobody(['doctor', '--netns', ns, '--state-dir', stateDir, '--proxy-user', 'nobody']);
    expect(doctor.stdout).toContain('missing privileges: uid 65534 lacks CAP_NET_ADMIN');
    expect(doctor.status).toBe(1);

    const explain = asNobody([
      'explain',
      '--in',
      '--dst',
      '10.0.0.1:22',
      '--proxy-user',
      'nobody',
      '--state-dir',
      stateDir,
    ]);
    expect(explain.stdout).toContain('verdict: NOT INTERCEPTED');
    expect(explain.status).toBe(0);
    expect(asNobody(['render', '--proxy-user', 'nobody', '--state-dir', stateDir]).status).toBe(0);
    expect(asNobody(['config', 'validate', '--proxy-user', 'nobody', '--state-dir', stateDir]).status).toBe(0);

    expect(readdirSync(base)).toEqual([]);
  });

  it('says what status could read of a root-owned ledger, and that comparing the rules needs root', () => {
    const installed = join(base, 'installed');
    try {
      const install = meshctl([
        'install',
        '--netns',
        ns,
        '--state-dir',
        installed,
        '--proxy-user',
        'nobody',
        '--without-proxy',
        '--ssh-ports',
        '22',
        '--backend',
        'iptables-nft',
        '--json',
      ]);
      expect(install.status).toBe(0);
      const { installId } = JSON.parse(install.stdout) as { installId: string };
      const ledger = `${installed}/netns/${ns}/ledger.json`;

      // The state directory is 0700 root: nothing can be read, and status does not pretend "not installed".
      const hidden = asNobody(['status', '--netns', ns, '--state-dir', installed]);
      expect(hidden.stderr).toContain(
        `meshctl: NOT_ROOT: meshctl status cannot read the ledger ${ledger} as uid 65534 (EACCES): the state directory is root's`,
      );
      expect(hidden.stderr).toContain(`hint:    run it with sudo: sudo meshctl status --netns ${ns}`);
      expect(hidden.status).toBe(1);

      // Made readable, the ledger is reported; the kernel's rules still cannot be read.
      for (const dir of [installed, `${installed}/netns`, `${installed}/netns/${ns}`]) chmodSync(dir, 0o755);
      chmodSync(ledger, 0o644);
      const readable = asNobody(['status', '--netns', ns, '--state-dir', installed]);
      expect(readable.stderr).toMatch(
        new RegExp(
          `meshctl: NOT_ROOT: meshctl status read the ledger ${ledger} \\(install ${installId}, iptables-nft, since \\S+\\) but cannot read the netfilter rules to compare them as uid 65534`,
        ),
      );
      expect(readable.status).toBe(1);
    } finally {
      expect(meshctl(['uninstall', '--netns', ns, '--state-dir', installed]).status).toBe(0);
    }
  });
});
