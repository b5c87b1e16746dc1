// --confirm-within: the revert outlives the installing process and its session (here: systemd is not PID 1, so a
// detached process with its own session), removes the rules at the deadline unless `meshctl confirm` came first,
// and logs what it did.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLedger, scopeDir } from '../../src/netfilter/transaction/ledger.js';
import { processStartTime } from '../../src/netfilter/transaction/lock.js';
import { revertLogPath } from '../../src/netfilter/transaction/revert.js';
import { integrationEnabled } from '../helpers/integration.js';
import {
  addDockerLike,
  builtCli,
  faultBin,
  labEnv,
  labNamespaces,
  meshctl,
  meshctlDetached,
  meshctlResidue,
  normalizedRuleset,
  tempStateDir,
  waitFor,
} from '../helpers/netfilter-lab.js';

const { freshNs, cleanup } = labNamespaces();
/** Pids of processes running `uninstall --if-unconfirmed … --state-dir DIR`. */
function reverters(stateDir: string): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        return cmdline.includes('--if-unconfirmed\u0000') && cmdline.includes(`--state-dir\u0000${stateDir}\u0000`);
      } catch {
        return false;
      }
    })
    .map(Number);
}

const alive = (pid: number, start: string | null): boolean => start !== null && processStartTime(pid) === start;

describe.skipIf(!integrationEnabled)('install --confirm-within', () => {
  beforeAll(() => builtCli());
  afterAll(cleanup);

  const args = (ns: string, stateDir: string) => [
    '--netns',
    ns,
    '--state-dir',
    stateDir,
    '--backend',
    'iptables-nft',
    '--proxy-user',
    'nobody',
    '--ssh-ports',
    '22',
    '--without-proxy',
  ];

  it('removes the rules after the deadline although the installing process and its session were killed', async () => {
    const ns = freshNs('mn-cf-revert');
    const stateDir = tempStateDir();
    addDockerLike(ns, 'iptables-nft');
    const before = normalizedRuleset(ns, 'iptables-nft');
    const dir = scopeDir(stateDir, ns);

    // The installer runs in its own session, like an SSH login shell; the whole session is killed as soon as the
    // ledger says installed (with the revert armed), before the installer may even have printed its result.
    // 6 s: the status check below must come before the deadline also on a loaded 2-core machine (3 s was not always).
    const installer = meshctlDetached(['install', ...args(ns, stateDir), '--confirm-within', '6s'], labEnv);
    await waitFor(
      () => {
        const l = readLedger(dir);
        return (
          (l?.state === 'installed' && l.confirm !== null && l.confirm !== undefined) || installer.exitCode !== null
        );
      },
      30_000,
      'the install to complete with its revert armed',
    );
    try {
      process.kill(-installer.pid!, 'SIGKILL');
    } catch {
      // the installer had already finished; its session is gone either way
    }
    const ledger = readLedger(dir)!;
    expect(ledger.confirm?.mechanism).toBe('detached-process');
    expect(ledger.confirm?.confirmedAt).toBeNull();
    const reverter = { pid: ledger.confirm!.pid!, start: ledger.confirm!.pidStartTime };
    expect(alive(reverter.pid, reverter.start)).toBe(true);
    expect(normalizedRuleset(ns, 'iptables-nft')).not.toBe(before);
    const status = meshctl(['status', '--netns', ns, '--state-dir', stateDir]);
    expect(status.status).toBe(5); // rules in sync, no proxy (--without-proxy)
    expect(status.stdout).toMatch(/UNCONFIRMED: reverted at \S+ unless `meshctl confirm` runs first/);

    await waitFor(
      () => meshctlResidue(ns).length === 0,
      Date.parse(ledger.confirm!.deadline) - Date.now() + 15_000,
      'the revert',
    );
    await waitFor(() => !alive(reverter.pid, reverter.start), 10_000, 'the reverter to exit');
    expect(normalizedRuleset(ns, 'iptables-nft')).toBe(before);
    expect(readLedger(dir)).toBeNull();
    const log = readFileSync(revertLogPath(dir), 'utf8');
    expect(log).toContain(`revert armed for install ${ledger.installId} in namespace ${ns}`);
    expect(log).toMatch(
      new RegExp(
        `reverted install ${ledger.installId} in namespace ${ns}: not confirmed by ${ledger.confirm!.deadline.replace(/[.]/g, '\\.')}; removed \\d+ objects`,
      ),
    );
  });

  it('keeps the rules when `meshctl confirm` arrives in time, and stops the reverter', async () => {
    const ns = freshNs('mn-cf-keep');
    const stateDir = tempStateDir();
    const dir = scopeDir(stateDir, ns);
    const installed = meshctl(['install', ...args(ns, stateDir), '--confirm-within', '3s']);
    expect(installed.status).toBe(0);
    expect(installed.stdout).toMatch(
      /confirm: run `meshctl confirm --netns mn-cf-keep` before \S+, or the rules are removed \(detached process \d+\)/,
    );
    const arm = readLedger(dir)!.confirm!;
    const rules = normalizedRuleset(ns, 'iptables-nft');

    const confirmed = meshctl(['confirm', '--netns', ns, '--state-dir', stateDir]);
    expect(confirmed.status).toBe(0);
    expect(confirmed.stdout).toContain(`confirmed install ${readLedger(dir)!.installId} in namespace ${ns}`);
    await waitFor(() => !alive(arm.pid!, arm.pidStartTime), 10_000, 'the reverter to stop');

    // Past the deadline the rules are still there and in sync. A bound on a negative (nothing may revert them),
    // so this one waits a fixed time: until the deadline has passed, plus a margin.
    await new Promise((r) => setTimeout(r, Math.max(0, Date.parse(arm.deadline) - Date.now()) + 1500));
    expect(normalizedRuleset(ns, 'iptables-nft')).toBe(rules);
    expect(readLedger(dir)?.confirm?.confirmedAt).not.toBeNull();
    expect(meshctl(['status', '--netns', ns, '--state-dir', stateDir]).status).toBe(5);
    expect(meshctl(['confirm', '--netns', ns, '--state-dir', stateDir]).stdout).toContain('was already confirmed');
    expect(meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir]).status).toBe(0);
    expect(existsSync(revertLogPath(dir))).toBe(true);
  });

  it('stops the revert it armed when the install itself fails and is rolled back', async () => {
    const ns = freshNs('mn-cf-fail');
    const stateDir = tempStateDir();
    const dir = scopeDir(stateDir, ns);
    const before = normalizedRuleset(ns, 'iptables-nft');
    const bin = faultBin({ fail: 'ip6tables-nft-restore' });
    const failed = meshctl(['install', ...args(ns, stateDir), '--confirm-within', '30s'], bin.env);
    expect(failed.status).toBe(1);
    expect(failed.stderr).toContain('RESTORE_FAILED');
    expect(normalizedRuleset(ns, 'iptables-nft')).toBe(before);
    expect(readLedger(dir)).toBeNull();
    // The revert was armed (its log exists: it is opened before the reverter starts) and then stopped again: no
    // process waits to revert anything for this state directory.
    expect(existsSync(revertLogPath(dir))).toBe(true);
    await waitFor(() => reverters(stateDir).length === 0, 10_000, 'the reverter to stop');
  });

  it('makes the reverter a no-op when no revert is armed for the install (it checks the ledger itself)', () => {
    const ns = freshNs('mn-cf-late');
    const stateDir = tempStateDir();
    expect(meshctl(['install', ...args(ns, stateDir)]).status).toBe(0);
    const id = readLedger(scopeDir(stateDir, ns))!.installId;
    const revert = meshctl(['uninstall', '--if-unconfirmed', id, '--netns', ns, '--state-dir', stateDir]);
    expect(revert.status).toBe(0);
    expect(revert.stdout).toContain(`revert of install ${id} in namespace ${ns} not needed: no revert is armed`);
    expect(meshctlResidue(ns).length).toBeGreaterThan(0);
    expect(meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir]).status).toBe(0);
  });
});
