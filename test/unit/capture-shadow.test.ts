// No rendered rule is shadowed: over the shared scenario table (and the loopback includes), every rule that the
// first-packet model can judge is reached by some connection (src/capture/shadow.ts asks explain's interpreter).
import { describe, expect, it } from 'vitest';
import { planCapture } from '../../src/capture/plan.js';
import { shadowedRules } from '../../src/capture/shadow.js';
import { explainFlow } from '../../src/capture/explain.js';
import type { CapturePlan, Rule } from '../../src/capture/model.js';
import { cases, loadCase } from '../cases.js';

const dead = (plan: CapturePlan): string[] =>
  shadowedRules(plan).unreachable.map(
    (r) => `${r.family} ${r.rule.table} -A ${r.rule.chain} ${r.text} (meshctl:${r.rule.purpose})`,
  );

const loopbackConfigs = {
  'loopback-v4': {
    proxy: { user: 'meshproxy' },
    capture: { outbound: { includeCidrs: ['127.0.0.0/8', '10.0.0.0/8'] } },
  },
  'loopback-v6-intercept': {
    proxy: { user: 'meshproxy' },
    capture: { ipv6: 'intercept', outbound: { includeCidrs: ['::1/128', '127.0.0.2/32', 'fd00::/8'] } },
  },
  'loopback-v6-block': {
    proxy: { user: 'meshproxy' },
    capture: { ipv6: 'block', outbound: { includeCidrs: ['::1/128', 'fd00::/8'] } },
  },
};

describe('no rendered rule is shadowed by an earlier one', () => {
  it.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    expect(dead(planCapture(c.config))).toEqual([]);
  });

  it.each(Object.entries(loopbackConfigs))('%s', (name, raw) => {
    expect(dead(planCapture(loadCase(name, raw)))).toEqual([]);
  });

  it('finds a rule placed behind one that decides everything it matches (the old loopback include)', () => {
    const plan = planCapture(loadCase('loopback-v4', loopbackConfigs['loopback-v4']));
    const v4 = plan.families[0]!;
    const skip: Rule = {
      table: 'nat',
      chain: 'MESHCTL_OUTPUT',
      matches: [{ kind: 'outInterface', name: 'lo' }],
      target: { kind: 'return' },
      purpose: 'skip-loopback',
      origin: 'test',
    };
    const at = v4.rules.findIndex((r) => r.purpose === 'skip-proxy-uid');
    const shadowing: CapturePlan = {
      ...plan,
      families: [{ ...v4, rules: [...v4.rules.slice(0, at), skip, ...v4.rules.slice(at)] }],
    };
    const found = dead(shadowing);
    // The lo RETURN put ahead of the proxy's exemptions also hides the localhost rule for the proxy's ports.
    expect(found).toEqual([
      expect.stringContaining('meshctl:skip-localhost-proxy-ports'),
      expect.stringContaining(
        '-d 127.0.0.0/8 -p tcp -m comment --comment "meshctl:outbound-to-proxy" -j MESHCTL_REDIRECT',
      ),
    ]);
  });

  it('captures an app calling a loopback include, and leaves the proxy ports on localhost alone', () => {
    const plan = planCapture(loadCase('loopback-v6-intercept', loopbackConfigs['loopback-v6-intercept']));
    const host = { localAddresses: [] };
    const app = (address: string, port: number) =>
      explainFlow(plan, { direction: 'outbound', protocol: 'tcp', destination: { address, port }, uid: 1000 }, host);
    expect(app('::1', 8080).verdict).toBe('redirected');
    expect(app('127.0.0.2', 8080).verdict).toBe('redirected');
    expect(app('::1', 15000).decidedBy?.purpose).toBe('skip-localhost-proxy-ports');
    expect(app('127.0.0.1', 8080).decidedBy?.purpose).toBe('skip-localhost');
    const proxyUpstream = explainFlow(
      plan,
      { direction: 'outbound', protocol: 'tcp', destination: { address: '::1', port: 8080 }, uid: 1337 },
      host,
    );
    expect(proxyUpstream.intercepted).toBe(false);
  });
});
