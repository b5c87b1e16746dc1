// runTransaction against a recording fake driver: the order of check/apply/read, and what a failure at each step
// puts back. The same paths run on a real kernel in test/integration/netfilter-faults.test.ts.
import { describe, expect, it } from 'vitest';
import { isMeshctlError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import type { ApplyStep, BackendDriver, KernelState, TransitionTarget } from '../../src/netfilter/drivers/driver.js';
import { runTransaction } from '../../src/netfilter/transaction/transaction.js';

type Values = Record<'ipv4' | 'ipv6', string>;

/** A "kernel" holding one value per family; targets are {ipv4, ipv6} maps carried in an nftables listing. */
class FakeDriver implements BackendDriver {
  readonly backend = 'iptables-nft' as const;
  readonly calls: string[] = [];
  constructor(
    public values: Values,
    private readonly faults: { check?: string; apply?: string[]; rollback?: boolean } = {},
  ) {}
  async read(): Promise<KernelState> {
    this.calls.push('read');
    return { backend: this.backend, texts: new Map(Object.entries(this.values)) };
  }
  stepsTo(state: KernelState, target: TransitionTarget): ApplyStep[] {
    const wanted =
      target.kind === 'objects' && target.objects.kind === 'nftables'
        ? (JSON.parse(target.objects.listing) as Values)
        : { ipv4: '', ipv6: '' };
    return (['ipv4', 'ipv6'] as const)
      .filter((f) => state.texts.get(f) !== wanted[f])
      .map((f) => ({ label: f, family: f, text: wanted[f] }));
  }
  stepsRemoving(): ApplyStep[] {
    return [];
  }
  async check(step: ApplyStep): Promise<void> {
    this.calls.push(`check ${step.label}`);
    if (this.faults.check === step.label) throw new Error(`${step.label} check failed`);
  }
  async apply(step: ApplyStep): Promise<void> {
    this.calls.push(`apply ${step.label}=${step.text}`);
    const restoring = step.text.startsWith('old');
    const failing = restoring ? this.faults.rollback === true : this.faults.apply?.includes(step.label) === true;
    if (failing) throw new Error(`${step.label} restore failed: line 3`);
    this.values = { ...this.values, [step.label]: step.text };
  }
  owned() {
    return { kind: 'nftables' as const, listing: '' };
  }
  remaining() {
    return [];
  }
  drift() {
    return [];
  }
  foreign() {
    return '';
  }
  async snapshot() {
    return { kind: 'nftables' as const, ruleset: '' };
  }
  async tidy() {
    return [];
  }
  foreignOfSnapshot() {
    return '';
  }
  ownedInSnapshot() {
    return { kind: 'nftables' as const, listing: '' };
  }
}

const target = (values: Values): TransitionTarget => ({
  kind: 'objects',
  objects: { kind: 'nftables', listing: JSON.stringify(values) },
});
const OLD: Values = { ipv4: 'old4', ipv6: 'old6' };
const NEW: Values = { ipv4: 'new4', ipv6: 'new6' };

async function run(driver: FakeDriver, verify: (s: KernelState) => string[] = () => []) {
  const state = await driver.read();
  const steps = driver.stepsTo(state, target(NEW));
  driver.calls.length = 0;
  return runTransaction({ driver, steps, fallback: target(OLD), verify, what: 'install' }, silentLogger);
}

describe('runTransaction', () => {
  it('checks every family before changing any, applies one restore per family, then reads back', async () => {
    const driver = new FakeDriver({ ...OLD });
    await run(driver);
    expect(driver.calls).toEqual(['check ipv4', 'check ipv6', 'apply ipv4=new4', 'apply ipv6=new6', 'read']);
    expect(driver.values).toEqual(NEW);
  });

  it('changes nothing when a check fails', async () => {
    const driver = new FakeDriver({ ...OLD }, { check: 'ipv6' });
    await expect(run(driver)).rejects.toThrow(
      /ipv6 rules for install were rejected by the iptables-nft check; nothing was changed/,
    );
    expect(driver.calls.filter((c) => c.startsWith('apply'))).toEqual([]);
    expect(driver.values).toEqual(OLD);
  });

  it('restores IPv4 when the IPv6 restore fails, and says so', async () => {
    const driver = new FakeDriver({ ...OLD }, { apply: ['ipv6'] });
    const error = await run(driver).catch((e: unknown) => e);
    expect(isMeshctlError(error, 'RESTORE_FAILED')).toBe(true);
    expect((error as Error).message).toBe(
      'applying the ipv6 rules for install failed; restored ipv4 and ipv6 to the previous rules (ipv4 had already been applied)',
    );
    expect((error as { details: string[] }).details.join('\n')).toContain('ipv6 restore failed: line 3');
    expect(driver.values).toEqual(OLD);
  });

  it('rolls back both families when the read-back differs from the plan', async () => {
    const driver = new FakeDriver({ ...OLD });
    const error = await run(driver, () => ['ipv4: missing nat -A OUTPUT …']).catch((e: unknown) => e);
    expect(isMeshctlError(error, 'VERIFY_FAILED')).toBe(true);
    expect((error as { details: string[] }).details).toEqual(['ipv4: missing nat -A OUTPUT …']);
    expect(driver.values).toEqual(OLD);
  });

  it('reports ROLLBACK_FAILED with both errors when putting things back fails too', async () => {
    const driver = new FakeDriver({ ...OLD }, { apply: ['ipv6'], rollback: true });
    const error = await run(driver).catch((e: unknown) => e);
    expect(isMeshctlError(error, 'ROLLBACK_FAILED')).toBe(true);
    const details = (error as { details: string[] }).details.join('\n');
    expect(details).toContain('first error: ipv6 restore failed');
    expect(details).toContain('rollback error: ipv4 restore failed');
  });
});
