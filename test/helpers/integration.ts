// Gate for tests that need root and a real kernel (network namespaces, iptables, nft).
// They run by default when root; MESHCTL_INTEGRATION=0 skips them, =1 insists (and fails loudly when impossible).
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

function haveCommand(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const wanted = process.env.MESHCTL_INTEGRATION;
const isRoot = process.getuid?.() === 0;
const missing = ['ip', 'iptables-restore', 'ip6tables-restore', 'nft'].filter((c) => !haveCommand(c));

export const integrationEnabled = wanted === '1' || (wanted !== '0' && isRoot && missing.length === 0);

if (wanted === '1' && (!isRoot || missing.length > 0)) {
  throw new Error(`MESHCTL_INTEGRATION=1 but ${!isRoot ? 'not running as root' : `missing commands: ${missing.join(', ')}`}`);
}
if (!integrationEnabled) {
  const why = wanted === '0' ? 'MESHCTL_INTEGRATION=0' : !isRoot ? 'not root' : `missing ${missing.join(', ')}`;
  process.stderr.write(`[meshctl] integration tests skipped (${why}); run as root with iptables, nftables and iproute2 installed (see .ci/run) to enable them\n`);
}

/**
 * The proxy under test runs as nobody (uid 65534) from this checkout: it needs to read bin/, dist/, the addon and
 * the test agents. A checkout under a 0700 directory (e.g. `mktemp -d`) would make every proxy fail with "Cannot
 * find module"; say so once, up front, instead.
 */
export function unreadableByProxyUser(root = fileURLToPath(new URL('../..', import.meta.url))): string | null {
  const probes = ['bin/meshctl', 'package.json', 'test/helpers/proxy-agent.mjs'].map((p) => `${root}${p}`);
  try {
    execFileSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'sh', '-c', 'for f in "$@"; do test -r "$f" || { echo "$f"; exit 1; }; done', 'sh', ...probes], { stdio: 'pipe' });
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
