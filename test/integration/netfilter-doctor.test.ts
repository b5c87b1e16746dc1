// meshctl doctor on a real kernel: findings (each with a fix) for missing privileges (a non-root uid), IPv6
// disabled in the namespace, rules held by the other iptables backend, and other rule owners.
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runDoctor, type DoctorReport } from '../../src/netfilter/host/doctor.js';
import { integrationEnabled } from '../helpers/integration.js';
import {
  MESHCTL,
  addDockerLike,
  builtCli,
  labConfig,
  labEnv,
  labNamespaces,
  nsSysctl,
  restoreForeign,
  tempStateDir,
} from '../helpers/netfilter-lab.js';

const { freshNs, cleanup } = labNamespaces();
function finding(report: DoctorReport, id: string) {
  const found = report.findings.find((f) => f.id === id);
  if (!found) throw new Error(`no finding ${id}: ${report.findings.map((f) => f.id).join(', ')}`);
  return found;
}

describe.skipIf(!integrationEnabled)('doctor', () => {
  beforeAll(() => builtCli());
  afterAll(cleanup);

  it('finds nothing blocking in a clean namespace as root', async () => {
    const ns = freshNs('mn-dr-clean');
    const report = await runDoctor({ config: labConfig(tempStateDir(), 'iptables-nft'), netns: ns, env: labEnv });
    expect(report.ok, JSON.stringify(report.findings, null, 1)).toBe(true);
    expect(finding(report, 'privileges')).toMatchObject({ severity: 'ok', fix: null });
    expect(finding(report, 'ipv6').severity).toBe('ok');
    expect(finding(report, 'kernel-nat').message).toMatch(
      /^nat table: (registered in the kernel|built into the kernel|module|available)/,
    );
    expect(finding(report, 'kernel-owner').severity).toBe('ok');
    expect(report.findings.some((f) => f.id === 'backend-mix' || f.id === 'backend-other-rules')).toBe(false);
  });

  it('reports missing privileges, with a fix, when run as a non-root uid', () => {
    const ns = freshNs('mn-dr-nonroot');
    const result = spawnSync(
      process.execPath,
      [
        MESHCTL,
        'doctor',
        '--netns',
        ns,
        '--proxy-user',
        'nobody',
        '--ssh-ports',
        '22',
        '--state-dir',
        tempStateDir(),
        '--json',
      ],
      { encoding: 'utf8', uid: 65534, gid: 65534, env: labEnv, timeout: 60_000 },
    );
    expect(result.status, result.stderr).toBe(1);
    const report = JSON.parse(result.stdout) as DoctorReport;
    expect(report.ok).toBe(false);
    const privileges = finding(report, 'privileges');
    expect(privileges.severity).toBe('error');
    expect(privileges.message).toMatch(
      /^missing privileges: uid 65534 lacks CAP_NET_ADMIN and CAP_SYS_ADMIN \(to enter the namespace\)/,
    );
    expect(privileges.fix).toContain('run meshctl as root');
    expect(finding(report, 'namespace')).toMatchObject({ severity: 'error', fix: 'run as root' });
  });

  it('warns when IPv6 is disabled in the namespace but the config intercepts it', async () => {
    const ns = freshNs('mn-dr-noipv6');
    nsSysctl(ns, 'net.ipv6.conf.all.disable_ipv6', '1');
    const stateDir = tempStateDir();
    const intercept = finding(
      await runDoctor({ config: labConfig(stateDir, 'iptables-nft'), netns: ns, env: labEnv }),
      'ipv6',
    );
    expect(intercept.severity).toBe('warn');
    expect(intercept.message).toBe(
      'IPv6 is disabled here (net.ipv6.conf.all.disable_ipv6=1) but capture.ipv6 is "intercept": IPv6 rules would be installed for traffic that cannot exist, and the proxy\'s ::6 passthrough address cannot be added',
    );
    expect(intercept.fix).toContain('set capture.ipv6: off');
    const off = finding(
      await runDoctor({
        config: labConfig(stateDir, 'iptables-nft', { capture: { ipv6: 'off' } }),
        netns: ns,
        env: labEnv,
      }),
      'ipv6',
    );
    expect(off).toMatchObject({ severity: 'info', fix: null });
  });

  it('reports rules held by the other iptables backend, then the mix of both', async () => {
    const ns = freshNs('mn-dr-other');
    restoreForeign(ns, 'iptables-legacy', 'ipv4', '*filter\n-A INPUT -p tcp -m tcp --dport 9999 -j DROP\nCOMMIT\n');
    const config = labConfig(tempStateDir(), 'iptables-nft');
    const other = finding(await runDoctor({ config, netns: ns, env: labEnv }), 'backend-other-rules');
    expect(other.severity).toBe('warn');
    expect(other.message).toBe(
      "meshctl will use iptables-nft, but iptables-legacy holds 1 rules; those run too and may catch traffic before or after meshctl's capture",
    );
    expect(other.fix).toContain('iptables-legacy-save');

    restoreForeign(ns, 'iptables-nft', 'ipv4', '*filter\n-A OUTPUT -p tcp -m tcp --dport 9998 -j DROP\nCOMMIT\n');
    const mixed = await runDoctor({ config, netns: ns, env: labEnv });
    expect(finding(mixed, 'backend-mix').message).toMatch(
      /^both iptables-legacy \(1 rules\) and iptables-nft \(1 rules\) hold rules/,
    );
    expect(finding(mixed, 'backend-rules').message).toContain('rules held: iptables-legacy 1, iptables-nft 1');
  });

  it('names other rule owners such as Docker, with what meshctl does about them', async () => {
    const ns = freshNs('mn-dr-docker');
    addDockerLike(ns, 'iptables-nft');
    restoreForeign(ns, 'iptables-nft', 'ipv4', '*nat\n:ISTIO_OUTPUT - [0:0]\nCOMMIT\n');
    const report = await runDoctor({ config: labConfig(tempStateDir(), 'iptables-nft'), netns: ns, env: labEnv });
    expect(finding(report, 'owner-docker')).toMatchObject({
      severity: 'info',
      message: 'Docker rules present (DOCKER)',
    });
    expect(finding(report, 'owner-istio').severity).toBe('warn');
    expect(finding(report, 'owner-istio').fix).toContain('loop');
  });
});
