// The contract between capture and proxy, on the real kernel: a real proxy (nobody, uid 65534) in a client
// namespace, `meshctl install` run against it through bin/meshctl. Install refuses rules that would exempt another
// user or redirect DNS to a port the proxy does not serve (and accepts DNS capture from a proxy started with DNS),
// and changes nothing; rules installed anyway
// (--without-proxy) make the proxy's own connections loop back, which it refuses at once, staying up with a few
// fds and saying why on /ready and in `meshctl status`; status tells a stopped or differently-run proxy apart.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLedger, scopeDir } from '../../src/netfilter/transaction/ledger.js';
import { integrationEnabled } from '../helpers/integration.js';
import { builtCli, meshctl, normalizedRuleset } from '../helpers/netfilter-lab.js';
import { createProxyLab, labConfigObject, startAgent, type ProxyLab, type RunningProxy } from '../helpers/proxy-lab.js';

interface Outcome {
  outcome: 'reset' | 'end' | 'refused' | 'timeout' | 'closed' | 'error';
  code?: string;
}

const DAEMON = { uid: 1, gid: 1 }; // Debian's `daemon` user: another real, non-root user

function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

describe.skipIf(!integrationEnabled)('the capture contract between install and a running proxy', () => {
  let lab: ProxyLab;
  let proxy: RunningProxy;
  let configFile = '';
  let stateDir = '';
  const install = (...extra: string[]) =>
    meshctl([
      'install',
      '--netns',
      lab.client,
      '--config',
      configFile,
      '--backend',
      'iptables-nft',
      '--state-dir',
      stateDir,
      ...extra,
    ]);
  const status = (...extra: string[]) => meshctl(['status', '--netns', lab.client, '--state-dir', stateDir, ...extra]);

  beforeAll(async () => {
    builtCli();
    lab = await createProxyLab('ct', 246, null, 'mk');
    stateDir = join(lab.dir, 'state');
    configFile = lab.writeConfig(labConfigObject({ proxy: { connectTimeout: '2s' } }, stateDir)).file;
    await lab.peer.call('serve', { name: 'http', kind: 'http', host: '0.0.0.0', port: 8080 });
    proxy = await lab.startProxy(configFile);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('publishes what it is as the kernel sees it: uid, gid, listening ports per family, pid and config', async () => {
    const contract = await proxy.adminJson('/contract');
    expect(contract).toMatchObject({
      pid: proxy.pid,
      uid: 65534,
      gid: 65534,
      user: 'nobody',
      tcp: { ipv4: expect.arrayContaining([15000, 15001, 15006]), ipv6: expect.arrayContaining([15001, 15006]) },
      udp: { ipv4: [], ipv6: [] },
      config: { file: configFile, version: 1 },
      expects: {
        proxyUser: { uid: 65534 },
        outboundPort: 15001,
        inboundPort: 15006,
        families: ['ipv4', 'ipv6'],
        dnsPort: null,
      },
    });
  });

  it("opens the admin API's health and metrics to every local user, and its config, connections and drain only to root and the proxy user", async () => {
    const asApp = (path: string, method = 'GET') =>
      lab.app.call<{ status: number; body: string }>('http', { host: '127.0.0.1', port: 15000, path, method });
    for (const path of ['/ready', '/stats', '/metrics', '/contract'])
      expect((await asApp(path)).status, path).toBe(200);
    for (const [path, method] of [
      ['/config', 'GET'],
      ['/connections', 'GET'],
      ['/lookup?source=127.0.0.1:1', 'GET'],
      ['/drain', 'POST'],
    ] as const) {
      const r = await asApp(path, method);
      expect(r.status, path).toBe(403);
      expect(r.body).toBe(
        `${path.split('?')[0]} is only for root and the proxy's user (uid 65534); this request came from uid 1000 (ask as root, e.g. with sudo)\n`,
      );
    }
    // The refused drain changed nothing; root (the lab's admin agent) and the proxy's own user are let in.
    expect((await proxy.admin('/ready')).status).toBe(200);
    expect((await proxy.adminJson('/config')).proxy.user.uid).toBe(65534);
    const asProxyUser = await startAgent(lab.client, { uid: 65534, gid: 65534 });
    try {
      const r = await asProxyUser.call<{ status: number }>('http', {
        host: '127.0.0.1',
        port: 15000,
        path: '/connections',
      });
      expect(r.status).toBe(200);
    } finally {
      asProxyUser.stop();
    }
  });

  it('refuses rules that would exempt another user than the proxy runs as, naming both and the fix, and changes nothing', () => {
    const before = normalizedRuleset(lab.client, 'iptables-nft');
    const refused = install('--proxy-user', 'daemon');
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(
      /^meshctl: PROXY_MISMATCH: the proxy on 127\.0\.0\.1:15000 in network namespace mk-ct-c \(pid \d+\) does not keep the contract these rules need: user$/m,
    );
    expect(refused.stderr).toContain(
      "user: the proxy runs as uid 65534 (nobody) gid 65534; the rules would exempt uid 1 (daemon) gid 1, so the proxy's own upstream connections would be captured and loop back to it",
    );
    expect(refused.stderr).toContain('hint:    run the proxy as daemon or install with --proxy-user nobody');
    expect(normalizedRuleset(lab.client, 'iptables-nft')).toBe(before);
    expect(readLedger(scopeDir(stateDir, lab.client))).toBeNull();
  });

  it('refuses DNS capture when the proxy serves no DNS on the DNS port', () => {
    const before = normalizedRuleset(lab.client, 'iptables-nft');
    const refused = install('--dns');
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain('does not keep the contract these rules need: dnsPort');
    expect(refused.stderr).toContain(
      'dnsPort: the rules redirect every DNS query to port 15053, but the proxy does not serve DNS there on UDP (IPv4 and IPv6), TCP (IPv4 and IPv6): the host would have no name resolution',
    );
    expect(normalizedRuleset(lab.client, 'iptables-nft')).toBe(before);
    expect(readLedger(scopeDir(stateDir, lab.client))).toBeNull();
  });

  it('accepts DNS capture from a proxy started with DNS, which listens on the DNS port over UDP and TCP in both families', async () => {
    proxy.child.kill('SIGTERM');
    await proxy.exited;
    const withDns = await lab.startProxy(configFile, ['--dns']);
    try {
      // The admin port's very first answer must already include the DNS listeners (the admin server starts
      // last): asked without pause from the moment the process exists, bounded by a deadline.
      let contract: any = null;
      const deadline = performance.now() + 15_000;
      while (contract === null) {
        if (withDns.child.exitCode !== null) throw new Error(`proxy exited:\n${withDns.stderr()}`);
        if (performance.now() > deadline) throw new Error(`/contract never answered:\n${withDns.stderr()}`);
        contract = await withDns.adminJson('/contract').catch(() => null);
      }
      await withDns.waitReady();
      expect(contract).toMatchObject({ udp: { ipv4: [15053], ipv6: [15053] }, expects: { dnsPort: 15053 } });
      expect(contract.tcp.ipv4).toContain(15053);
      expect(contract.tcp.ipv6).toContain(15053);
      const accepted = install('--dns');
      expect(accepted.status, accepted.stderr).toBe(0);
      const uninstalled = meshctl(['uninstall', '--netns', lab.client, '--state-dir', stateDir]);
      expect(uninstalled.status, uninstalled.stderr).toBe(0);
    } finally {
      withDns.child.kill('SIGTERM');
      await withDns.exited;
      // The tests after this one need the plain proxy back, whatever happened here.
      proxy = await lab.startProxy(configFile);
      await proxy.waitReady();
    }
  });

  it('with the mismatch forced (--without-proxy), refuses its own looped connection at once and stays up with a few fds', async () => {
    const baseline = openFds(proxy.pid);
    const forced = install('--proxy-user', 'daemon', '--without-proxy');
    expect(forced.status, forced.stderr).toBe(0);

    const r = await lab.app.call<Outcome>('connectOutcome', {
      host: lab.addrs.b4,
      port: 8080,
      send: 'GET / HTTP/1.0\r\n\r\n',
      timeoutMs: 8000,
    });
    expect(['reset', 'end', 'closed'], JSON.stringify(r)).toContain(r.outcome);
    const stats = await proxy.waitFor('the refused self-loop and no open connection', async () => {
      const s = await proxy.adminJson('/stats');
      return s.refusals['self-loop'] >= 1 && s.connections.active.outbound === 0 ? s : null;
    });
    // The app's connection and its one looped copy: no chain of loops.
    expect(stats.connections.accepted.outbound).toBeLessThanOrEqual(3);
    expect(stats.selfLoop).toMatchObject({ total: 1, last: { uid: 65534, originalDst: `${lab.addrs.b4}:8080` } });
    await proxy.waitFor('fds back near the baseline', async () => openFds(proxy.pid) - baseline < 10);
    expect(proxy.child.exitCode).toBeNull();

    const ready = await proxy.admin('/ready');
    expect(ready.status).toBe(503);
    expect(ready.body).toMatch(
      /^not ready: self-loop: the proxy's own connections \(uid 65534\) are captured and sent back to it/,
    );
    expect(proxy.stderr()).toMatch(
      /refused the proxy's own connection to [\d.]+:8080: it came back to the proxy \(its socket, uid 65534, was captured\)/,
    );

    const seen = status();
    expect(seen.status, seen.stdout).toBe(5);
    expect(seen.stdout).toContain('  config: sha256');
    expect(seen.stdout).toContain(
      `from ${configFile} + flags --proxy-user daemon --backend iptables-nft --state-dir ${stateDir}`,
    );
    expect(seen.stdout).toContain('proxy: MISMATCHED on 127.0.0.1:15000');
    expect(seen.stdout).toContain(
      'user: the proxy runs as uid 65534 (nobody) gid 65534; the rules would exempt uid 1 (daemon) gid 1',
    );
    expect(seen.stdout).toContain('note: installed with --without-proxy: the proxy was not checked at install');
    expect(seen.stdout).toContain(
      'verdict: NOT PROTECTED: the proxy does not keep the contract the installed rules need',
    );
  });

  it('accepts the fixed rules although the proxy is still not ready from the loop, and traffic flows again', async () => {
    const fixed = install();
    expect(fixed.status, fixed.stderr).toBe(0);
    expect(fixed.stdout).toContain('updated capture in namespace mk-ct-c');
    const r = await lab.app.call<{ status: number }>('http', { host: lab.addrs.b4, port: 8080, path: '/fixed' });
    expect(r.status).toBe(200);
    await proxy.waitForAccess((l) => l.originalDst === `${lab.addrs.b4}:8080` && l.result === 'FIN');
    // /ready recovers once no loop has been seen for a while; status follows it.
    const protectedStatus = await proxy.waitFor(
      'status to say protected',
      async () => {
        const s = status();
        return s.status === 0 ? s : null;
      },
      20_000,
    );
    expect(protectedStatus.stdout).toMatch(
      /proxy: ready on 127\.0\.0\.1:15000 \(pid \d+, uid 65534 nobody gid 65534, config .* v1\), keeps the rules' contract/,
    );
    expect(protectedStatus.stdout).toContain('verdict: PROTECTED');
  });

  it('reports a stopped proxy as not protected (exit 5) and a proxy restarted as another user as mismatched', async () => {
    const firstPid = proxy.pid;
    proxy.child.kill('SIGTERM');
    await proxy.exited;
    const stopped = status('--json');
    expect(stopped.status).toBe(5);
    expect(JSON.parse(stopped.stdout)).toMatchObject({
      installed: true,
      inSync: true,
      verdict: 'proxy-unreachable',
      exitCode: 5,
      proxy: { state: 'unreachable' },
    });
    expect(status().stdout).toContain('verdict: NOT PROTECTED: the rules are in place but no proxy answers');

    proxy = await lab.startProxy(configFile, ['--proxy-user', 'daemon'], [], DAEMON);
    await proxy.waitReady();
    const mismatched = status();
    expect(mismatched.status).toBe(5);
    expect(mismatched.stdout).toContain('proxy: MISMATCHED');
    expect(mismatched.stdout).toContain(
      'user: the proxy runs as uid 1 (daemon) gid 1; the rules would exempt uid 65534 (nobody) gid 65534',
    );
    expect(mismatched.stdout).toContain(
      `note: the proxy restarted since install (pid ${firstPid} then, ${proxy.pid} now)`,
    );
  });
});
