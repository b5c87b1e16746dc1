// buildTransition: the one iptables-restore --noflush input that moves our objects to a target. Pure; the kernel
// side (that redeclaring a chain flushes it in noflush mode, that -D/-I apply in one COMMIT) is proven by the
// netns tests. Here: what is emitted, in which order, and what is refused.
import { describe, expect, it } from 'vitest';
import { parseSave } from '../../src/capture/parse-save.js';
import { planCapture } from '../../src/capture/plan.js';
import { isMeshctlError } from '../../src/errors.js';
import {
  buildTransition,
  ownedInDump,
  planObjects,
  presentIn,
} from '../../src/netfilter/drivers/xtables-transition.js';
import { splitTables } from '../../src/netfilter/drivers/xtables-driver.js';
import { loadCase } from '../cases.js';

function dedent(text: string): string {
  const lines = text.replace(/^\n/, '').split('\n');
  const indent = Math.min(...lines.filter((l) => l.trim() !== '').map((l) => /^ */.exec(l)![0].length));
  return lines.map((l) => l.slice(indent)).join('\n');
}

// A nat table with Docker's rules around an installed meshctl (as iptables-nft-save prints it).
const INSTALLED = parseSave(
  dedent(`
  *nat
  :PREROUTING ACCEPT [0:0]
  :INPUT ACCEPT [0:0]
  :OUTPUT ACCEPT [0:0]
  :POSTROUTING ACCEPT [0:0]
  :DOCKER - [0:0]
  :MESHCTL_OUTPUT - [0:0]
  :MESHCTL_REDIRECT - [0:0]
  :MESHCTL_OLD - [0:0]
  -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
  -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
  -A OUTPUT -p tcp -m comment --comment "meshctl:outbound-capture" -j MESHCTL_OUTPUT
  -A OUTPUT -p tcp -m tcp --dport 7777 -j REDIRECT --to-ports 7778
  -A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
  -A MESHCTL_OUTPUT -m owner --uid-owner 1337 -m comment --comment "meshctl:skip-proxy-uid" -j RETURN
  -A MESHCTL_OUTPUT -p tcp -m comment --comment "meshctl:outbound-to-proxy" -j MESHCTL_REDIRECT
  -A MESHCTL_REDIRECT -p tcp -m comment --comment "meshctl:redirect-outbound" -j REDIRECT --to-ports 15001
  COMMIT
`),
);

const target = [
  {
    table: 'nat' as const,
    chains: ['MESHCTL_OUTPUT', 'MESHCTL_REDIRECT'],
    rules: [
      {
        chain: 'MESHCTL_OUTPUT',
        raw: '-m owner --uid-owner 1337 -m comment --comment "meshctl:skip-proxy-uid" -j RETURN',
      },
      { chain: 'MESHCTL_OUTPUT', raw: '-p tcp --dport 5432 -m comment --comment "meshctl:skip-port" -j RETURN' },
      { chain: 'MESHCTL_OUTPUT', raw: '-p tcp -m comment --comment "meshctl:outbound-to-proxy" -j MESHCTL_REDIRECT' },
      {
        chain: 'MESHCTL_REDIRECT',
        raw: '-p tcp -m comment --comment "meshctl:redirect-outbound" -j REDIRECT --to-ports 15001',
      },
      { chain: 'OUTPUT', raw: '-p tcp -m comment --comment "meshctl:outbound-capture" -j MESHCTL_OUTPUT' },
    ],
  },
];

describe('buildTransition', () => {
  it('replaces our chains in one COMMIT: redeclares kept chains, keeps an unchanged jump, and deletes a dropped chain last', () => {
    const text = buildTransition(INSTALLED, ownedInDump(INSTALLED), target);
    expect(text).toBe(
      dedent(`
      *nat
      :MESHCTL_OUTPUT - [0:0]
      :MESHCTL_REDIRECT - [0:0]
      :MESHCTL_OLD - [0:0]
      -A MESHCTL_OUTPUT -m owner --uid-owner 1337 -m comment --comment "meshctl:skip-proxy-uid" -j RETURN
      -A MESHCTL_OUTPUT -p tcp --dport 5432 -m comment --comment "meshctl:skip-port" -j RETURN
      -A MESHCTL_OUTPUT -p tcp -m comment --comment "meshctl:outbound-to-proxy" -j MESHCTL_REDIRECT
      -A MESHCTL_REDIRECT -p tcp -m comment --comment "meshctl:redirect-outbound" -j REDIRECT --to-ports 15001
      -X MESHCTL_OLD
      COMMIT
    `),
    );
    expect(text.match(/COMMIT/g)).toHaveLength(1);
    expect(text).not.toMatch(/^-F|^-D/m);
  });

  it('rewrites a changed jump at the position of the old one, after the foreign rules before it', () => {
    const changed = [
      {
        ...target[0]!,
        rules: target[0]!.rules.map((r) =>
          r.chain === 'OUTPUT'
            ? { chain: 'OUTPUT', raw: '-m comment --comment "meshctl:outbound-capture" -j MESHCTL_OUTPUT' }
            : r,
        ),
      },
    ];
    const text = buildTransition(INSTALLED, ownedInDump(INSTALLED), changed);
    const lines = text.split('\n');
    const del = lines.indexOf('-D OUTPUT -p tcp -m comment --comment "meshctl:outbound-capture" -j MESHCTL_OUTPUT');
    const ins = lines.indexOf('-I OUTPUT 2 -m comment --comment "meshctl:outbound-capture" -j MESHCTL_OUTPUT');
    expect(del).toBeGreaterThan(0);
    expect(ins).toBeGreaterThan(del);
    expect(lines.indexOf('COMMIT')).toBeGreaterThan(ins);
  });

  it('appends jumps when none of ours exist yet (a fresh install)', () => {
    const fresh = parseSave('*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n');
    const text = buildTransition(fresh, ownedInDump(fresh), target);
    expect(text).toContain('-A OUTPUT -p tcp -m comment --comment "meshctl:outbound-capture" -j MESHCTL_OUTPUT');
    expect(text).not.toContain('-D ');
  });

  it('removes exactly the listed objects and nothing else for uninstall', () => {
    const listed = [
      {
        table: 'nat' as const,
        chains: ['MESHCTL_OUTPUT', 'MESHCTL_REDIRECT'],
        rules: [{ chain: 'OUTPUT', raw: '-p tcp -m comment --comment "meshctl:outbound-capture" -j MESHCTL_OUTPUT' }],
      },
    ];
    const text = buildTransition(INSTALLED, presentIn(INSTALLED, listed), []);
    expect(text).toBe(
      dedent(`
      *nat
      :MESHCTL_OUTPUT - [0:0]
      :MESHCTL_REDIRECT - [0:0]
      -D OUTPUT -p tcp -m comment --comment "meshctl:outbound-capture" -j MESHCTL_OUTPUT
      -X MESHCTL_OUTPUT
      -X MESHCTL_REDIRECT
      COMMIT
    `),
    );
    // MESHCTL_OLD is ours by name but not in the ledger: it stays.
    expect(text).not.toContain('MESHCTL_OLD');
  });

  it('skips listed objects that are already gone instead of failing on them', () => {
    const listed = [
      {
        table: 'nat' as const,
        chains: ['MESHCTL_GONE'],
        rules: [
          { chain: 'PREROUTING', raw: '-p tcp -m comment --comment "meshctl:inbound-capture" -j MESHCTL_INBOUND' },
        ],
      },
    ];
    expect(presentIn(INSTALLED, listed)).toEqual([]);
    expect(buildTransition(INSTALLED, presentIn(INSTALLED, listed), [])).toBe('');
  });

  it('refuses to delete a chain that a foreign rule still jumps to, naming the rule', () => {
    const dump = parseSave(
      dedent(`
      *nat
      :OUTPUT ACCEPT [0:0]
      :MESHCTL_OUTPUT - [0:0]
      :KEEP - [0:0]
      -A KEEP -j MESHCTL_OUTPUT
      COMMIT
    `),
    );
    try {
      buildTransition(dump, [{ table: 'nat', chains: ['MESHCTL_OUTPUT'], rules: [] }], []);
      expect.unreachable();
    } catch (error) {
      expect(isMeshctlError(error, 'NOT_OWNED')).toBe(true);
      expect((error as Error).message).toContain('"-A KEEP -j MESHCTL_OUTPUT" jumps to MESHCTL_OUTPUT');
    }
  });

  it('renders every planned rule of a shipped example through renderRule, chains per table', () => {
    const plan = planCapture(
      loadCase('vm-tproxy-dns', {
        proxy: { user: 'meshproxy' },
        capture: { inbound: { mode: 'tproxy' }, dns: { enabled: true } },
      }),
    );
    const objects = planObjects(plan.families[0]!);
    expect(objects.map((o) => o.table)).toEqual(['raw', 'mangle', 'nat']);
    expect(objects.flatMap((o) => o.rules)).toHaveLength(plan.families[0]!.rules.length);
  });
});

describe('splitTables', () => {
  it('cuts iptables-save output into one section per table without comment lines', () => {
    const sections = splitTables(
      '# Generated\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n# Completed\n*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n',
    );
    expect(sections).toEqual([
      { table: 'filter', text: '*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n' },
      { table: 'nat', text: '*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n' },
    ]);
  });
});

describe('parseXtablesNftTables', () => {
  it('finds the iptables-nft tables and tells empty accept base chains from the rest', async () => {
    const { parseXtablesNftTables } = await import('../../src/netfilter/drivers/nft-tidy.js');
    const tables = parseXtablesNftTables(
      [
        '# Warning: table ip nat is managed by iptables-nft, do not touch!',
        'table ip nat {',
        '\tchain OUTPUT {',
        '\t\ttype nat hook output priority -100; policy accept;',
        '\t}',
        '',
        '\tchain PREROUTING {',
        '\t\ttype nat hook prerouting priority dstnat; policy accept;',
        '\t\tfib daddr type local counter packets 0 bytes 0 jump DOCKER',
        '\t}',
        '\tchain DOCKER {',
        '\t}',
        '}',
        'table inet meshctl {',
        '\tchain nat_output {',
        '\t\ttype nat hook output priority -100; policy accept;',
        '\t}',
        '}',
        'table ip6 filter {',
        '\tchain INPUT {',
        '\t\ttype filter hook input priority filter; policy drop;',
        '\t}',
        '}',
      ].join('\n'),
    );
    expect(tables).toEqual([
      {
        family: 'ip',
        name: 'nat',
        chains: [
          { name: 'OUTPUT', base: true, policyAccept: true, rules: 0 },
          { name: 'PREROUTING', base: true, policyAccept: true, rules: 1 },
          { name: 'DOCKER', base: false, policyAccept: true, rules: 0 },
        ],
      },
      { family: 'ip6', name: 'filter', chains: [{ name: 'INPUT', base: true, policyAccept: false, rules: 0 }] },
    ]);
  });
});
