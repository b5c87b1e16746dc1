// Group lists match supplementary groups on a real kernel: a process whose primary group is its own (1000) but whose
// supplementary groups (set as `setpriv --groups` sets them) hold `apps` is captured under includeGids [apps], one
// without is not; one holding `batch` is exempt under excludeGids [batch]; explain (given the groups) agrees. iptables-nft and iptables-legacy
// (`--suppl-groups`); nftables cannot match supplementary groups, so install refuses the config there and changes
// nothing. Namespaces only.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { explainFlow } from '../../src/capture/explain.js';
import { planCapture } from '../../src/capture/plan.js';
import { renderIptablesRestore } from '../../src/capture/render-iptables.js';
import { isMeshctlError } from '../../src/errors.js';
import { isAddonAvailable } from '../../src/native/addon.js';
import { installCapture } from '../../src/netfilter/install.js';
import { runDoctor } from '../../src/netfilter/host/doctor.js';
import { integrationEnabled } from '../helpers/integration.js';
import { endpoint, hostContext, REMOTE, WG_ROUTES } from '../helpers/kernel-flows.js';
import { createLab, destroyLab, runClient, startObserver, warmChildScripts, type Lab } from '../helpers/kernel-lab.js';
import { restoreIptables } from '../helpers/kernel-rules.js';
import type { ObservedConnection } from '../helpers/kernel-observer.js';
import { ROOT, labConfig, labEnv, labNamespaces, rulesetOf, tempStateDir } from '../helpers/netfilter-lab.js';

const rawOf = (outbound: Record<string, unknown>) => ({
  capture: { ipv6: 'off', inbound: { enabled: false }, outbound },
});
const INCLUDE = rawOf({ includeGids: ['apps'] });
const EXCLUDE = rawOf({ excludeGids: ['batch'] });
const APPS = 2000;
const BATCH = 2100;
const labs = new Set<Lab>();
const { freshNs, cleanup } = labNamespaces();

/** Where a connection from uid/gid 1000 with `groups` to the peer's port 80 lands: `redirected` or `direct`. */
async function landing(lab: Lab, groups: number[]): Promise<string> {
  const [result] = await runClient(lab.host, {
    uid: 1000,
    gid: 1000,
    groups,
    timeoutMs: 3000,
    flows: [{ id: 'f', protocol: 'tcp', address: lab.peer4, port: 80 }],
  });
  if (result!.error) return `error ${result!.error}`;
  const c = result!.answer as unknown as ObservedConnection;
  return c.where === 'peer'
    ? 'direct'
    : c.orig
      ? `redirected to :${c.listener}, original ${endpoint(c.orig.address, c.orig.port)}`
      : `host ${c.local.port}`;
}

describe.skipIf(!integrationEnabled)('group lists match supplementary groups', () => {
  beforeAll(() => {
    if (!isAddonAvailable())
      throw new Error('the native addon is not built (build/Release/meshctl_native.node): run `npm ci`');
    warmChildScripts();
  });
  afterAll(() => {
    for (const lab of labs) destroyLab(lab);
    cleanup();
  });

  const runs = (['iptables-nft', 'iptables-legacy'] as const).flatMap((backend, b) => [
    {
      backend,
      index: b * 2,
      name: 'includeGids [apps]',
      raw: INCLUDE,
      expect: [
        [[APPS], 'redirected'],
        [[], 'direct'],
        [[999, BATCH], 'direct'],
      ] as const,
    },
    {
      backend,
      index: b * 2 + 1,
      name: 'excludeGids [batch]',
      raw: EXCLUDE,
      expect: [
        [[BATCH], 'direct'],
        [[APPS, BATCH], 'direct'],
        [[], 'redirected'],
        [[APPS], 'redirected'],
      ] as const,
    },
  ]);

  it.each(runs)(
    '$backend, $name: a supplementary group decides as a primary one would',
    async ({ backend, index, raw, expect: table }) => {
      const config = labConfig('/nonexistent', backend, raw);
      const plan = planCapture(config);
      const lab = createLab(`hk-gr${index}`, 150 + index, Object.values(REMOTE), WG_ROUTES);
      labs.add(lab);
      const observers = [
        await startObserver(lab.host, {
          where: 'host',
          tcp: [config.proxy.outboundPort],
          udp: [],
          udpAddresses: [],
          runAs: { uid: config.proxy.user.uid, gid: config.proxy.user.gid },
        }),
        await startObserver(lab.peer, { where: 'peer', tcp: [80], udp: [], udpAddresses: [] }),
      ];
      try {
        for (const family of plan.families)
          restoreIptables(
            lab.host,
            family.family,
            backend === 'iptables-nft' ? 'nft' : 'legacy',
            renderIptablesRestore(family),
          );
        const context = hostContext(lab);
        for (const [groups, verdict] of table) {
          const expected =
            verdict === 'direct'
              ? 'direct'
              : `redirected to :${config.proxy.outboundPort}, original ${endpoint(lab.peer4, 80)}`;
          expect(await landing(lab, [...groups]), `groups ${groups.join(',') || 'none'}`).toBe(expected);
          const e = explainFlow(
            plan,
            {
              direction: 'outbound',
              protocol: 'tcp',
              destination: { address: lab.peer4, port: 80 },
              uid: 1000,
              gid: 1000,
              groups,
            },
            context,
          );
          expect(e.verdict, `explain, groups ${groups.join(',') || 'none'}`).toBe(
            verdict === 'direct' ? 'bypassed' : 'redirected',
          );
        }
      } finally {
        for (const o of observers) o.stop();
        destroyLab(lab);
        labs.delete(lab);
      }
    },
  );

  it.each([
    ['includeGids', INCLUDE],
    ['excludeGids', EXCLUDE],
  ] as const)(
    'nftables: install refuses %s (CONFIG_INVALID, naming the field and the backend) and changes nothing',
    async (field, raw) => {
      const ns = freshNs(`hk-gr-nft-${field.slice(0, 2)}`);
      const before = rulesetOf(ns, 'nftables');
      let error: unknown = null;
      try {
        await installCapture({ config: labConfig(tempStateDir(), 'nftables', raw), netns: ns, env: labEnv });
      } catch (e) {
        error = e;
      }
      expect(isMeshctlError(error) && error.code).toBe('CONFIG_INVALID');
      expect((error as Error).message).toMatch(new RegExp(`capture\\.outbound\\.${field}.*nftables backend`));
      expect(rulesetOf(ns, 'nftables')).toBe(before);
    },
  );

  it('doctor says on nftables that group lists match the primary group only, and that this config is refused', async () => {
    const ns = freshNs('hk-gr-doc');
    const groups = (report: Awaited<ReturnType<typeof runDoctor>>) =>
      report.findings.find((f) => f.id === 'backend-groups');
    const refused = groups(
      await runDoctor({ config: labConfig(tempStateDir(), 'nftables', INCLUDE), netns: ns, env: labEnv }),
    );
    expect(refused).toMatchObject({ severity: 'error' });
    expect(refused!.message).toContain('primary group only');
    expect(refused!.message).toContain('capture.outbound.includeGids');
    expect(refused!.fix).toContain('--backend iptables-nft');
    const plain = groups(await runDoctor({ config: labConfig(tempStateDir(), 'nftables'), netns: ns, env: labEnv }));
    expect(plain).toMatchObject({ severity: 'info', fix: null });
    expect(
      groups(await runDoctor({ config: labConfig(tempStateDir(), 'iptables-nft', INCLUDE), netns: ns, env: labEnv })),
    ).toBeUndefined();
  });

  it('meshctl explain --groups takes the supplementary groups (names or gids) and the verdict follows them', () => {
    const dir = tempStateDir();
    const config = join(dir, 'groups.json');
    writeFileSync(
      config,
      JSON.stringify({ proxy: { user: 'nobody' }, capture: { outbound: { includeGids: [65534] } } }),
    );
    // src/cli/main.ts through the test TS loader: this tests the source, not a possibly stale dist/.
    const explain = (...extra: string[]) =>
      spawnSync(
        process.execPath,
        [
          '--import',
          join(ROOT, 'test/helpers/kernel-ts-register.mjs'),
          join(ROOT, 'src/cli/main.ts'),
          'explain',
          '--plan',
          '--json',
          '--out',
          '--dst',
          '10.1.2.3:80',
          '--uid',
          '1000',
          '--gid',
          '1000',
          '--config',
          config,
          '--ssh-ports',
          '22',
          '--state-dir',
          dir,
          ...extra,
        ],
        { encoding: 'utf8', env: labEnv, timeout: 60_000 },
      );
    const verdict = (r: ReturnType<typeof explain>) =>
      JSON.parse(r.stdout) as { verdict: string; decidedBy: { purpose: string } | null };
    const none = explain();
    expect(none.status, none.stderr).toBe(0);
    expect(verdict(none)).toMatchObject({ verdict: 'bypassed', decidedBy: { purpose: 'skip-gid-not-included' } });
    const held = explain('--groups', 'root,65534');
    expect(held.status, held.stderr).toBe(0);
    expect(verdict(held).verdict).toBe('redirected');
    const unknown = explain('--groups', 'hk-no-such-group');
    expect(unknown.status).not.toBe(0);
    expect(unknown.stderr).toContain('EXPLAIN_INPUT: --groups: group "hk-no-such-group" does not exist');
  });
});
