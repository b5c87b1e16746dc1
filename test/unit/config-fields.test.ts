// The field table (src/config/fields.ts) against the schema (rules/meshctl.schema.json), the one source of the
// defaults: every field a file can set has an entry or is a policy section's, each default is in the schema and
// parses, each enum matches, and each named cross-field check fires on its own.
import { describe, expect, it } from 'vitest';
import { CHECKS, runChecks } from '../../src/config/checks.js';
import { FIELD_TABLE, type FieldEntry } from '../../src/config/fields.js';
import { configFromObject } from '../../src/config/load.js';
import { POLICY_PATHS } from '../../src/config/policy.js';
import { configSchema, schemaDefault, schemaLeaves, schemaNodeAt, type SchemaNode } from '../../src/config/schema.js';
import { renderConfig } from '../../src/config/render.js';
import { cases, testHost } from '../cases.js';

const fields = FIELD_TABLE.filter((e): e is FieldEntry => e.kind === 'field');
const load = (raw: Record<string, unknown>) =>
  configFromObject({ proxy: { user: 'meshproxy' }, ...raw }, { file: 'config.yaml', host: testHost, env: {} });

/** Fields whose absence means something, so the schema gives no default (README says what happens instead). */
const NO_DEFAULT: Record<string, string> = {
  'proxy.group': "the proxy user's primary group",
  'safety.sshPorts': 'the ports sshd listens on',
};

describe('the field table', () => {
  it('has an entry for every schema leaf outside the policy sections, and only for schema leaves', () => {
    const isPolicy = (path: string) =>
      POLICY_PATHS.some((section) => path === section || path.startsWith(`${section}.`));
    expect(schemaLeaves().filter((leaf) => !isPolicy(leaf) && !fields.some((f) => f.path === leaf))).toEqual([]);
    expect(fields.map((f) => f.path).filter((path) => !schemaLeaves().includes(path) || isPolicy(path))).toEqual([]);
  });

  it('reads each path once and writes each Config path once', () => {
    const paths = fields.map((f) => f.path);
    const tos = FIELD_TABLE.map((e) => e.to).filter((to) => to !== null);
    expect(paths.filter((p, i) => paths.indexOf(p) !== i)).toEqual([]);
    expect(tos.filter((p, i) => tos.indexOf(p) !== i)).toEqual([]);
  });

  it('takes every default from the schema, and each parses', () => {
    for (const f of fields) {
      const fallback = schemaDefault(f.path);
      if (f.path in NO_DEFAULT) {
        expect(fallback, f.path).toBeUndefined();
        continue;
      }
      expect(fallback, `${f.path} has no "default" in the schema`).not.toBeUndefined();
      expect(
        () =>
          f.parser.parse(fallback, {
            path: f.path,
            userDb: testHost.userDb,
            problem: (p, m) => expect.fail(`${p}: ${m}`),
          }),
        f.path,
      ).not.toThrow();
    }
  });

  it('gives the same config for a file that writes every default as for an empty one', () => {
    const raw: Record<string, unknown> = {};
    for (const leaf of schemaLeaves()) {
      const value = schemaDefault(leaf);
      if (value === undefined) continue;
      let node = raw;
      const keys = leaf.split('.');
      for (const key of keys.slice(0, -1)) node = (node[key] ??= {}) as Record<string, unknown>;
      node[keys.at(-1)!] = value;
    }
    expect(raw).toHaveProperty('proxy.connectTimeout', '10s');
    expect(raw).toHaveProperty('controlPlane.pollInterval', '10s');
    delete raw.controlPlane; // its url has no default: the section is all or nothing
    expect(load({ ...raw, proxy: { ...(raw.proxy as object), user: 'meshproxy' } }).hash).toBe(load({}).hash);
  });

  it("offers exactly the schema enum as each enum field's choices", () => {
    const enums = fields.filter((f) => f.parser.choices !== undefined);
    expect(enums.map((f) => f.path)).toEqual([
      'proxy.relay',
      'capture.backend',
      'capture.ipv6',
      'capture.inbound.mode',
      'safety.onProxyDown',
      'mtls.inbound',
    ]);
    for (const f of enums) expect(f.parser.choices, f.path).toEqual(schemaNodeAt(f.path)?.enum);
  });

  it("keeps each example's hash: the ledger compares it, so a refactor that moved it would look like a config change", () => {
    // The examples that predate the larger scenario table are enough to catch a moved hash.
    const pinned: Record<string, string> = {
      'dual-stack-block': 'f582000e3fa5f367c06e6be3c3d959847be7f0b9f25fe83286302ed7faf5c85a',
      'exclusions-heavy': '27786ab99a2d7f5609f7af7d6671341b79ed54c2a8a0d57cba32c7a46d09afe0',
      'owner-group-allowlist': '5fa11dcb003a3c0ede21123e54c1d311f92020a8c64e33853b33931601238251',
      'vm-default': '99004d0ab7fe9434f19dbbc4c4f5855fe6e69622f7d2d715bf8abf9c006ceb38',
      'vm-tproxy-dns': '85edd4e6c64f6ff205403c8ec3df35e67a6a7b73f1cedf239f949d31676d9107',
    };
    expect(Object.fromEntries(cases.filter((c) => c.name in pinned).map((c) => [c.name, c.config.hash]))).toEqual(
      pinned,
    );
  });

  it('renders every field into the file form', () => {
    const file = renderConfig(load({ safety: { sshPorts: [22] } }), testHost.userDb);
    for (const f of fields) expect(file, f.path).toHaveProperty(f.path);
  });
});

describe('the schema', () => {
  /** Every node of the schema with a path for messages, definitions included. */
  function nodes(node: unknown, path: string): [string, SchemaNode][] {
    if (typeof node !== 'object' || node === null) return [];
    const children = Object.entries(node).flatMap(([key, child]) => nodes(child, `${path}/${key}`));
    return Array.isArray(node) ? children : [[path, node as SchemaNode], ...children];
  }

  it('states a default in a description only where it equals the "default" keyword', () => {
    const stated = nodes(configSchema, '#').flatMap(([path, node]) => {
      const match =
        typeof node.description === 'string'
          ? /\bDefault ("[^"]*"|-?\d+(?:\.\d+)?|true|false|null|\[\])/.exec(node.description)
          : null;
      return match ? [{ path, stated: JSON.parse(match[1]!) as unknown, default: node.default }] : [];
    });
    expect(stated.length).toBeGreaterThan(0);
    for (const s of stated) expect(s.default, s.path).toEqual(s.stated);
  });
});

describe('the named checks', () => {
  type Body = ReturnType<typeof load>;
  /** A valid config changed so that exactly one rule is broken (the checks see resolved values, not the file). */
  const breaks: Record<string, (c: Body) => void> = {
    proxyUserNotRoot: (c) => Object.assign(c.proxy.user, { name: 'root', uid: 0 }),
    proxyGroupNotRoot: (c) => Object.assign(c.proxy.user, { gid: 0 }),
    portsDistinct: (c) => Object.assign(c.proxy, { adminPort: c.proxy.outboundPort }),
    includedPortsNotExcluded: (c) =>
      Object.assign(c.capture.outbound, { includePorts: [{ from: 80, to: 80 }], excludePorts: [{ from: 80, to: 90 }] }),
    includedCidrsNotExcluded: (c) => {
      const cidr = { family: 'ipv4', address: '10.0.0.0', prefix: 8 } as const;
      Object.assign(c.capture.outbound, { includeCidrs: [cidr], excludeCidrs: [cidr] });
    },
    groupAllowListAlone: (c) => Object.assign(c.capture.outbound, { includeGids: [2000], excludeGids: [999] }),
    unitAllowListAlone: (c) =>
      Object.assign(c.capture.outbound, {
        includeUnits: [{ name: 'app.service', cgroup: '/system.slice/app.service' }],
        excludeUnits: [{ name: 'backup.service', cgroup: '/system.slice/backup.service' }],
      }),
    proxyPortsNotCaptured: (c) => Object.assign(c.capture.inbound, { includePorts: [{ from: 15006, to: 15006 }] }),
    sshNotCaptured: (c) => Object.assign(c.capture.inbound, { includePorts: [{ from: 22, to: 22 }] }),
    mtlsIdentityComplete: (c) => Object.assign(c.mtls, { inbound: 'strict' }),
  };

  it('has a name for each rule, and a valid config passes them all', () => {
    expect(CHECKS.map((c) => c.name).sort()).toEqual(Object.keys(breaks).sort());
    expect(runChecks({ config: load({}), given: () => true })).toEqual([]);
  });

  it.each(CHECKS.map((c) => c.name))('%s reports a config that breaks it, and no other check does', (name) => {
    const config = structuredClone(load({})) as Body;
    breaks[name]!(config);
    const reporting = CHECKS.filter((check) => check.run({ config, given: () => true }).length > 0).map(
      (check) => check.name,
    );
    expect(reporting).toEqual([name]);
  });
});
