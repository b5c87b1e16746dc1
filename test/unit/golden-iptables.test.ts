// Golden files: the iptables-restore text of every example. `npx vitest run -u` rewrites them; review the diff.
import { describe, expect, it } from 'vitest';
import { planCapture } from '../../src/capture/plan.js';
import { renderIptablesRestore } from '../../src/capture/render-iptables.js';
import { cases } from '../cases.js';

describe('iptables-restore golden files', () => {
  it.each(cases)('renders $name for IPv4 and IPv6 exactly as the golden files say', async ({ name, config }) => {
    const plan = planCapture(config);
    for (const family of ['ipv4', 'ipv6'] as const) {
      const familyPlan = plan.families.find((f) => f.family === family);
      const text = familyPlan
        ? renderIptablesRestore(familyPlan)
        : `# no ${family} rules (capture.ipv6 is "${config.capture.ipv6}")\n`;
      await expect(text).toMatchFileSnapshot(`../golden/${name}.${family === 'ipv4' ? 'v4' : 'v6'}.rules`);
    }
  });
});
