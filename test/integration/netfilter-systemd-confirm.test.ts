// --confirm-within where systemd is PID 1: a Debian container (systemd-nspawn, test/helpers/nspawn-lab.ts) in a
// namespace we own, meshctl bind-mounted. The revert is a transient systemd timer (systemd-run --on-active), logged
// in the journal; `meshctl confirm` stops the timer.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { createIsolatedNs, deleteNs } from '../helpers/netns.js';
import { builtCli } from '../helpers/netfilter-lab.js';
import { Container, REPO_ROOT, removeRootfs, rootfsTarball, sleep, unpackRootfs } from '../helpers/nspawn-lab.js';
import { waitUntil } from '../helpers/wait.js';

const NS = 'mn-sd-ct';
const MESHCTL = ['/usr/local/bin/node', '/opt/meshctl/bin/meshctl'];
const INSTALL = [
  'install',
  '--backend',
  'iptables-nft',
  '--proxy-user',
  'nobody',
  '--ssh-ports',
  '22',
  '--without-proxy',
  '--confirm-within',
  '3s',
];

describe.skipIf(!integrationEnabled)('install --confirm-within with systemd as PID 1', () => {
  let root = '';
  let ct: Container;
  const meshctl = (...args: string[]) => ct.exec(MESHCTL[0]!, [...MESHCTL.slice(1), ...args]);
  const ours = () =>
    ct
      .run('iptables-nft-save', ['-t', 'nat'])
      .split('\n')
      .filter((l) => /MESHCTL|meshctl:/.test(l));
  const installId = (stdout: string) => /\(install (\S+)\)/.exec(stdout)![1]!;

  beforeAll(async () => {
    builtCli();
    createIsolatedNs(NS);
    root = unpackRootfs(rootfsTarball());
    ct = new Container({
      name: NS,
      root,
      netns: NS,
      binds: { [process.execPath]: MESHCTL[0]!, [REPO_ROOT]: '/opt/meshctl' },
    });
    await ct.boot();
  }, 300_000);

  afterAll(async () => {
    try {
      await ct?.poweroff();
    } catch {
      ct?.kill();
    }
    if (root) removeRootfs(root);
    deleteNs(NS);
  }, 120_000);

  it('arms a transient systemd timer that removes the rules at the deadline and logs it in the journal', async () => {
    const installed = meshctl(...INSTALL);
    expect(installed.status, installed.stderr).toBe(0);
    const id = installId(installed.stdout);
    expect(installed.stdout).toContain(`(systemd timer meshctl-revert-${id}.timer)`);
    expect(ct.run('systemctl', ['is-active', `meshctl-revert-${id}.timer`]).trim()).toBe('active');
    expect(ours().length).toBeGreaterThan(0);
    await waitUntil('the revert timer to remove the rules', () => ours().length === 0, 15_000, {
      seen: ours,
      intervalMs: 100,
    });
    expect(meshctl('status').status).toBe(3);
    const journal = ct.run('journalctl', ['--no-pager', '-u', `meshctl-revert-${id}.service`]);
    expect(journal).toMatch(new RegExp(`reverted install ${id}: not confirmed by \\S+; removed \\d+ objects`));
  });

  it('keeps the rules when confirmed: the timer is stopped', async () => {
    const installed = meshctl(...INSTALL);
    expect(installed.status, installed.stderr).toBe(0);
    const id = installId(installed.stdout);
    const confirmed = meshctl('confirm');
    expect(confirmed.status).toBe(0);
    expect(confirmed.stdout).toContain(`confirmed install ${id}`);
    expect(ct.exec('systemctl', ['is-active', `meshctl-revert-${id}.timer`]).stdout.trim()).not.toBe('active');
    // A bound on a negative (the stopped timer must not revert), so a fixed wait: past the 3 s deadline.
    await sleep(4500);
    expect(ours().length).toBeGreaterThan(0);
    expect(meshctl('status').status).toBe(5); // rules in sync, no proxy (--without-proxy)
    expect(meshctl('uninstall').status).toBe(0);
    expect(ours()).toEqual([]);
  });
});
