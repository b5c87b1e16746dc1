// Gate for tests that need root and a real kernel (network namespaces, iptables, nft).
// They run as root on Linux; MESHCTL_INTEGRATION=0 skips them, =1 insists. What they need on the machine is checked
// once per run by test/helpers/prerequisites.mjs (vitest's globalSetup), which fails the run naming the package.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { integrationWanted } from './prerequisites.mjs';

const isRoot = process.getuid?.() === 0;

export const integrationEnabled = integrationWanted();

/**
 * The proxy under test runs as nobody (uid 65534) from this checkout: it needs to read bin/, dist/, the addon and
 * the test agents. A checkout under a 0700 directory (e.g. `mktemp -d`) would make every proxy fail with "Cannot
 * find module"; say so once, up front, instead.
 */
export function unreadableByProxyUser(root = fileURLToPath(new URL('../..', import.meta.url))): string | null {
  const probes = ['bin/meshctl', 'package.json', 'test/helpers/proxy-agent.mjs'].map((p) => `${root}${p}`);
  try {
    execFileSync(
      'setpriv',
      [
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        'sh',
        '-c',
        'for f in "$@"; do test -r "$f" || { echo "$f"; exit 1; }; done',
        'sh',
        ...probes,
      ],
      { stdio: 'pipe' },
    );
    return null;
  } catch (error) {
    const out = String((error as { stdout?: Buffer }).stdout ?? '').trim();
    return out === '' ? root : out;
  }
}

if (integrationEnabled && isRoot) {
  const blocked = unreadableByProxyUser();
  if (blocked !== null) {
    throw new Error(
      `the integration tests run the proxy as nobody (uid 65534), which cannot read ${blocked}: ` +
        'make the checkout and every directory above it readable and searchable by others (e.g. `chmod 755` on a ' +
        '`mktemp -d` directory), or run `.ci/run`, which copies an unreadable checkout to a readable place first',
    );
  }
}
