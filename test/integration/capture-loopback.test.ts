// A loopback include captures on a real kernel: with 127.0.0.0/8 and ::1 in capture.outbound.includeCidrs, an app's
// connection to 127.0.0.2 and to ::1 is redirected to the proxy's outbound port, the proxy's own ports on localhost
// stay direct, and every flow lands where explain (over the plan) says. Per backend, namespaces only.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { explainFlow } from '../../src/capture/explain.js';
import { planCapture } from '../../src/capture/plan.js';
import { renderIptablesRestore } from '../../src/capture/render-iptables.js';
import { renderNft } from '../../src/capture/render-nft.js';
import { isAddonAvailable } from '../../src/native/addon.js';
import { loadCase } from '../cases.js';
import { integrationEnabled } from '../helpers/integration.js';
import {
  hostContext,
  observed,
  owners,
  predicted,
  REMOTE,
  runFlows,
  toExplainFlow,
  WG_ROUTES,
  type LabFlow,
} from '../helpers/kernel-flows.js';
import { createLab, destroyLab, warmChildScripts, type Lab } from '../helpers/kernel-lab.js';
import { applyNft, restoreIptables } from '../helpers/kernel-rules.js';

const BACKENDS = ['iptables-nft', 'iptables-legacy', 'nftables'] as const;
const config = loadCase('loopback-include', {
  proxy: { user: 'meshproxy' },
  capture: { ipv6: 'intercept', outbound: { includeCidrs: ['127.0.0.0/8', '::1/128', '10.0.0.0/8', 'fd00::/8'] } },
});
const labs = new Set<Lab>();

function flows(lab: Lab): LabFlow[] {
  const o = owners(config);
  const out = (owner: typeof o.app, address: string, port: number): LabFlow => ({
    id: `out ${address}:${port} as ${owner!.name}`,
    direction: 'outbound',
    protocol: 'tcp',
    address,
    port,
    owner: owner!,
  });
  return [
    out(o.app, '127.0.0.2', 8080),
    out(o.app, '127.0.0.1', 8080),
    out(o.app, '::1', 8080),
    out(o.app, '127.0.0.1', config.proxy.outboundPort),
    out(o.app, '::1', config.proxy.outboundPort),
    out(o.proxy, '127.0.0.2', 8080),
    out(o.proxy, '::1', 8080),
    out(o.app, lab.peer4, 80),
    out(o.app, lab.peer6, 80),
    out(o.app, lab.host4, 8080),
  ];
}

describe.skipIf(!integrationEnabled)('a loopback include captures on the kernel', () => {
  beforeAll(() => {
    if (!isAddonAvailable())
      throw new Error('the native addon is not built (build/Release/meshctl_native.node): run `npm ci`');
    warmChildScripts();
  });
  afterAll(() => {
    for (const lab of labs) destroyLab(lab);
  });

  it.each(BACKENDS.map((backend, index) => ({ backend, index })))(
    '$backend: redirected where explain says',
    async ({ backend, index }) => {
      const plan = planCapture(config);
      const lab = createLab(`hk-lb${index}`, 140 + index, Object.values(REMOTE), WG_ROUTES);
      labs.add(lab);
      try {
        if (backend === 'nftables') applyNft(lab.host, renderNft(plan));
        else
          for (const family of plan.families)
            restoreIptables(
              lab.host,
              family.family,
              backend === 'iptables-nft' ? 'nft' : 'legacy',
              renderIptablesRestore(family),
            );
        const table = flows(lab);
        const results = await runFlows(lab, config, table, { tproxy: false });
        const context = hostContext(lab);
        const rows = table.map((flow) => ({
          flow: flow.id,
          explain: predicted(lab, flow, explainFlow(plan, toExplainFlow(lab, flow), context)),
          kernel: observed(flow, results.get(flow.id)!),
        }));
        const kernel = Object.fromEntries(rows.map((r) => [r.flow, r.kernel]));
        expect(kernel['out 127.0.0.2:8080 as app']).toBe('redirected to :15001, original 127.0.0.2:8080');
        expect(kernel['out 127.0.0.1:8080 as app']).toBe('redirected to :15001, original 127.0.0.1:8080');
        expect(kernel['out ::1:8080 as app']).toBe('redirected to :15001, original [::1]:8080');
        expect(kernel[`out 127.0.0.1:${config.proxy.outboundPort} as app`]).toBe(
          `direct to host 127.0.0.1:${config.proxy.outboundPort}`,
        );
        expect(
          rows.filter((r) => r.explain !== r.kernel),
          JSON.stringify(rows, null, 1),
        ).toEqual([]);
      } finally {
        destroyLab(lab);
        labs.delete(lab);
      }
    },
  );
});
