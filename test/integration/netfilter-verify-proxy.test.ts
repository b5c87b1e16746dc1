// meshctl verify with the real proxy running (as nobody, two workers, access log off) and holding 15001/15006, so
// verify cannot listen there and asks the proxy's /lookup instead. Nothing listens on the probe ports: the proxy
// accepts each probe and fails to connect upstream (connect-failed ECONNREFUSED), which is a redirect all the
// same. 10 runs in a row pass (50 in npm run test:soak); a connection the proxy still holds (upstream SYNs dropped) is found live; rules
// removed by hand fail the right probes, saying the proxy never saw them.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/config/types.js';
import { assertVerified, verifyCapture, type ProbeResult, type VerifyReport } from '../../src/probes/verify.js';
import { isMeshctlError } from '../../src/errors.js';
import { integrationEnabled } from '../helpers/integration.js';
import { meshctl } from '../helpers/netfilter-lab.js';
import { inNs } from '../helpers/netns.js';
import { createProxyLab, labConfigObject, type ProxyLab, type RunningProxy } from '../helpers/proxy-lab.js';
import { soakCount } from '../helpers/soak.js';

const SUBNET = 196;
const RUNS = soakCount(10, 50);

function probe(report: VerifyReport, family: string, name: string): ProbeResult {
  const found = report.probes.find((p) => p.family === family && p.name === name);
  if (!found)
    throw new Error(
      `no ${family} probe "${name}" in ${JSON.stringify(report.probes.map((p) => `${p.family} ${p.name}`))}`,
    );
  return found;
}

function failures(report: VerifyReport): string[] {
  return report.probes.filter((p) => p.status === 'fail').map((p) => `${p.family} ${p.name}: ${p.detail}`);
}

/** Empties every nat chain of ours in `ns`, behind meshctl's back (capture silently off, chains still there). */
function flushOurChains(ns: string, backend: Backend): void {
  if (backend === 'nftables') {
    const chains = inNs(ns, 'nft', ['list', 'table', 'inet', 'meshctl'])
      .split('\n')
      .map((l) => /^\s*chain (\S+) \{/.exec(l)?.[1])
      .filter((c): c is string => c !== undefined);
    inNs(ns, 'nft', ['-f', '-'], chains.map((c) => `flush chain inet meshctl ${c}\n`).join(''));
    return;
  }
  const variant = backend === 'iptables-legacy' ? 'legacy' : 'nft';
  for (const tool of ['iptables', 'ip6tables']) {
    const chains = inNs(ns, `${tool}-${variant}-save`, ['-t', 'nat'])
      .split('\n')
      .map((l) => /^:(MESHCTL_\S+)/.exec(l)?.[1])
      .filter((c): c is string => c !== undefined);
    inNs(
      ns,
      `${tool}-${variant}-restore`,
      ['--wait', '--noflush'],
      `*nat\n${chains.map((c) => `-F ${c}\n`).join('')}COMMIT\n`,
    );
  }
}

describe.skipIf(!integrationEnabled)('verify with the proxy running', () => {
  let lab: ProxyLab;
  let proxy: RunningProxy;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;
  const verify = () => verifyCapture({ stateDir, netns: lab.client, peerNetns: lab.server, env });

  beforeAll(async () => {
    const raw = labConfigObject({
      proxy: { workers: 2, accessLog: { enabled: false } },
      capture: { outbound: { excludePorts: [5432] } },
    });
    lab = await createProxyLab('vp', SUBNET, raw, 'hv');
    stateDir = join(lab.dir, 'state');
    env = { ...process.env, XTABLES_LOCKFILE: join(lab.dir, 'xtables.lock') };
    // The TEST-NET addresses the probes dial live in the server namespace, where nothing listens: every connection
    // to them, the proxy's and the direct ones, is refused at once.
    inNs(lab.client, 'ip', ['route', 'add', 'default', 'via', lab.addrs.b4]);
    inNs(lab.client, 'ip', ['-6', 'route', 'add', 'default', 'via', lab.addrs.b6]);
    inNs(lab.server, 'ip', ['addr', 'add', '192.0.2.10/32', 'dev', 'lo']);
    inNs(lab.server, 'ip', ['-6', 'addr', 'add', '2001:db8::10/128', 'dev', 'lo']);
    proxy = await lab.startProxy(lab.writeConfig(raw).file);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it(`passes ${RUNS} runs in a row, confirming each redirect through the proxy's /lookup`, async () => {
    const failed: string[] = [];
    let last: VerifyReport | null = null;
    for (let run = 1; run <= RUNS; run++) {
      last = await verify();
      failed.push(...failures(last).map((f) => `run ${run}: ${f}`));
    }
    expect(failed).toEqual([]);
    const report = last!;
    for (const [family, dst] of [
      ['ipv4', '192.0.2.10:80'],
      ['ipv6', '[2001:db8::10]:80'],
    ] as const) {
      expect(probe(report, family, 'outbound from an ordinary uid').detail).toMatch(
        new RegExp(
          `^the proxy at :15001 accepted it with original destination ${dst.replace(/[.[\]]/g, '\\$&')} \\((closed: |connecting, )connect-failed ECONNREFUSED\\)$`,
        ),
      );
      expect(probe(report, family, "outbound from the proxy's uid")).toMatchObject({
        status: 'pass',
        detail: 'went direct (connect ECONNREFUSED)',
      });
      expect(probe(report, family, 'outbound to an excluded port')).toMatchObject({
        status: 'pass',
        detail: 'went direct (connect ECONNREFUSED)',
      });
      expect(probe(report, family, 'inbound to the SSH port')).toMatchObject({
        status: 'pass',
        detail: 'went direct (connect ECONNREFUSED)',
      });
    }
    expect(probe(report, 'ipv4', 'inbound from a peer').detail).toMatch(
      /^the proxy at :15006 accepted it with original destination 10\.196\.0\.1:8080 \((closed: |connecting, )connect-failed ECONNREFUSED\)$/,
    );
    expect(probe(report, 'ipv6', 'inbound from a peer').detail).toMatch(
      /^the proxy at :15006 accepted it with original destination \[fd00:196::1\]:8080 \((closed: |connecting, )connect-failed ECONNREFUSED\)$/,
    );
  }, 120_000);

  it('finds a connection the proxy still holds (its upstream SYNs dropped) in the live table', async () => {
    inNs(
      lab.server,
      'nft',
      ['-f', '-'],
      'table inet hv_drop { chain input { type filter hook input priority 0; tcp dport 80 drop; }; }\n',
    );
    try {
      const report = await verify();
      expect(failures(report)).toEqual([]);
      expect(probe(report, 'ipv4', 'outbound from an ordinary uid').detail).toBe(
        'the proxy at :15001 accepted it with original destination 192.0.2.10:80 (connecting)',
      );
      expect(probe(report, 'ipv6', 'outbound from an ordinary uid').detail).toBe(
        'the proxy at :15001 accepted it with original destination [2001:db8::10]:80 (connecting)',
      );
      expect(probe(report, 'ipv4', "outbound from the proxy's uid").detail).toBe('went direct (connect ETIMEDOUT)');
    } finally {
      inNs(lab.server, 'nft', ['delete', 'table', 'inet', 'hv_drop']);
    }
  });

  it('fails only the outbound IPv4 probe once its jump is deleted by hand, saying the proxy never saw it', async () => {
    const before = await verify();
    expect(failures(before)).toEqual([]);
    const backend = before.backend;
    if (backend === 'nftables') {
      const line = inNs(lab.client, 'nft', ['-a', 'list', 'chain', 'inet', 'meshctl', 'v4_nat_OUTPUT'])
        .split('\n')
        .find((l) => l.includes('"meshctl:outbound-capture"'))!;
      inNs(lab.client, 'nft', [
        'delete',
        'rule',
        'inet',
        'meshctl',
        'v4_nat_OUTPUT',
        'handle',
        /# handle (\d+)/.exec(line)![1]!,
      ]);
    } else {
      const tool = backend === 'iptables-legacy' ? 'iptables-legacy' : 'iptables-nft';
      const line = inNs(lab.client, `${tool}-save`, ['-t', 'nat'])
        .split('\n')
        .find((l) => l.startsWith('-A OUTPUT ') && l.includes('meshctl:outbound-capture'))!;
      inNs(lab.client, `${tool}-restore`, ['--wait', '--noflush'], `*nat\n-D ${line.slice(3)}\nCOMMIT\n`);
    }
    const report = await verify();
    expect(report.ok).toBe(false);
    expect(report.probes.filter((p) => p.status === 'fail').map((p) => `${p.family} ${p.name}`)).toEqual([
      'ipv4 outbound from an ordinary uid',
    ]);
    expect(probe(report, 'ipv4', 'outbound from an ordinary uid').detail).toMatch(
      /^the proxy holding :15001 has no connection from 10\.196\.0\.1:\d+, open or among the last 256 it closed per worker \(connect ECONNREFUSED\): it was not redirected$/,
    );
    expect(report.drift.join('\n')).toContain('meshctl:outbound-capture');
    try {
      assertVerified(report);
      expect.unreachable();
    } catch (error) {
      expect(isMeshctlError(error, 'VERIFY_FAILED')).toBe(true);
      expect((error as { details: string[] }).details.join('\n')).toContain(
        'ipv4 outbound from an ordinary uid: uid 4242 gid 4242 → 192.0.2.10:80: expected redirected to :15001',
      );
    }
  });

  it('fails every captured probe, and only those, once our chains are flushed by hand (the CLI exits 1)', async () => {
    const backend = (await verify()).backend;
    flushOurChains(lab.client, backend);
    const cli = meshctl(['verify', '--netns', lab.client, '--peer-netns', lab.server, '--state-dir', stateDir], env);
    expect(cli.status, cli.stderr).toBe(1);
    expect(cli.stderr).toContain('meshctl: VERIFY_FAILED: 4 of');
    for (const family of ['ipv4', 'ipv6']) {
      const [v4, v6] = [`10.${SUBNET}.0`, `fd00:${SUBNET}:`];
      const src = family === 'ipv4' ? `${v4.replace(/\./g, '\\.')}\\.1:\\d+` : `\\[${v6}:1\\]:\\d+`;
      const peer = family === 'ipv4' ? `${v4.replace(/\./g, '\\.')}\\.2:\\d+` : `\\[${v6}:2\\]:\\d+`;
      expect(cli.stdout).toMatch(
        new RegExp(
          `FAIL ${family} outbound from an ordinary uid: .*\\n.*\\n +seen: the proxy holding :15001 has no connection from ${src}, open or among the last 256 it closed per worker \\(connect ECONNREFUSED\\): it was not redirected\\n`,
        ),
      );
      expect(cli.stdout).toMatch(
        new RegExp(
          `FAIL ${family} inbound from a peer: .*\\n.*\\n +seen: the proxy holding :15006 has no connection from ${peer}, open or among the last 256 it closed per worker \\(connect ECONNREFUSED\\): it was not redirected\\n`,
        ),
      );
      expect(cli.stdout).toContain(`pass ${family} outbound from the proxy's uid`);
      expect(cli.stdout).toContain(`pass ${family} inbound to the SSH port`);
    }
  });
});
