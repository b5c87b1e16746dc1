// Busy hosts: another tool (test/helpers/rule-writer.ts) adds and removes nat and filter rules every ~20 ms in the
// same namespace while meshctl installs, re-installs, uninstalls and reverts an unconfirmed install, on every backend.
// Every operation must succeed, leave no residue after uninstall/revert, and lose no foreign rule: neither the stable
// Docker-like ones nor any of the writer's that the writer did not delete itself. A revert that cannot succeed
// gives up at its hard deadline and says so in status and confirm.
// The normal suite runs 10 uninstalls and 3 reverts per backend; `npm run test:soak` (MESHCTL_SOAK=1) runs the
// issue's measure, 100 and 30.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/config/types.js';
import { isMeshctlError } from '../../src/errors.js';
import { installCapture } from '../../src/netfilter/install.js';
import { readLedger, scopeDir } from '../../src/netfilter/transaction/ledger.js';
import { revertLogPath } from '../../src/netfilter/transaction/revert.js';
import { revertUnconfirmed, uninstallCapture } from '../../src/netfilter/uninstall.js';
import { integrationEnabled } from '../helpers/integration.js';
import {
  BACKEND_SHORT,
  BACKENDS,
  addDockerLike,
  builtCli,
  faultBin,
  labConfig,
  labEnv,
  labNamespaces,
  meshctl,
  meshctlResidue,
  tempStateDir,
  waitFor,
} from '../helpers/netfilter-lab.js';
import { foreignRules, lostStableRules, startRuleWriter, type RuleWriter } from '../helpers/rule-writer.js';

const SOAK = process.env.MESHCTL_SOAK === '1';
const UNINSTALLS = SOAK ? 100 : 10;
const REVERTS = SOAK ? 30 : 3;

const { freshNs, cleanup } = labNamespaces();
const writers: RuleWriter[] = [];

function describeError(error: unknown): string {
  if (isMeshctlError(error)) return [`${error.code}: ${error.message}`, ...error.details].join('\n    ');
  return String(error instanceof Error ? error.stack : error);
}

/** What an operation lost: stable foreign rules, and writer rules the writer did not delete. */
async function lostRules(writer: RuleWriter, before: readonly string[], after: readonly string[]): Promise<string[]> {
  return [
    ...lostStableRules(before, after).map((l) => `stable: ${l}`),
    ...(await writer.lostWriterRules(before, after)).map((l) => `writer's: ${l}`),
  ];
}

describe.skipIf(!integrationEnabled)('a concurrent rule writer', () => {
  beforeAll(() => builtCli());
  afterAll(async () => {
    await Promise.all(writers.map((w) => w.stop()));
    cleanup();
  });

  describe.each(BACKENDS)('%s', (backend: Backend) => {
    it(
      `install, re-install and uninstall ${UNINSTALLS} times while it writes: 0 failures, 0 residue, 0 foreign rules lost`,
      async () => {
        const ns = freshNs(`hb-cw-${BACKEND_SHORT[backend]}-u`);
        const stateDir = tempStateDir();
        addDockerLike(ns, backend);
        const writer = startRuleWriter(ns, backend);
        writers.push(writer);
        await waitFor(
          () => writer.rounds() >= 5,
          10_000,
          () => `the writer to start (errors: ${writer.errors().join('; ')})`,
        );
        const first = labConfig(stateDir, backend, { capture: { outbound: { excludePorts: [5432] } } });
        const second = labConfig(stateDir, backend, { capture: { outbound: { excludePorts: [6543] } } });
        const failures: string[] = [];
        let raced = 0;
        const roundsAtStart = writer.rounds();
        for (let i = 1; i <= UNINSTALLS; i++) {
          const before = foreignRules(ns, backend);
          try {
            const installed = await installCapture({ config: first, netns: ns, env: labEnv });
            if (installed.action !== 'installed') failures.push(`cycle ${i}: install: ${installed.action}`);
            const updated = await installCapture({ config: second, netns: ns, env: labEnv });
            if (updated.action !== 'updated') failures.push(`cycle ${i}: re-install: ${updated.action}`);
            const removed = await uninstallCapture({ stateDir, netns: ns, env: labEnv });
            if (removed.action !== 'uninstalled') failures.push(`cycle ${i}: uninstall: ${removed.action}`);
            raced += removed.raced.added.length + removed.raced.removed.length;
          } catch (error) {
            failures.push(`cycle ${i}: ${describeError(error)}`);
            await uninstallCapture({ stateDir, netns: ns, env: labEnv }).catch(() => undefined);
          }
          const residue = meshctlResidue(ns);
          if (residue.length > 0) failures.push(`cycle ${i}: residue after uninstall: ${residue.join(' | ')}`);
          for (const lost of await lostRules(writer, before, foreignRules(ns, backend)))
            failures.push(`cycle ${i}: foreign rule lost: ${lost}`);
        }
        expect(failures).toEqual([]);
        // Not vacuous: the writer kept writing throughout, and uninstall saw (and tolerated) its changes.
        expect(writer.rounds() - roundsAtStart).toBeGreaterThan(UNINSTALLS);
        expect(raced).toBeGreaterThan(0);
        await writer.stop();
      },
      SOAK ? 3_600_000 : 120_000,
    );

    it(
      `reverts ${REVERTS} unconfirmed installs while it writes: capture gone after the deadline, 0 foreign rules lost`,
      async () => {
        const ns = freshNs(`hb-cw-${BACKEND_SHORT[backend]}-r`);
        const stateDir = tempStateDir();
        const dir = scopeDir(stateDir, ns);
        addDockerLike(ns, backend);
        const writer = startRuleWriter(ns, backend);
        writers.push(writer);
        await waitFor(
          () => writer.rounds() >= 5,
          10_000,
          () => `the writer to start (errors: ${writer.errors().join('; ')})`,
        );
        const config = labConfig(stateDir, backend);
        const failures: string[] = [];
        for (let i = 1; i <= REVERTS; i++) {
          const before = foreignRules(ns, backend);
          const installed = await installCapture({
            config,
            netns: ns,
            env: labEnv,
            confirmWithinMs: 1000,
            confirmMechanism: 'detached-process',
          });
          const deadline = Date.parse(readLedger(dir)!.confirm!.deadline);
          // Bound: the deadline, plus node's start and the reverter's attempts on a loaded 2-core machine.
          await waitFor(
            () => readLedger(dir) === null && meshctlResidue(ns).length === 0,
            deadline - Date.now() + 30_000,
            () =>
              `revert ${i} of ${installed.installId}: ledger ${readLedger(dir) ? 'still there' : 'gone'}, residue ${meshctlResidue(ns).join(' | ')}; revert log:\n${readFileSync(revertLogPath(dir), 'utf8')}`,
          );
          const log = readFileSync(revertLogPath(dir), 'utf8');
          if (!log.includes(`reverted install ${installed.installId}`))
            failures.push(
              `revert ${i}: the revert log does not say install ${installed.installId} was reverted:\n${log}`,
            );
          for (const lost of await lostRules(writer, before, foreignRules(ns, backend)))
            failures.push(`revert ${i}: foreign rule lost: ${lost}`);
        }
        expect(failures).toEqual([]);
        await writer.stop();
      },
      SOAK ? 3_600_000 : 120_000,
    );
  });

  it('a revert that keeps failing gives up at its hard deadline, logs every attempt, and status and confirm say REVERT FAILED', async () => {
    const ns = freshNs('hb-cw-gaveup');
    const stateDir = tempStateDir();
    const dir = scopeDir(stateDir, ns);
    // The armed reverter is /bin/true (it does nothing); the test runs the reverter's loop itself, with every
    // `nft -f` failing, and a hard deadline 1.5 s after the confirm deadline.
    const installed = await installCapture({
      config: labConfig(stateDir, 'nftables'),
      netns: ns,
      env: labEnv,
      confirmWithinMs: 500,
      confirmMechanism: 'detached-process',
      meshctlCommand: ['/bin/true'],
    });
    await waitFor(
      () => Date.now() > Date.parse(readLedger(dir)!.confirm!.deadline) + 600,
      5000,
      'the confirm deadline to pass',
    );
    const bin = faultBin({ fail: 'nft' });
    const error = await revertUnconfirmed({
      stateDir,
      netns: ns,
      env: bin.env,
      installId: installed.installId!,
      giveUpAfterMs: 1500,
      retry: { firstDelayMs: 100, maxDelayMs: 400 },
    }).catch((e: unknown) => e);
    expect(isMeshctlError(error, 'REVERT_FAILED')).toBe(true);
    const failed = readLedger(dir)!.confirm!.revertFailed!;
    expect(failed.attempts).toBeGreaterThanOrEqual(2);
    expect(failed.error).toMatch(/^RESTORE_FAILED: /);
    const log = readFileSync(revertLogPath(dir), 'utf8');
    for (let n = 1; n < failed.attempts; n++)
      expect(log).toContain(`revert attempt ${n} of install ${installed.installId} failed; trying again in`);
    expect(log).toContain(`revert attempt ${failed.attempts} of install ${installed.installId} failed; giving up`);
    expect(meshctlResidue(ns)).toContain('table inet meshctl');

    const status = meshctl(['status', '--netns', ns, '--state-dir', stateDir]);
    expect(status.stdout).toContain(
      `REVERT FAILED at ${failed.at} after ${failed.attempts} attempts: RESTORE_FAILED: `,
    );
    const confirmed = meshctl(['confirm', '--netns', ns, '--state-dir', stateDir]);
    expect(confirmed.status).toBe(0);
    expect(confirmed.stdout).toContain(`REVERT FAILED at ${failed.at} after ${failed.attempts} attempts`);
    expect(meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir]).status).toBe(0);
    expect(meshctlResidue(ns)).toEqual([]);
  }, 60_000);
});
