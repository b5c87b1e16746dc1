// meshctl verify on a real kernel: live probes through the installed rules with no proxy running. It passes on a
// correct install (original destination checked through SO_ORIGINAL_DST), fails precisely when a rule is removed,
// says so when the namespace has no route, and probes inbound capture from a peer namespace.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installCapture } from '../../src/netfilter/install.js';
import { uninstallCapture } from '../../src/netfilter/uninstall.js';
import { assertVerified, verifyCapture, type VerifyReport } from '../../src/probes/verify.js';
import { isMeshctlError } from '../../src/errors.js';
import { integrationEnabled } from '../helpers/integration.js';
import { createIsolatedNs, createVethPair, deleteNs, sh, spawnInNs } from '../helpers/netns.js';
import {
  BACKENDS,
  builtCli,
  deleteOutboundJump,
  labConfig,
  labEnv,
  meshctl,
  removeStateDirs,
  tempStateDir,
} from '../helpers/netfilter-lab.js';

const created = new Set<string>();
const short = { 'iptables-legacy': 'leg', 'iptables-nft': 'ipn', nftables: 'nft' } as const;

function probe(report: VerifyReport, family: string, name: string) {
  const found = report.probes.find((p) => p.family === family && p.name === name);
  if (!found)
    throw new Error(
      `no ${family} probe "${name}" in ${JSON.stringify(report.probes.map((p) => `${p.family} ${p.name}`))}`,
    );
  return found;
}

describe.skipIf(!integrationEnabled)('verify', () => {
  beforeAll(() => builtCli());
  afterAll(() => {
    for (const ns of created) deleteNs(ns);
    removeStateDirs();
  });

  describe.each(BACKENDS)('%s', (backend) => {
    it('passes on a correct install and fails naming the probe and the missing rule once a jump is removed', async () => {
      const ns = `mn-vf-${short[backend]}`;
      created.add(ns);
      createIsolatedNs(ns);
      const stateDir = tempStateDir();
      await installCapture({
        config: labConfig(stateDir, backend, {
          capture: { outbound: { excludePorts: [5432], excludeCidrs: ['198.51.100.0/24'] } },
        }),
        netns: ns,
        env: labEnv,
      });

      const good = await verifyCapture({ stateDir, netns: ns, env: labEnv });
      expect(good.ok, JSON.stringify(good.probes, null, 1)).toBe(true);
      for (const family of ['ipv4', 'ipv6']) {
        const out = probe(good, family, 'outbound from an ordinary uid');
        expect(out.status).toBe('pass');
        expect(out.detail).toBe(
          family === 'ipv4'
            ? 'arrived at :15001 with original destination 192.0.2.10:80'
            : 'arrived at :15001 with original destination [2001:db8::10]:80',
        );
        expect(probe(good, family, "outbound from the proxy's uid")).toMatchObject({
          status: 'pass',
          flow: expect.stringContaining('uid 1337'),
        });
        expect(probe(good, family, 'outbound to an excluded port')).toMatchObject({
          status: 'pass',
          flow: expect.stringContaining(':5432'),
        });
        expect(probe(good, family, "outbound from the proxy's uid").detail).toMatch(/^went direct/);
      }
      expect(probe(good, 'ipv4', 'outbound to an excluded CIDR (198.51.100.0/24)')).toMatchObject({ status: 'pass' });
      expect(probe(good, 'ipv4', 'inbound capture').status).toBe('skip');

      deleteOutboundJump(ns, backend, 'ipv4');
      const bad = await verifyCapture({ stateDir, netns: ns, env: labEnv });
      expect(bad.ok).toBe(false);
      expect(bad.probes.filter((p) => p.status === 'fail').map((p) => `${p.family} ${p.name}`)).toEqual([
        'ipv4 outbound from an ordinary uid',
      ]);
      // Going direct over the dummy link ends in a timeout or an unreachable error, depending on neighbour discovery.
      expect(probe(bad, 'ipv4', 'outbound from an ordinary uid').detail).toMatch(
        /^expected to arrive at :15001, but it did not \(connect E[A-Z]+\): it was not redirected$/,
      );
      expect(bad.drift.join('\n')).toContain('meshctl:outbound-capture');
      try {
        assertVerified(bad);
        expect.unreachable();
      } catch (error) {
        expect(isMeshctlError(error, 'VERIFY_FAILED')).toBe(true);
        expect((error as Error).message).toBe(
          `1 of ${bad.probes.filter((p) => p.status !== 'skip').length} live probes failed in namespace ${ns}`,
        );
        const details = (error as { details: string[] }).details.join('\n');
        expect(details).toContain(
          'ipv4 outbound from an ordinary uid: uid 4242 gid 4242 → 192.0.2.10:80: expected redirected to :15001',
        );
        expect(details).toMatch(/drift: .*missing rule .*meshctl:outbound-capture/);
      }
      if (backend === 'iptables-nft') {
        const cli = meshctl(['verify', '--netns', ns, '--state-dir', stateDir]);
        expect(cli.status).toBe(1);
        expect(cli.stdout).toContain('FAIL ipv4 outbound from an ordinary uid: uid 4242 gid 4242 → 192.0.2.10:80');
        expect(cli.stderr).toContain('meshctl: VERIFY_FAILED: 1 of');
      }
      await uninstallCapture({ stateDir, netns: ns, env: labEnv });
    });
  });

  it('says precisely that the namespace has no route instead of failing obscurely', async () => {
    const ns = 'mn-vf-noroute';
    created.add(ns);
    deleteNs(ns);
    sh('ip', ['netns', 'add', ns]);
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    const stateDir = tempStateDir();
    await installCapture({
      config: labConfig(stateDir, 'iptables-nft', { capture: { ipv6: 'off' } }),
      netns: ns,
      env: labEnv,
    });
    const report = await verifyCapture({ stateDir, netns: ns, env: labEnv });
    expect(report.ok).toBe(false);
    const failed = report.probes.find((p) => p.status === 'fail')!;
    expect(failed.detail).toMatch(
      /^IPv4 has no route to 192\.0\.2\.10 here \(ip route get: .*unreachable.*\), so connect\(\) fails with ENETUNREACH before the nat OUTPUT hook and no probe can run; add a default route \(e\.g\. `ip -n mn-vf-noroute route add default dev IFACE`\)$/i,
    );
  });

  it('judges by connection alone when the outbound port is held by a process that is not a meshctl proxy, and says so', async () => {
    const ns = 'mn-vf-busy';
    created.add(ns);
    createIsolatedNs(ns);
    const stateDir = tempStateDir();
    await installCapture({
      config: labConfig(stateDir, 'iptables-nft', { capture: { ipv6: 'off' } }),
      netns: ns,
      env: labEnv,
    });
    const proxy = spawnInNs(
      ns,
      process.execPath,
      ['-e', "require('net').createServer((s) => s.end()).listen(15001, '0.0.0.0', () => console.log('ready'))"],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve) => proxy.stdout!.once('data', () => resolve()));
      const report = await verifyCapture({ stateDir, netns: ns, env: labEnv });
      expect(report.ok, JSON.stringify(report.probes, null, 1)).toBe(true);
      expect(probe(report, 'ipv4', 'outbound from an ordinary uid').detail).toBe(
        'connected, but port 15001 is held by another process and no meshctl proxy answered at 127.0.0.1:15000/lookup (ECONNREFUSED), so the original destination was not checked',
      );
      expect(probe(report, 'ipv4', "outbound from the proxy's uid").detail).toMatch(/^went direct/);
    } finally {
      proxy.kill();
    }
  });

  it('probes inbound capture from a peer namespace, and the SSH port going direct', async () => {
    const [a, b] = ['mn-vf-in', 'mn-vf-in-peer'];
    created.add(a);
    created.add(b);
    createVethPair(a, b, 191);
    sh('ip', ['-n', a, 'route', 'add', 'default', 'dev', `${a}-v`]);
    sh('ip', ['-n', a, '-6', 'route', 'add', 'default', 'dev', `${a}-v`]);
    const stateDir = tempStateDir();
    await installCapture({ config: labConfig(stateDir, 'iptables-legacy'), netns: a, env: labEnv });
    const report = await verifyCapture({ stateDir, netns: a, peerNetns: b, env: labEnv });
    expect(report.ok, JSON.stringify(report.probes, null, 1)).toBe(true);
    expect(probe(report, 'ipv4', 'inbound from a peer').detail).toBe(
      'arrived at :15006 with original destination 10.191.0.1:8080',
    );
    expect(probe(report, 'ipv6', 'inbound from a peer').detail).toBe(
      'arrived at :15006 with original destination [fd00:191::1]:8080',
    );
    expect(probe(report, 'ipv4', 'inbound to the SSH port')).toMatchObject({
      status: 'pass',
      detail: 'went direct (connect ECONNREFUSED)',
    });
  });
});
