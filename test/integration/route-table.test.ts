// The TPROXY route table against a real namespace: a table something else already uses (a route in it, or an
// ip rule looking it up) is refused at install with ROUTE_TABLE_IN_USE and nothing changes; a reserved table is
// refused at load; and with the table named in rt_tables (iproute2 then prints the name, not the number), status
// sees the route and uninstall leaves no ip rule behind, checked numerically (`ip -N`).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import {
  builtCli,
  labEnv,
  labNamespaces,
  MESHCTL,
  meshctl,
  meshctlResidue,
  normalizedRuleset,
  tempStateDir,
} from '../helpers/netfilter-lab.js';

const { freshNs, cleanup } = labNamespaces();
const dir = mkdtempSync(join(tmpdir(), 'hv2-route-table-'));

function configFile(name: string, table: number): string {
  const file = join(dir, name);
  writeFileSync(file, `capture:\n  inbound:\n    mode: tproxy\n    tproxyRouteTable: ${table}\n`);
  return file;
}

const args = (ns: string, stateDir: string, config: string) => [
  '--netns',
  ns,
  '--state-dir',
  stateDir,
  '--config',
  config,
  '--backend',
  'iptables-nft',
  '--proxy-user',
  'nobody',
  '--ssh-ports',
  '22',
  '--without-proxy',
];

/**
 * Everything install could change in the namespace: rules of both families, ip rules, routes, lo's addresses. IPv6
 * link-local routes are left out: the kernel adds them on its own once duplicate address detection ends.
 */
function hostState(ns: string): string {
  return [
    normalizedRuleset(ns, 'iptables-nft'),
    ...(['-4', '-6'] as const).flatMap((f) => [
      inNs(ns, 'ip', ['-N', f, 'rule', 'show']),
      inNs(ns, 'ip', ['-N', f, 'route', 'show', 'table', 'all']),
    ]),
    inNs(ns, 'ip', ['addr', 'show', 'dev', 'lo']),
  ]
    .join('\n----\n')
    .split('\n')
    .filter((l) => !/\bfe80:/.test(l))
    .join('\n');
}

/** The ip rules of both families that look up `table`, by number. */
const rulesLookingUp = (ns: string, table: number): string[] =>
  (['-4', '-6'] as const).flatMap((f) =>
    inNs(ns, 'ip', ['-N', f, 'rule', 'show'])
      .split('\n')
      .filter((l) => new RegExp(`lookup ${table}(\\s|$)`).test(l)),
  );

/** `meshctl status` says no capture is installed (exit 3, the ledger absent), or the test shows what it said. */
function expectNotInstalled(ns: string, stateDir: string): void {
  const status = meshctl(['status', '--netns', ns, '--state-dir', stateDir]);
  expect({ status: status.status, stderr: status.stderr, said: status.stdout.split('\n')[0] }).toEqual({
    status: 3,
    stderr: '',
    said: expect.stringContaining(`not installed in namespace ${ns}`) as unknown,
  });
}

describe.skipIf(!integrationEnabled)('the TPROXY route table', () => {
  beforeAll(() => builtCli());
  afterAll(() => {
    cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a table that holds a route, naming it, and changes nothing', () => {
    const ns = freshNs('hv2-rt-route');
    const stateDir = tempStateDir();
    inNs(ns, 'ip', ['-4', 'route', 'add', '10.77.0.0/16', 'dev', 'lo', 'table', '133']);
    const before = hostState(ns);
    const result = meshctl(['install', ...args(ns, stateDir, configFile('route.yaml', 133))]);
    expect(result.stderr).toContain(
      'meshctl: ROUTE_TABLE_IN_USE: capture.inbound.tproxyRouteTable: ipv4 routing table 133 is already in use in namespace hv2-rt-route (0 ip rule(s) look it up, it holds 1 route(s)); nothing was changed',
    );
    expect(result.stderr).toContain('route in table 133: 10.77.0.0/16 dev lo');
    expect(result.status).toBe(1);
    expect(hostState(ns)).toBe(before);
    expectNotInstalled(ns, stateDir);
  });

  it('refuses a table an ip rule of either family looks up, and changes nothing', () => {
    const ns = freshNs('hv2-rt-rule');
    const stateDir = tempStateDir();
    inNs(ns, 'ip', ['-6', 'rule', 'add', 'from', 'fd00:77::/32', 'lookup', '140', 'priority', '500']);
    const before = hostState(ns);
    const result = meshctl(['install', ...args(ns, stateDir, configFile('rule.yaml', 140))]);
    expect(result.stderr).toContain(
      'meshctl: ROUTE_TABLE_IN_USE: capture.inbound.tproxyRouteTable: ipv6 routing table 140 is already in use in namespace hv2-rt-rule (1 ip rule(s) look it up, it holds 0 route(s)); nothing was changed',
    );
    expect(result.stderr).toMatch(/ip rule: 500:\s+from fd00:77::\/32 lookup 140/);
    expect(result.status).toBe(1);
    expect(hostState(ns)).toBe(before);
    expectNotInstalled(ns, stateDir);
  });

  it('refuses the reserved table 255 (local) at load, before touching the namespace', () => {
    const ns = freshNs('hv2-rt-local');
    const stateDir = tempStateDir();
    const before = hostState(ns);
    const result = meshctl(['install', ...args(ns, stateDir, configFile('local.yaml', 255))]);
    expect(result.stderr).toContain('meshctl: CONFIG_INVALID: capture.inbound.tproxyRouteTable');
    expect(result.stderr).toContain(
      '255 is a reserved routing table (253 default, 254 main, 255 local); choose another',
    );
    expect(result.status).toBe(1);
    expect(hostState(ns)).toBe(before);
  });

  it('with the table named in rt_tables: installs, reports in sync, and uninstall leaves no ip rule (checked by number)', () => {
    const ns = freshNs('hv2-rt-named');
    const stateDir = tempStateDir();
    // iproute2 prints a table by its rt_tables name; a private mount namespace names 133 for meshctl's runs only.
    const rtTables = join(dir, 'rt_tables');
    writeFileSync(rtTables, '255\tlocal\n254\tmain\n253\tdefault\n0\tunspec\n133\tmeshtproxy\n');
    const named = (command: string[]) => {
      const r = spawnSync(
        'unshare',
        [
          '-m',
          'sh',
          '-c',
          'mount --bind "$0" /etc/iproute2/rt_tables && exec "$@"',
          rtTables,
          process.execPath,
          MESHCTL,
          ...command,
        ],
        { encoding: 'utf8', env: labEnv, timeout: 60_000 },
      );
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    };
    const before = hostState(ns);
    const config = configFile('named.yaml', 133);

    const install = named(['install', ...args(ns, stateDir, config)]);
    expect(install.stderr).toBe('');
    expect(install.status).toBe(0);
    expect(rulesLookingUp(ns, 133)).toEqual([
      '32000:\tfrom all fwmark 0x539 lookup 133',
      '32000:\tfrom all fwmark 0x539 lookup 133',
    ]);
    // Where meshctl ran, iproute2 shows the table by its name (what the old by-name comparison missed).
    const shown = spawnSync(
      'unshare',
      ['-m', 'sh', '-c', 'mount --bind "$0" /etc/iproute2/rt_tables && exec ip -n "$1" -4 rule show', rtTables, ns],
      { encoding: 'utf8' },
    );
    expect(shown.stdout).toContain('fwmark 0x539 lookup meshtproxy');
    const status = named(['status', '--netns', ns, '--state-dir', stateDir, '--json']);
    expect(JSON.parse(status.stdout)).toMatchObject({ installed: true, inSync: true, missingExtras: [] });
    // Re-install with the same config finds everything in place.
    expect(named(['install', ...args(ns, stateDir, config)]).status).toBe(0);

    const uninstall = named(['uninstall', '--netns', ns, '--state-dir', stateDir]);
    expect(uninstall.status).toBe(0);
    expect(rulesLookingUp(ns, 133)).toEqual([]);
    expect(inNs(ns, 'ip', ['-N', '-4', 'route', 'show', 'table', 'all'])).not.toContain('table 133');
    expect(meshctlResidue(ns)).toEqual([]);
    expect(hostState(ns)).toBe(before);
  });
});
