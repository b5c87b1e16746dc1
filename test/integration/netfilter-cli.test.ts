// The capture commands as an operator runs them (bin/meshctl): SSH session exemption from SSH_CONNECTION, --dry-run
// printing exactly what would be applied, status exit codes (0 in sync, 3 not installed, 4 drifted), a missing
// namespace, and the TPROXY policy routes and ::6 passthrough address that install adds and uninstall removes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installCapture } from '../../src/netfilter/install.js';
import { captureStatus } from '../../src/netfilter/status.js';
import { uninstallCapture } from '../../src/netfilter/uninstall.js';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import {
  builtCli,
  deleteOurRule,
  labConfig,
  labEnv,
  labNamespaces,
  meshctl,
  meshctlResidue,
  normalizedRuleset,
  tempStateDir,
} from '../helpers/netfilter-lab.js';

const { freshNs, cleanup } = labNamespaces();
const base = (ns: string, stateDir: string, backend = 'iptables-nft') => [
  '--netns',
  ns,
  '--state-dir',
  stateDir,
  '--backend',
  backend,
  '--proxy-user',
  'nobody',
  '--ssh-ports',
  '22,2222',
  '--without-proxy',
];

describe.skipIf(!integrationEnabled)('capture commands through bin/meshctl', () => {
  beforeAll(() => builtCli());
  afterAll(cleanup);

  it('exempts the current SSH session (SSH_CONNECTION) and the SSH ports from inbound capture', () => {
    const ns = freshNs('mn-cli-ssh');
    const stateDir = tempStateDir();
    const env = { ...labEnv, SSH_CONNECTION: '203.0.113.7 51234 10.99.0.1 22' };
    expect(meshctl(['install', ...base(ns, stateDir)], env).status).toBe(0);
    const nat = inNs(ns, 'iptables-nft-save', ['-t', 'nat']);
    expect(nat).toContain(
      '-A MESHCTL_INBOUND -s 203.0.113.7/32 -p tcp -m tcp --sport 51234 -m comment --comment "meshctl:skip-ssh-session" -j RETURN',
    );
    expect(nat).toMatch(
      /-A MESHCTL_INBOUND -p tcp -m multiport --dports 22,2222 -m comment --comment "meshctl:skip-ssh" -j RETURN/,
    );
    // The exemption comes before the capture rule.
    expect(nat.indexOf('meshctl:skip-ssh-session')).toBeLessThan(nat.indexOf('meshctl:inbound-to-proxy'));
    expect(meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir]).status).toBe(0);
  });

  it('prints exactly the restore input with --dry-run and changes nothing', () => {
    const ns = freshNs('mn-cli-dry');
    const stateDir = tempStateDir();
    const before = normalizedRuleset(ns, 'iptables-legacy');
    const dry = meshctl(['install', ...base(ns, stateDir, 'iptables-legacy'), '--dry-run']);
    expect(dry.status).toBe(0);
    expect(dry.stdout).toMatch(
      /^# ipv4: ip netns exec mn-cli-dry iptables-legacy-restore --wait --noflush\n\*nat\n:MESHCTL_IN_REDIRECT - \[0:0\]/,
    );
    expect(dry.stdout).toContain('# ipv6: ip netns exec mn-cli-dry ip6tables-legacy-restore --wait --noflush\n*nat\n');
    expect(normalizedRuleset(ns, 'iptables-legacy')).toBe(before);
    expect(meshctl(['status', '--netns', ns, '--state-dir', stateDir]).status).toBe(3);
    // What the dry run printed is what install applies.
    const json = meshctl(['install', ...base(ns, stateDir, 'iptables-legacy'), '--json']);
    const applied = (JSON.parse(json.stdout) as { steps: { label: string; text: string }[] }).steps;
    expect(dry.stdout.replace(/^# .*\n/gm, '')).toBe(applied.map((s) => s.text).join(''));
    expect(meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir]).status).toBe(0);
  });

  it('exits 5 in sync with no proxy (rules fine, proxy not), 4 drifted (naming the rule), 3 not installed', async () => {
    const ns = freshNs('mn-cli-status');
    const stateDir = tempStateDir();
    expect(meshctl(['status', '--netns', ns, '--state-dir', stateDir]).status).toBe(3);
    expect(meshctl(['install', ...base(ns, stateDir)]).status).toBe(0);
    const ok = meshctl(['status', '--netns', ns, '--state-dir', stateDir, '--json']);
    expect(ok.status).toBe(5);
    expect(JSON.parse(ok.stdout)).toMatchObject({
      installed: true,
      inSync: true,
      backend: 'iptables-nft',
      exitCode: 5,
      verdict: 'proxy-unreachable',
      proxy: { state: 'unreachable' },
    });
    const text = meshctl(['status', '--netns', ns, '--state-dir', stateDir]);
    expect(text.stdout).toContain('rules: in sync with the installed plan');
    expect(text.stdout).toMatch(/proxy: UNREACHABLE on 127\.0\.0\.1:15000: nothing listens there/);
    expect(text.stdout).toContain('note: installed with --without-proxy: the proxy was not checked at install');
    expect(text.stdout).toContain('verdict: NOT PROTECTED: the rules are in place but no proxy answers');
    deleteOurRule(ns, 'iptables-nft', 'ipv6', 'meshctl:skip-proxy-gid');
    const drifted = meshctl(['status', '--netns', ns, '--state-dir', stateDir]);
    expect(drifted.status).toBe(4);
    expect(drifted.stdout).toContain('rules: DRIFTED from the installed plan');
    expect(drifted.stdout).toMatch(
      /ipv6: missing nat -A MESHCTL_OUTPUT -m owner --gid-owner 65534 -m comment --comment "meshctl:skip-proxy-gid" -j RETURN/,
    );
    const repaired = meshctl(['install', ...base(ns, stateDir)]);
    expect(repaired.stdout).toContain('repaired drifted capture in namespace mn-cli-status');
    expect(meshctl(['status', '--netns', ns, '--state-dir', stateDir]).status).toBe(5);
    expect(meshctl(['uninstall', '--netns', ns, '--state-dir', stateDir]).status).toBe(0);
    expect(meshctl(['status', '--netns', ns, '--state-dir', stateDir]).status).toBe(3);
  });

  it('names a missing namespace instead of touching anything', () => {
    const result = meshctl(['status', '--netns', 'mn-cli-nope', '--state-dir', tempStateDir()]);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(
      'meshctl: NETNS_NOT_FOUND: network namespace "mn-cli-nope" (from --netns) does not exist: /run/netns/mn-cli-nope is missing',
    );
    expect(result.stderr).toContain('hint:    list namespaces with `ip netns list`');
  });

  it('adds the TPROXY policy routes and the ::6 address, reports them missing as drift, and removes them on uninstall', async () => {
    const ns = freshNs('mn-cli-tproxy');
    const stateDir = tempStateDir();
    const config = labConfig(stateDir, 'iptables-legacy', { capture: { inbound: { mode: 'tproxy' } } });
    await installCapture({ config, netns: ns, env: labEnv });
    expect(inNs(ns, 'ip', ['-4', 'rule', 'show'])).toContain('32000:\tfrom all fwmark 0x539 lookup 133');
    expect(inNs(ns, 'ip', ['-6', 'rule', 'show'])).toContain('32000:\tfrom all fwmark 0x539 lookup 133');
    expect(inNs(ns, 'ip', ['-4', 'route', 'show', 'table', '133'])).toMatch(/^local default dev lo/);
    expect(inNs(ns, 'ip', ['-6', 'addr', 'show', 'dev', 'lo'])).toContain('inet6 ::6/128');
    expect(inNs(ns, 'iptables-legacy-save', ['-t', 'mangle'])).toContain(
      '-j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff',
    );

    inNs(ns, 'ip', ['-4', 'rule', 'del', 'fwmark', '0x539', 'lookup', '133', 'priority', '32000']);
    const status = await captureStatus({ stateDir, netns: ns, env: labEnv });
    expect(status.inSync).toBe(false);
    expect(status.missingExtras).toEqual(['ipv4 policy route fwmark 0x539 table 133']);
    expect((await installCapture({ config, netns: ns, env: labEnv })).action).toBe('repaired');
    expect(inNs(ns, 'ip', ['-4', 'rule', 'show'])).toContain('fwmark 0x539 lookup 133');

    await uninstallCapture({ stateDir, netns: ns, env: labEnv });
    expect(inNs(ns, 'ip', ['-4', 'rule', 'show'])).not.toContain('fwmark');
    expect(inNs(ns, 'ip', ['-6', 'rule', 'show'])).not.toContain('fwmark');
    expect(inNs(ns, 'ip', ['-4', 'route', 'show', 'table', 'all'])).not.toContain('table 133');
    expect(inNs(ns, 'ip', ['-6', 'addr', 'show', 'dev', 'lo'])).not.toContain('::6/128');
    expect(meshctlResidue(ns)).toEqual([]);
  });
});
