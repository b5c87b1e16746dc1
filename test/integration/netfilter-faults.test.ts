// Fault injection on a real kernel: a failing IPv6 restore (a wrapper first on PATH), and `kill -9` of meshctl at
// every kernel call of an install, update and uninstall, followed by another meshctl command. The host must end up
// fully before or fully after, never in between.
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/config/types.js';
import { configFromObject } from '../../src/config/load.js';
import { isMeshctlError } from '../../src/errors.js';
import { installCapture } from '../../src/netfilter/install.js';
import { readLedger, scopeDir } from '../../src/netfilter/transaction/ledger.js';
import { captureStatus } from '../../src/netfilter/status.js';
import { uninstallCapture } from '../../src/netfilter/uninstall.js';
import { integrationEnabled } from '../helpers/integration.js';
import { SOAK } from '../helpers/soak.js';
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
  meshctlDetached,
  meshctlResidue,
  normalizedRuleset,
  rulesetOf,
  tempStateDir,
  waitFor,
} from '../helpers/netfilter-lab.js';

const { freshNs, cleanup } = labNamespaces();
// A kill loop runs some 25 meshctl processes one after another (the killed command, status, recover, status per
// point): a minute on a quiet machine is plenty, not on a loaded one.
const KILL_LOOP_TIMEOUT_MS = 300_000;
/** The config the CLI builds from the flags in args() (proxy user nobody, sshd on 22), for in-process resets. */
function cliConfig(stateDir: string, backend: Backend, excludePort: number) {
  return configFromObject(
    {
      proxy: { user: 'nobody' },
      safety: { sshPorts: [22] },
      stateDir,
      capture: { backend, outbound: { excludePorts: [excludePort] } },
    },
    { env: {} },
  );
}

const ipv4Part = (ruleset: string): string => ruleset.slice(0, ruleset.indexOf('## ipv6'));
const variant = (backend: Backend) => (backend === 'iptables-legacy' ? 'legacy' : 'nft');

describe.skipIf(!integrationEnabled)('fault injection', () => {
  beforeAll(() => builtCli());
  afterAll(cleanup);

  describe.each(['iptables-legacy', 'iptables-nft'] as const)('%s: a failing IPv6 restore', (backend) => {
    it('leaves IPv4 exactly as before a fresh install and says it restored it', async () => {
      const ns = freshNs(`mn-ft-${BACKEND_SHORT[backend]}-v6`);
      const stateDir = tempStateDir();
      addDockerLike(ns, backend);
      const before = rulesetOf(ns, backend);
      const beforeNormalized = normalizedRuleset(ns, backend);
      const bin = faultBin({ fail: `ip6tables-${variant(backend)}-restore` });
      const error = await installCapture({ config: labConfig(stateDir, backend), netns: ns, env: bin.env }).catch(
        (e: unknown) => e,
      );
      expect(isMeshctlError(error, 'RESTORE_FAILED')).toBe(true);
      expect((error as Error).message).toMatch(
        /^applying the ipv6 rules for install failed; restored ipv4 and ipv6 to the previous rules \(ipv4 had already been applied\)$/,
      );
      expect((error as { details: string[] }).details.join('\n')).toContain(
        `ip6tables-${variant(backend)}-restore: line 3 failed`,
      );
      // IPv4 really was applied before the failure, then put back.
      expect(bin.calls()).toContain(`iptables-${variant(backend)}-restore --wait --noflush`);
      expect(ipv4Part(rulesetOf(ns, backend))).toBe(ipv4Part(before));
      // IPv6 too; legacy's --test instantiates an (empty) ip6 nat table, which normalisation ignores.
      expect(normalizedRuleset(ns, backend)).toBe(beforeNormalized);
      expect(readLedger(scopeDir(stateDir, ns))).toBeNull();
    });

    it('leaves IPv4 on the previous generation when an update fails in IPv6', async () => {
      const ns = freshNs(`mn-ft-${BACKEND_SHORT[backend]}-v6u`);
      const stateDir = tempStateDir();
      addDockerLike(ns, backend);
      const first = labConfig(stateDir, backend, { capture: { outbound: { excludePorts: [5432] } } });
      await installCapture({ config: first, netns: ns, env: labEnv });
      const installed = rulesetOf(ns, backend);
      const bin = faultBin({ fail: `ip6tables-${variant(backend)}-restore` });
      const error = await installCapture({
        config: labConfig(stateDir, backend, { capture: { outbound: { excludePorts: [6543] } } }),
        netns: ns,
        env: bin.env,
      }).catch((e: unknown) => e);
      expect(isMeshctlError(error, 'RESTORE_FAILED')).toBe(true);
      expect((error as Error).message).toContain('applying the ipv6 rules for update failed; restored ipv4');
      expect(rulesetOf(ns, backend)).toBe(installed);
      const status = await captureStatus({ stateDir, netns: ns, env: labEnv });
      expect(status.inSync).toBe(true);
      expect(status.configHash).toBe(first.hash);
    });
  });

  it('nftables: a failing nft transaction changes nothing', async () => {
    const ns = freshNs('mn-ft-nft-fail');
    const stateDir = tempStateDir();
    addDockerLike(ns, 'nftables');
    const before = rulesetOf(ns, 'nftables');
    const bin = faultBin({ fail: 'nft' });
    const error = await installCapture({ config: labConfig(stateDir, 'nftables'), netns: ns, env: bin.env }).catch(
      (e: unknown) => e,
    );
    expect(isMeshctlError(error, 'RESTORE_FAILED')).toBe(true);
    expect(bin.calls()).toContain('nft -c -f -');
    expect(rulesetOf(ns, 'nftables')).toBe(before);
    expect(readLedger(scopeDir(stateDir, ns))).toBeNull();
  });

  // The kill loops run the same transaction code on every backend; npm test kills iptables-nft and nftables (one
  // xtables and the native backend), npm run test:soak iptables-legacy too.
  describe.each(BACKENDS.filter((b) => SOAK || b !== 'iptables-legacy'))('%s: kill -9', (backend) => {
    const args = (ns: string, stateDir: string, ...extra: string[]) => [
      '--netns',
      ns,
      '--state-dir',
      stateDir,
      '--backend',
      backend,
      '--proxy-user',
      'nobody',
      '--ssh-ports',
      '22',
      '--without-proxy',
      ...extra,
    ];

    /**
     * Runs `command` paused at call `at`, kills its whole process group with SIGKILL, checks that `meshctl status`
     * changes nothing, runs `meshctl recover`, then `meshctl status` (0 never: no proxy runs, so 5 at best).
     */
    async function killAt(
      command: string[],
      at: number,
      when: 'before' | 'after',
      ns: string,
      stateDir: string,
    ): Promise<{ status: number | null; reached: boolean }> {
      const bin = faultBin({ pauseAt: at, pauseWhen: when });
      const child = meshctlDetached(command, bin.env);
      let exited = false;
      child.on('exit', () => {
        exited = true;
      });
      await waitFor(() => existsSync(bin.paused) || exited, 30_000, `call ${at} of ${command[0]}`);
      const reached = existsSync(bin.paused);
      if (!exited) process.kill(-child.pid!, 'SIGKILL');
      await waitFor(() => exited, 30_000, 'the killed meshctl to exit');
      // status changes nothing, even with a transaction left half-done: it names the command that finishes it.
      const killedState = normalizedRuleset(ns, backend);
      const interrupted = readLedger(scopeDir(stateDir, ns))?.state === 'in-progress';
      const seen = meshctl(['status', '--netns', ns, '--state-dir', stateDir]);
      expect(normalizedRuleset(ns, backend)).toBe(killedState);
      if (interrupted) {
        expect(seen.status, seen.stdout).toBe(4);
        expect(seen.stdout).toMatch(new RegExp(`rules: INTERRUPTED \\w+ .*run \`meshctl recover --netns ${ns}\``));
      }
      const recovered = meshctl(['recover', '--netns', ns, '--state-dir', stateDir]);
      expect(recovered.status, recovered.stderr).toBe(0);
      if (!interrupted) expect(recovered.stdout).toContain('nothing to recover');
      const status = meshctl(['status', '--netns', ns, '--state-dir', stateDir]);
      return { status: status.status, reached };
    }

    it(
      'leaves the host fully before or fully after an install killed at any kernel call',
      async () => {
        const ns = freshNs(`mn-ft-${BACKEND_SHORT[backend]}-kill`);
        const stateDir = tempStateDir();
        addDockerLike(ns, backend);
        const before = normalizedRuleset(ns, backend);
        const probe = faultBin();
        expect(meshctl(['install', ...args(ns, stateDir)], probe.env).status).toBe(0);
        const after = normalizedRuleset(ns, backend);
        const calls = probe.calls();
        expect(meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir]).status).toBe(0);
        expect(normalizedRuleset(ns, backend)).toBe(before);

        // The first read, the first check, every apply (killed before it ran and after it ran, before meshctl learned
        // the result) and the first read-back: every state the transaction can be in.
        const applies = calls
          .map((c, i) => ({ c, at: i + 1 }))
          .filter(({ c }) => /-restore --wait --noflush$|^nft -f -$/.test(c))
          .map(({ at }) => at);
        const firstCheck = calls.findIndex((c) => / --test| -c -f/.test(c)) + 1;
        const readBack = applies.at(-1)! + 1;
        expect(firstCheck).toBeGreaterThan(1);
        expect(applies).toHaveLength(backend === 'nftables' ? 1 : 2);
        expect(calls[readBack - 1]).toMatch(/-save|^nft list ruleset/);
        // The first read changes nothing and writes no ledger (the same outcome as the first check, which does
        // write an in-progress ledger): npm test skips it, npm run test:soak kills there too.
        const points: [number, 'before' | 'after'][] = [
          ...(SOAK ? [[1, 'before'] as [number, 'before']] : []),
          [firstCheck, 'before'],
          ...applies.flatMap((at): [number, 'before' | 'after'][] => [
            [at, 'before'],
            [at, 'after'],
          ]),
          [readBack, 'before'],
        ];
        const outcomes: string[] = [];
        for (const [at, when] of points) {
          const { status, reached } = await killAt(['install', ...args(ns, stateDir)], at, when, ns, stateDir);
          expect(reached, `pause point ${at} (${calls[at - 1]}) reached`).toBe(true);
          const now = normalizedRuleset(ns, backend);
          const where = now === before ? 'before' : now === after ? 'after' : 'BETWEEN';
          outcomes.push(`${at} ${when} ${calls[at - 1]}: ${where}`);
          expect(where, `killed ${when} call ${at} (${calls[at - 1]}):\n${now}`).not.toBe('BETWEEN');
          // recover finished any interrupted transaction: "after" is installed and in sync (5: rules fine, no proxy),
          // "before" has no ledger.
          expect(status).toBe(where === 'after' ? 5 : 3);
          expect(readLedger(scopeDir(stateDir, ns))?.state ?? 'none').toBe(where === 'after' ? 'installed' : 'none');
          if (where === 'after') await uninstallCapture({ stateDir, netns: ns, env: labEnv });
        }
        // Killing after the last apply but before the ledger says installed must be rolled back, not kept half-known.
        expect(outcomes.some((o) => o.endsWith('before'))).toBe(true);
        expect(meshctlResidue(ns)).toEqual([]);
      },
      KILL_LOOP_TIMEOUT_MS,
    );

    it(
      'leaves the previous or the new generation when an update is killed, and installed-or-gone when an uninstall is',
      async () => {
        const ns = freshNs(`mn-ft-${BACKEND_SHORT[backend]}-kup`);
        const stateDir = tempStateDir();
        addDockerLike(ns, backend);
        const before = normalizedRuleset(ns, backend);
        const firstConfig = cliConfig(stateDir, backend, 5432);
        expect(meshctl(['install', ...args(ns, stateDir, '--outbound-exclude-ports', '5432')]).status).toBe(0);
        const first = normalizedRuleset(ns, backend);
        const probe = faultBin();
        expect(meshctl(['install', ...args(ns, stateDir, '--outbound-exclude-ports', '6543')], probe.env).status).toBe(
          0,
        );
        const second = normalizedRuleset(ns, backend);
        const updateCalls = probe.calls();
        await installCapture({ config: firstConfig, netns: ns, env: labEnv });
        expect(normalizedRuleset(ns, backend)).toBe(first);

        const applies = updateCalls
          .map((c, i) => ({ c, at: i + 1 }))
          .filter(({ c }) => /-restore --wait --noflush$|^nft -f -$/.test(c));
        for (const { at } of applies) {
          // Killed before an apply, an update leaves the previous generation (as the install test shows for a first
          // install); npm test kills after each apply only, npm run test:soak both ways.
          for (const when of SOAK ? (['before', 'after'] as const) : (['after'] as const)) {
            const { status, reached } = await killAt(
              ['install', ...args(ns, stateDir, '--outbound-exclude-ports', '6543')],
              at,
              when,
              ns,
              stateDir,
            );
            expect(reached).toBe(true);
            const now = normalizedRuleset(ns, backend);
            expect([first, second], `update killed ${when} call ${at}`).toContain(now);
            expect(status).toBe(5);
            if (now === second) await installCapture({ config: firstConfig, netns: ns, env: labEnv });
          }
        }

        const uninstallProbe = faultBin();
        expect(meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir], uninstallProbe.env).status).toBe(0);
        const removals = uninstallProbe
          .calls()
          .map((c, i) => ({ c, at: i + 1 }))
          .filter(({ c }) => /-restore --wait --noflush$|^nft -f -$/.test(c));
        await installCapture({ config: firstConfig, netns: ns, env: labEnv });
        for (const { at } of removals) {
          const { status, reached } = await killAt(
            ['uninstall', '--netns', ns, '--state-dir', stateDir],
            at,
            'after',
            ns,
            stateDir,
          );
          expect(reached).toBe(true);
          // The interrupted uninstall is completed by `meshctl recover`.
          expect(normalizedRuleset(ns, backend)).toBe(before);
          expect(status).toBe(3);
          await installCapture({ config: firstConfig, netns: ns, env: labEnv });
        }
        expect(meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir]).status).toBe(0);
        expect(normalizedRuleset(ns, backend)).toBe(before);
      },
      KILL_LOOP_TIMEOUT_MS,
    );
  });
});
