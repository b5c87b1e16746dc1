// The bench's policy variant end to end, briefly: meshctl with and without 100 services on the RR and connect
// workloads (a second each), the variant's traffic verified to take the service path, and the policy-cost table.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runBench, type BenchResult } from '../../bench/run.js';
import { PROFILES } from '../../bench/workloads.js';
import { integrationEnabled } from '../helpers/integration.js';
import { deleteNs } from '../helpers/netns.js';
import { assertBuilt } from '../helpers/proxy-lab.js';

const PREFIX = 'mq-bn';

describe.skipIf(!integrationEnabled)('bench: meshctl with 100 services vs none', () => {
  let result: BenchResult;
  let outDir = '';

  beforeAll(async () => {
    assertBuilt();
    outDir = mkdtempSync(join(tmpdir(), 'mq-bench-'));
    result = await runBench({
      profile: PROFILES.smoke,
      candidates: ['meshctl', 'meshctl-policy100'],
      workloads: ['rr-1', 'rr-32', 'connect-32'],
      workers: 1,
      pin: {},
      outDir: null,
      prefix: PREFIX,
      subnet: 165,
      accessLog: false,
    });
  }, 180_000);

  afterAll(() => {
    deleteNs(`${PREFIX}-cli`);
    deleteNs(`${PREFIX}-srv`);
    if (outDir) rmSync(outDir, { recursive: true, force: true });
  });

  it('measures both candidates on the RR and connect workloads', () => {
    for (const candidate of ['meshctl', 'meshctl-policy100'] as const) {
      for (const workload of ['rr-1', 'rr-32', 'connect-32'] as const) {
        const m = result.measurements.find((x) => x.candidate === candidate && x.workload === workload);
        expect(m?.values.rate, `${candidate} ${workload}`).toBeGreaterThan(10);
      }
    }
  });

  it('reports the policy cost table with a ratio per row', () => {
    const table = result.markdown.split('\n').filter((l) => /^\| (RR 64 B|connect \+ close).*≥ 0\.95× \|/.test(l));
    expect(table).toHaveLength(3);
    for (const line of table) expect(line).toMatch(/\| \d\.\d{3}× \| ≥ 0\.95× \| (met|\*\*missed\*\*) \|$/);
    expect(result.markdown).toContain('| workload | unit | meshctl | meshctl, 100 services |');
  });
});
