// explain against the planned rules: the questions operators ask, with the deciding rule and config field.
import { describe, expect, it } from 'vitest';
import { explainFlow, type Flow, type HostContext } from '../../src/capture/explain.js';
import { planCapture } from '../../src/capture/plan.js';
import { loadCase } from '../cases.js';

const host: HostContext = {
  localAddresses: ['127.0.0.1', '10.0.0.5', '::1', 'fd00::5'],
  route: (dst) => ({ interface: 'eth0', source: dst.includes(':') ? 'fd00::5' : '10.0.0.5' }),
};
const defaults = loadCase('vm-default', {
  proxy: { user: 'meshproxy' },
  capture: { outbound: { excludeCidrs: ['169.254.169.254/32'] } },
});
const run = (flow: Flow, config = defaults) => explainFlow(planCapture(config), flow, host);
const out = (address: string, port: number, uid: number, extra: Partial<Flow> = {}): Flow => ({
  direction: 'outbound',
  protocol: 'tcp',
  destination: { address, port },
  uid,
  gid: uid,
  ...extra,
});

describe('explainFlow', () => {
  it('says an inbound SSH connection is safe and which field keeps it so', () => {
    const e = run({
      direction: 'inbound',
      protocol: 'tcp',
      destination: { address: '10.0.0.5', port: 22 },
      source: { address: '203.0.113.1', port: 50000 },
      inInterface: 'eth0',
    });
    expect(e).toMatchObject({ intercepted: false, verdict: 'bypassed', toPort: null });
    expect(e.decidedBy).toMatchObject({
      purpose: 'skip-ssh',
      origin: 'safety.sshPorts (default)',
      table: 'nat',
      chain: 'MESHCTL_INBOUND',
    });
  });

  it('redirects other inbound connections to the inbound port', () => {
    const e = run({
      direction: 'inbound',
      protocol: 'tcp',
      destination: { address: '10.0.0.5', port: 8080 },
      source: { address: '203.0.113.1' },
      inInterface: 'eth0',
    });
    expect(e).toMatchObject({ intercepted: true, verdict: 'redirected', toPort: 15006 });
    expect(e.decidedBy?.purpose).toBe('inbound-to-proxy');
    expect(e.trace.filter((t) => t.matched).map((t) => t.purpose)).toEqual([
      'inbound-capture',
      'inbound-to-proxy',
      'redirect-inbound',
    ]);
  });

  it("answers whether root's traffic to the metadata service is captured", () => {
    const e = run(out('169.254.169.254', 80, 0));
    expect(e).toMatchObject({ intercepted: false, verdict: 'bypassed' });
    expect(e.decidedBy).toMatchObject({ purpose: 'skip-cidr', origin: 'capture.outbound.excludeCidrs[0]' });
    expect(run(out('93.184.216.34', 80, 0))).toMatchObject({
      intercepted: true,
      toPort: 15001,
      decidedBy: { purpose: 'outbound-to-proxy', origin: 'capture.outbound.includeCidrs' },
    });
  });

  it("never captures the proxy's own connections, by uid or by gid", () => {
    expect(run(out('93.184.216.34', 443, 1337)).decidedBy?.purpose).toBe('skip-proxy-uid');
    expect(run(out('93.184.216.34', 443, 4000, { gid: 1337 })).decidedBy?.purpose).toBe('skip-proxy-gid');
  });

  it("lets apps talk over loopback directly but sends the proxy's own-address calls to the inbound listener", () => {
    expect(run(out('127.0.0.1', 8080, 1000)).decidedBy?.purpose).toBe('skip-loopback');
    expect(run(out('10.0.0.5', 8080, 1000)).decidedBy?.purpose).toBe('skip-loopback');
    expect(run(out('10.0.0.5', 8080, 1337))).toMatchObject({
      intercepted: true,
      toPort: 15006,
      decidedBy: { purpose: 'inbound-to-proxy' },
    });
    expect(run(out('10.0.0.5', 22, 1337)).decidedBy?.purpose).toBe('skip-proxy-uid');
    expect(run(out('127.0.0.1', 8080, 1337, { source: { address: '127.0.0.6' } })).decidedBy?.purpose).toBe(
      'skip-inbound-passthrough',
    );
  });

  it('handles IPv6 per the ipv6 mode', () => {
    expect(run(out('2001:db8::1', 443, 1000))).toMatchObject({ intercepted: true, family: 'ipv6', toPort: 15001 });
    const block = loadCase('t', { proxy: { user: 'meshproxy' }, capture: { ipv6: 'block' } });
    expect(run(out('2001:db8::1', 443, 1000), block)).toMatchObject({
      intercepted: false,
      verdict: 'rejected',
      decidedBy: { purpose: 'ipv6-block-outbound' },
    });
    expect(run(out('2001:db8::1', 443, 1337), block)).toMatchObject({
      verdict: 'bypassed',
      decidedBy: { purpose: 'skip-proxy-uid' },
    });
    const off = loadCase('t', { proxy: { user: 'meshproxy' }, capture: { ipv6: 'off' } });
    expect(run(out('2001:db8::1', 443, 1000), off).reason).toContain('capture.ipv6 is "off"');
  });

  it('names the include list when a destination is outside it', () => {
    const c = loadCase('owner-group-allowlist', {
      proxy: { user: 'meshproxy' },
      capture: { outbound: { includeGids: ['apps'], includePorts: [443] } },
    });
    expect(run(out('93.184.216.34', 443, 1000, { gid: 2000 }), c)).toMatchObject({
      intercepted: true,
      decidedBy: { origin: 'capture.outbound.includeCidrs × capture.outbound.includePorts' },
    });
    expect(run(out('93.184.216.34', 80, 1000, { gid: 2000 }), c).reason).toContain('no capture rule matched');
    expect(run(out('93.184.216.34', 443, 1000, { gid: 1000 }), c).decidedBy?.purpose).toBe('skip-gid-not-included');
  });

  it('tproxies inbound in tproxy mode and captures DNS to the DNS port', () => {
    const c = loadCase('t', {
      proxy: { user: 'meshproxy' },
      capture: { inbound: { mode: 'tproxy' }, dns: { enabled: true } },
    });
    expect(
      run(
        {
          direction: 'inbound',
          protocol: 'tcp',
          destination: { address: '10.0.0.5', port: 8080 },
          inInterface: 'eth0',
        },
        c,
      ),
    ).toMatchObject({ verdict: 'tproxied', toPort: 15006 });
    expect(run(out('10.0.0.2', 53, 1000, { protocol: 'udp' }), c)).toMatchObject({
      verdict: 'redirected',
      toPort: 15053,
      decidedBy: { purpose: 'dns-udp-to-proxy' },
    });
    expect(run(out('10.0.0.2', 53, 1337, { protocol: 'udp' }), c).decidedBy?.purpose).toBe('skip-proxy-uid');
  });

  it('states its assumptions when the flow leaves something open', () => {
    const e = run({ direction: 'outbound', protocol: 'tcp', destination: { address: '93.184.216.34', port: 80 } });
    expect(e.assumptions.join('\n')).toContain('socket owner unknown');
    expect(() => run(out('not-an-ip', 80, 0))).toThrow(TypeError);
  });
});
