// A ledger meshctl did not write (edited by hand, truncated, another tool's file) is LEDGER_CORRUPT naming what is
// wrong: every mutation of a real ledger either still has the shape the code reads, or is refused with the code —
// never a TypeError deep inside status or uninstall.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { planCapture } from '../../src/capture/plan.js';
import { isMeshctlError } from '../../src/errors.js';
import { LEDGER_FORMAT, ledgerPath, readLedger, type Ledger } from '../../src/netfilter/transaction/ledger.js';
import { loadCase } from '../cases.js';

const dir = mkdtempSync(join(tmpdir(), 'mn-ledger-schema-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function sample(): Ledger {
  const config = loadCase('tproxy', { proxy: { user: 'meshproxy' }, capture: { inbound: { mode: 'tproxy' } } });
  return {
    format: LEDGER_FORMAT,
    installId: 'id-1',
    state: 'installed',
    operation: 'install',
    backend: 'iptables-nft',
    netns: 'x',
    toolVersion: '0.1.0',
    createdAt: '2026-01-01T00:00:00Z',
    updatedAt: '2026-01-01T00:00:00Z',
    current: {
      configHash: config.hash,
      configFile: null,
      config,
      plan: planCapture(config),
      objects: {
        kind: 'xtables',
        families: [
          {
            family: 'ipv4',
            tables: [
              { table: 'nat', chains: ['MESHCTL_OUTPUT'], rules: [{ chain: 'OUTPUT', raw: '-j MESHCTL_OUTPUT' }] },
            ],
          },
        ],
      },
      extras: { routes: [], loopbackAddresses: [] },
    },
    previous: null,
    before: { kind: 'xtables', families: [] },
    snapshot: { kind: 'xtables', families: [{ family: 'ipv4', tables: [{ table: 'nat', text: '*nat\nCOMMIT\n' }] }] },
    confirm: {
      deadline: '2026-01-01T00:01:00Z',
      mechanism: 'detached-process',
      unit: null,
      pid: 1,
      pidStartTime: '1',
      confirmedAt: null,
    },
  };
}

function outcome(content: string): string {
  writeFileSync(ledgerPath(dir), content);
  try {
    readLedger(dir);
    return 'ok';
  } catch (error) {
    if (isMeshctlError(error)) return error.code;
    return `NOT CODED: ${(error as Error).stack}`;
  }
}

/** Every path of `value` down to `depth` levels (arrays: their first element). */
function paths(value: unknown, depth: number, prefix: (string | number)[] = []): (string | number)[][] {
  if (depth === 0 || typeof value !== 'object' || value === null) return [];
  const keys: (string | number)[] = Array.isArray(value) ? (value.length > 0 ? [0] : []) : Object.keys(value);
  return keys.flatMap((k) => [
    [...prefix, k],
    ...paths((value as Record<string | number, unknown>)[k], depth - 1, [...prefix, k]),
  ]);
}

function mutate(root: unknown, path: (string | number)[], replacement: unknown | typeof DELETE): unknown {
  const copy = structuredClone(root) as Record<string | number, unknown>;
  let node = copy;
  for (const k of path.slice(0, -1)) node = node[k] as Record<string | number, unknown>;
  const last = path[path.length - 1]!;
  if (replacement === DELETE) delete node[last];
  else node[last] = replacement;
  return copy;
}
const DELETE = Symbol('delete');

describe('the ledger schema', () => {
  it('accepts the ledger meshctl writes', () => {
    expect(outcome(JSON.stringify(sample()))).toBe('ok');
  });

  it.each([
    ['null', 'null'],
    ['an array', '[]'],
    ['a generation without its fields', JSON.stringify({ ...sample(), current: {} })],
    ['a plan without families', JSON.stringify({ ...sample(), current: { ...sample().current, plan: {} } })],
    ['an unknown state', JSON.stringify({ ...sample(), state: 'half' })],
    ['units that are not a list', JSON.stringify({ ...sample(), current: { ...sample().current, units: 'x' } })],
    [
      'a unit without its cgroup id',
      JSON.stringify({ ...sample(), current: { ...sample().current, units: [{ name: 'a.service', cgroup: '/a' }] } }),
    ],
  ])('refuses %s as LEDGER_CORRUPT', (_, text) => {
    expect(outcome(text)).toBe('LEDGER_CORRUPT');
  });

  it('names the first problem and where it is', () => {
    writeFileSync(ledgerPath(dir), JSON.stringify({ ...sample(), current: {} }));
    expect(() => readLedger(dir)).toThrow(
      /is not one meshctl wrote: \/current must have required property 'configHash'/,
    );
  });

  it('ends every mutation of a real ledger in a ledger or LEDGER_CORRUPT, never an uncoded error', () => {
    const base = sample();
    const seen = new Set<string>();
    for (const path of paths(base, 6)) {
      for (const replacement of [DELETE, null, 'x', 7, [], {}]) {
        const result = outcome(JSON.stringify(mutate(base, path, replacement)));
        expect(
          result,
          `${path.join('.')} = ${String(replacement === DELETE ? 'deleted' : JSON.stringify(replacement))}`,
        ).toMatch(/^(ok|LEDGER_CORRUPT)$/);
        seen.add(result);
      }
    }
    expect([...seen].sort()).toEqual(['LEDGER_CORRUPT', 'ok']);
  });
});
