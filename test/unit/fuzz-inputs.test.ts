// Hostile input, property-based (fast-check): configs (mutated examples, raw YAML text), flags and explain's
// endpoints. Every input ends in a value or a MeshctlError with a code; never an uncoded error (INTERNAL) and never
// a hang (each property runs inside the test's time bound). MESHCTL_FUZZ_RUNS raises the count (`npm run
// test:soak` runs thousands; the default here is a few hundred per property).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { parseEndpoint } from '../../src/cli/explain.js';
import { configOverrides } from '../../src/cli/config-flags.js';
import { configFromObject, loadConfig } from '../../src/config/load.js';
import { isMeshctlError } from '../../src/errors.js';
import { cases, testHost } from '../cases.js';

const RUNS = Number(process.env.MESHCTL_FUZZ_RUNS ?? 300);
const dir = mkdtempSync(join(tmpdir(), 'mn-fuzz-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** 'ok', or the MeshctlError's code; anything else fails the property with the error's stack. */
function settle(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (error) {
    if (isMeshctlError(error)) return error.code;
    throw new Error(`uncoded error: ${(error as Error).stack ?? String(error)}`);
  }
}

async function settleAsync(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return 'ok';
  } catch (error) {
    if (isMeshctlError(error)) return error.code;
    throw new Error(`uncoded error: ${(error as Error).stack ?? String(error)}`);
  }
}

/** Hostile leaf values: wrong types, edges of ranges, huge numbers and strings, injection attempts. */
const hostile = fc.oneof(
  fc.constantFrom(
    null,
    true,
    false,
    0,
    -1,
    65536,
    2 ** 31,
    2 ** 53,
    Number.MAX_SAFE_INTEGER,
    1.5,
    '',
    '*',
    'off',
    '0s',
    '600h',
    '1e9h',
    '999999999999999999999ms',
    '10.0.0.0/33',
    '::/129',
    '256.1.1.1/8',
    '1-0',
    '0',
    '65535-65536',
    'a"b',
    "x'; rm -rf /",
    '$(id)',
    '\n-A OUTPUT -j ACCEPT',
    'eth0"',
    'lo',
    'a'.repeat(5000),
    [],
    {},
    [null],
    ['*'],
    [''],
    [-1],
    ['22', 22],
    { '': 1 },
    { __proto__: { x: 1 } },
  ),
  fc.string(),
  fc.integer(),
  fc.double(),
  fc.array(fc.oneof(fc.string(), fc.integer()), { maxLength: 5 }),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string(), fc.integer(), fc.boolean()), { maxKeys: 3 }),
);

/** Every leaf path of an object (arrays by index). */
function leafPaths(value: unknown, prefix: string[] = []): string[][] {
  if (typeof value !== 'object' || value === null) return prefix.length > 0 ? [prefix] : [];
  const entries = Object.entries(value as Record<string, unknown>);
  return [...(prefix.length > 0 ? [prefix] : []), ...entries.flatMap(([k, v]) => leafPaths(v, [...prefix, k]))];
}

function setAt(root: unknown, path: readonly string[], value: unknown): unknown {
  const copy = structuredClone(root) as Record<string, unknown>;
  let node = copy;
  for (const k of path.slice(0, -1)) node = node[k] as Record<string, unknown>;
  node[path[path.length - 1]!] = value;
  return copy;
}

/** Config section paths, real and near-real, to plant a hostile value at (also where no value is today). */
const PLANTED = [
  'proxy.user',
  'proxy.group',
  'proxy.outboundPort',
  'proxy.inboundPort',
  'proxy.adminPort',
  'proxy.workers',
  'proxy.connectTimeout',
  'proxy.drainTimeout',
  'proxy.idleTimeout',
  'proxy.accessLog.sampleRatio',
  'proxy.accessLog.path',
  'capture.ipv6',
  'capture.backend',
  'capture.excludeInterfaces',
  'capture.inbound.mode',
  'capture.inbound.includePorts',
  'capture.inbound.excludePorts',
  'capture.inbound.tproxyRouteTable',
  'capture.inbound.tproxyMark',
  'capture.outbound.includeCidrs',
  'capture.outbound.excludeCidrs',
  'capture.outbound.includePorts',
  'capture.outbound.excludePorts',
  'capture.outbound.excludeUids',
  'capture.outbound.includeGids',
  'capture.dns.enabled',
  'capture.dns.port',
  'capture.dns.servers',
  'safety.sshPorts',
  'safety.unsafeCaptureSsh',
  'stateDir',
  'services',
  'outbound.policy',
  'outbound.resolver.servers',
  'inbound.ports',
  'controlPlane.url',
  'controlPlane.pollInterval',
  'nosuch',
].map((p) => p.split('.'));

describe('hostile input, property-based', () => {
  it('ends every mutated example config in a Config or a coded error', () => {
    const examples = cases.map((c) => c.raw);
    const allPaths = [...new Set([...examples.flatMap((e) => leafPaths(e)), ...PLANTED].map((p) => p.join('.')))].map(
      (p) => p.split('.'),
    );
    fc.assert(
      fc.property(
        fc.constantFrom(...examples),
        fc.array(fc.tuple(fc.constantFrom(...allPaths), hostile), { minLength: 1, maxLength: 4 }),
        (example, edits) => {
          let raw: unknown = example;
          for (const [path, value] of edits) {
            try {
              raw = setAt(raw, path, value);
            } catch {
              // a path through a value that is no longer an object: plant at the top instead
              raw = setAt(raw, [path[0]!], value);
            }
          }
          settle(() => configFromObject(raw, { file: 'fuzz.json', host: testHost, env: {} }));
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('ends every config file text (YAML or JSON, valid or not) in a Config or a coded error', async () => {
    const yamlish = fc.oneof(
      fc.string(),
      fc.constantFrom(
        'a: &a [1,2]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n',
        'proxy: !!set {a, b}\n',
        'proxy:\n  user: !!binary aGVsbG8=\n',
        '- 1\n- 2\n',
        'null\n',
        '42\n',
        '"string"\n',
        'proxy: {outboundPort: 0x3A99}\n',
        '{"proxy": {"outboundPort": 15001}, "proxy": {}}',
        'capture:\n  outbound:\n    excludeCidrs: [10.0.0.0/8, ]\n',
      ),
      fc.json(),
    );
    await fc.assert(
      fc.asyncProperty(yamlish, async (text) => {
        const file = join(dir, 'config.yaml');
        writeFileSync(file, text);
        await settleAsync(() => loadConfig({ file, host: testHost, env: {} }));
      }),
      { numRuns: RUNS },
    );
  });

  it('ends every flag value in a Config or a coded error', () => {
    const flags = [
      'proxyOutboundPort',
      'proxyUser',
      'ipv6',
      'inboundIncludePorts',
      'outboundExcludeCidrs',
      'outboundIncludeCidrs',
      'excludeUids',
      'includeGids',
      'excludeInterfaces',
      'dnsPort',
      'sshPorts',
      'outboundExcludePorts',
      'inboundMode',
      'backend',
      'stateDir',
    ];
    fc.assert(
      fc.property(
        fc.dictionary(
          fc.constantFrom(...flags),
          fc.oneof(fc.string(), fc.constantFrom('', '*', ',', '0', '-1', '65536', '1-', '10.0.0.0/8,,', 'nobody,root')),
        ),
        (options) => {
          settle(() =>
            configFromObject(
              { proxy: { user: 'meshproxy' } },
              { flags: configOverrides(options), host: testHost, env: {} },
            ),
          );
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('ends every explain endpoint in an endpoint or EXPLAIN_INPUT', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.constantFrom(
            '1.2.3.4:0',
            '1.2.3.4:65536',
            '[::1]',
            '[::1]:80',
            '::1:80',
            '1.2.3.4:',
            ':80',
            '[1.2.3.4]:80',
            'host:80',
          ),
        ),
        (text) => {
          const result = settle(() => parseEndpoint(text, '--dst'));
          expect(['ok', 'EXPLAIN_INPUT']).toContain(result);
        },
      ),
      { numRuns: RUNS },
    );
  });
});
