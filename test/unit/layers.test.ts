// Layers point down: every import in src/ goes to the same layer or one below it (docs/ARCHITECTURE.md). A new
// import that runs back up (config importing policy, netfilter importing the proxy, a driver importing the
// transaction) fails here, naming the file and the import.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = fileURLToPath(new URL('../../src', import.meta.url));

/** Each layer and the layers it may import from (besides itself). Order: bottom to top. */
const MAY_IMPORT: Record<string, readonly string[]> = {
  errors: [],
  log: [],
  values: ['errors'],
  config: ['values', 'errors'],
  capture: ['config', 'values', 'errors'],
  native: ['values', 'errors'],
  'netfilter/drivers': ['capture', 'config', 'values', 'errors', 'log'],
  'netfilter/transaction': ['netfilter/drivers', 'capture', 'config', 'values', 'errors', 'log'],
  'netfilter/host': ['netfilter/transaction', 'netfilter/drivers', 'capture', 'config', 'values', 'errors', 'log'],
  netfilter: [
    'netfilter/host',
    'netfilter/transaction',
    'netfilter/drivers',
    'capture',
    'config',
    'values',
    'errors',
    'log',
  ],
  policy: ['config', 'values', 'errors', 'log'],
  mtls: ['config', 'values', 'errors', 'log'],
  dns: ['policy', 'config', 'values', 'errors', 'log'],
  proxy: ['dns', 'policy', 'mtls', 'native', 'config', 'values', 'errors', 'log'],
  probes: [
    'proxy',
    'dns',
    'policy',
    'mtls',
    'native',
    'netfilter',
    'netfilter/host',
    'netfilter/transaction',
    'netfilter/drivers',
    'capture',
    'config',
    'values',
    'errors',
    'log',
  ],
  service: [
    'probes',
    'proxy',
    'dns',
    'mtls',
    'netfilter',
    'netfilter/host',
    'netfilter/transaction',
    'netfilter/drivers',
    'capture',
    'config',
    'values',
    'errors',
    'log',
  ],
  demo: [
    'service',
    'probes',
    'proxy',
    'dns',
    'policy',
    'mtls',
    'native',
    'netfilter',
    'netfilter/host',
    'netfilter/transaction',
    'netfilter/drivers',
    'capture',
    'config',
    'values',
    'errors',
    'log',
  ],
  cli: [
    'demo',
    'service',
    'probes',
    'proxy',
    'dns',
    'policy',
    'mtls',
    'native',
    'netfilter',
    'netfilter/host',
    'netfilter/transaction',
    'netfilter/drivers',
    'capture',
    'config',
    'values',
    'errors',
    'log',
  ],
};

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sources(path) : name.endsWith('.ts') ? [path] : [];
  });
}

/** `netfilter/drivers/runner.ts` → `netfilter/drivers`; `errors.ts` → `errors`. */
function layerOf(file: string): string {
  const parts = relative(SRC, file).split('/');
  if (parts.length === 1) return parts[0]!.replace(/\.ts$/, '');
  if (parts[0] === 'netfilter' && parts.length > 2) return `netfilter/${parts[1]}`;
  return parts[0]!;
}

function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+['"](\.[^'"]+)['"]/g)].map((m) => m[1]!);
  return specs.map((s) => normalize(join(dirname(file), s)).replace(/\.js$/, '.ts'));
}

describe('the layers of src/', () => {
  const files = sources(SRC);

  it('knows the layer of every file', () => {
    expect(files.map(layerOf).filter((l) => !(l in MAY_IMPORT))).toEqual([]);
  });

  it('imports only from the same layer or one it may use', () => {
    const upward: string[] = [];
    for (const file of files) {
      const from = layerOf(file);
      for (const target of importsOf(file)) {
        const to = layerOf(target);
        if (to !== from && !MAY_IMPORT[from]!.includes(to))
          upward.push(`${relative(SRC, file)} (${from}) imports ${relative(SRC, target)} (${to})`);
      }
    }
    expect(upward).toEqual([]);
  });

  it('has no import cycle between files', () => {
    const graph = new Map(files.map((f) => [f, importsOf(f)]));
    const state = new Map<string, 'open' | 'done'>();
    const cycles: string[] = [];
    const visit = (file: string, path: string[]): void => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'open') {
        cycles.push([...path.slice(path.indexOf(file)), file].map((f) => relative(SRC, f)).join(' → '));
        return;
      }
      state.set(file, 'open');
      for (const next of graph.get(file) ?? []) visit(next, [...path, file]);
      state.set(file, 'done');
    };
    for (const file of files) visit(file, []);
    expect(cycles).toEqual([]);
  });
});
