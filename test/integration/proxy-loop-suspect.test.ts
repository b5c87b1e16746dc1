// The self-loop check where JavaScript connects, on the real kernel with the real proxy as nobody: with
// `proxy.relay: node` (two worker processes; JavaScript checks), and with the relay threads handing every connection
// to JavaScript (a periodic access log; the threads check and pass the suspect bit on). An app connection that
// conntrack shows with the endpoint of one of the proxy's own upstreams (a NAT source-port remap, here forced by an
// SNAT rule) is relayed as a loop suspect, not refused; a real loop (the proxy's own upstream captured again by a
// rule that does not exempt it) is refused one hop later, at the suspect's marked upstream.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { iptablesIn } from '../helpers/kernel-rules.js';
import { createProxyLab, labConfigObject, type ProxyLab, type RunningProxy } from '../helpers/proxy-lab.js';
import { waitUntil } from '../helpers/wait.js';

const VARIANTS = [
  { name: 'relay: node, two workers', prefix: 'lx', subnet: 218, proxy: { relay: 'node', workers: 2 } },
  {
    name: 'relay threads handing every connection over',
    prefix: 'ly',
    subnet: 219,
    proxy: { accessLog: { periodicInterval: '10s' } },
  },
] as const;

interface Stats {
  loopSuspects: number;
  refusals: Record<string, number>;
  selfLoop: { total: number } | null;
  connections: { active: { outbound: number }; accepted: { outbound: number } };
}

describe.skipIf(!integrationEnabled).each(VARIANTS)(
  'JavaScript connects: a remapped app, a loop ($name)',
  (variant) => {
    let lab: ProxyLab;
    let proxy: RunningProxy;

    /** One iptables change in the client namespace (the lab's own rules stay as they are). */
    const clientIptables = (args: readonly string[]) => iptablesIn(lab.client, args);

    /** One app connection to the echo server from `localPort`, held as `tag` once it echoed. */
    const holdFrom = (tag: string, localPort: number) =>
      lab.app.call<{ open: number; errors: string[] }>('hold', {
        tag,
        host: lab.addrs.b4,
        port: 7004,
        count: 1,
        localPort,
      });

    beforeAll(async () => {
      const raw = labConfigObject({ proxy: variant.proxy });
      lab = await createProxyLab('ls', variant.subnet, raw, variant.prefix);
      await lab.peer.call('serve', { name: 'echo', kind: 'echo', host: '0.0.0.0', port: 7004 });
      await lab.peer.call('serve', { name: 'loop', kind: 'echo', host: '0.0.0.0', port: 7005 });
      proxy = await lab.startProxy(lab.writeConfig(raw).file);
      await proxy.waitReady();
    }, 60_000);

    afterAll(async () => {
      await lab?.destroy();
    });

    it("relays an app whose NATed source is the endpoint of one of the proxy's upstreams, refusing nothing", async () => {
      const own = await holdFrom('own', 40112);
      expect(own).toEqual({ open: 1, errors: [] });
      // The echo server saw the proxy's upstream for it: that endpoint is what the app's next connection will show.
      const records = await lab.peer.call<{ remote: string; remotePort: number }[]>('records', { name: 'echo' });
      expect(records).toHaveLength(1);
      const upstream = `${records[0]!.remote.replace(/^::ffff:/, '')}:${records[0]!.remotePort}`;
      const snat = ['-p', 'tcp', '-s', lab.addrs.a4, '--sport', '40111', '-d', '127.0.0.1', '--dport', '15001'];
      snat.push('-j', 'SNAT', '--to-source', upstream);
      clientIptables(['-t', 'nat', '-A', 'POSTROUTING', ...snat]);
      try {
        const remapped = await holdFrom('remapped', 40111);
        expect(remapped).toEqual({ open: 1, errors: [] });
        const seen = await lab.peer.call<{ remote: string; remotePort: number }[]>('records', { name: 'echo' });
        expect(seen).toHaveLength(2);
        const stats = await proxy.adminJson<Stats>('/stats');
        expect(stats.loopSuspects).toBe(1);
        expect(stats.refusals['self-loop'] ?? 0).toBe(0);
        expect(stats.selfLoop).toBeNull();
        expect(await lab.app.call('pingHeld', { tag: 'own' })).toMatchObject({ ok: 1 });
        expect(await lab.app.call('pingHeld', { tag: 'remapped' })).toMatchObject({ ok: 1 });
      } finally {
        clientIptables(['-t', 'nat', '-D', 'POSTROUTING', ...snat]);
        await lab.app.call('closeHeld', { tag: 'own' });
        await lab.app.call('closeHeld', { tag: 'remapped' });
      }
    });

    it("refuses the proxy's own connection when it comes back a second time, through its marked upstream", async () => {
      const before = await proxy.adminJson<Stats>('/stats');
      // A foreign rule that captures everyone's connections to port 7005, the proxy's own too.
      const capture = ['-p', 'tcp', '-d', lab.addrs.b4, '--dport', '7005', '-j', 'REDIRECT', '--to-ports', '15001'];
      clientIptables(['-t', 'nat', '-I', 'OUTPUT', '1', ...capture]);
      try {
        const r = await lab.app.call<{ outcome: string }>('connectOutcome', {
          host: lab.addrs.b4,
          port: 7005,
          send: 'x',
          timeoutMs: 8000,
        });
        expect(['reset', 'end', 'closed'], JSON.stringify(r)).toContain(r.outcome);
        let stats: Stats | null = null;
        await waitUntil(
          'the refused loop and no open outbound connection',
          async () => {
            stats = await proxy.adminJson<Stats>('/stats');
            return stats.selfLoop?.total === 1 && stats.connections.active.outbound === 0;
          },
          10_000,
          { seen: () => stats },
        );
        // The app's connection, its loop (a suspect, relayed with a marked upstream), and that upstream, refused.
        expect(stats!.connections.accepted.outbound - before.connections.accepted.outbound).toBe(3);
        expect(stats!.loopSuspects - before.loopSuspects).toBe(1);
        expect(stats!.refusals['self-loop']).toBe(1);
        expect(await lab.peer.call('records', { name: 'loop' })).toEqual([]);
      } finally {
        clientIptables(['-t', 'nat', '-D', 'OUTPUT', ...capture]);
      }
    });
  },
);
