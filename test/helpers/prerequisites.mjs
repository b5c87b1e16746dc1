// What the test suite needs on the machine, checked once before any test file runs, so that a missing tool fails
// the run in one line naming the Debian package instead of skipping tests or failing deep inside one.
// Plain JS: `npm test` runs it with node before the typecheck and the build (`node test/helpers/prerequisites.mjs`),
// and vitest loads it as its globalSetup (vitest.config.ts) for every run, `npx vitest run FILE` included.
import { execFileSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** Command → the Debian 12 package that ships it, for every command the tests (and the bench smoke) run. */
export const TOOLS = {
  ip: 'iproute2',
  ss: 'iproute2',
  'iptables-restore': 'iptables',
  'ip6tables-restore': 'iptables',
  'iptables-legacy-restore': 'iptables',
  'ip6tables-legacy-restore': 'iptables',
  'iptables-nft-restore': 'iptables',
  'ip6tables-nft-restore': 'iptables',
  nft: 'nftables',
  setpriv: 'util-linux',
  nsenter: 'util-linux',
  unshare: 'util-linux',
  prlimit: 'util-linux',
  taskset: 'util-linux',
  pgrep: 'procps',
  ps: 'procps',
  sysctl: 'procps',
  'systemd-run': 'systemd',
  'systemd-socket-activate': 'systemd',
  'systemd-sysusers': 'systemd',
  'systemd-nspawn': 'systemd-container',
  debootstrap: 'debootstrap',
  zstd: 'zstd',
  'dpkg-deb': 'dpkg',
  'dpkg-shlibdeps': 'dpkg-dev',
  vagrant: 'vagrant',
  haproxy: 'haproxy',
  iperf3: 'iperf3',
  wrk: 'wrk',
  nginx: 'nginx',
  cc: 'gcc',
  'g++': 'g++',
  make: 'make',
  python3: 'python3',
  dig: 'dnsutils',
  openssl: 'openssl',
};

/** The one apt-get line for all of them (README, first screen). */
export const APT_LINE = `apt-get install ${[...new Set(Object.values(TOOLS))].filter((p) => !['util-linux', 'systemd', 'dpkg'].includes(p)).join(' ')}`;

function have(command, env) {
  try {
    execFileSync('/bin/sh', ['-c', 'command -v "$1"', 'sh', command], { stdio: 'ignore', env });
    return true;
  } catch {
    return false;
  }
}

/**
 * The first file of this checkout the proxy user (nobody, uid 65534) cannot read, or null. The integration tests run
 * the proxy as nobody from this checkout, so a checkout under a 0700 directory (e.g. `mktemp -d`) would fail every
 * proxy with "Cannot find module". Checked here, before the typecheck and the build, so `npm test` stops in one line.
 */
export function unreadableByProxyUser(root = fileURLToPath(new URL('../..', import.meta.url))) {
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
    const out = String(error?.stdout ?? '').trim();
    return out === '' ? root : out;
  }
}

/**
 * Whether the integration tests run (same rule as test/helpers/integration.ts): as root on Linux, unless
 * MESHCTL_INTEGRATION=0; MESHCTL_INTEGRATION=1 insists.
 */
export function integrationWanted(env = process.env, uid = process.getuid?.()) {
  if (env.MESHCTL_INTEGRATION === '0') return false;
  return env.MESHCTL_INTEGRATION === '1' || (process.platform === 'linux' && uid === 0);
}

/**
 * The one line saying what is missing, or null when nothing is. `requireRoot` (for `npm test`) also refuses a
 * non-root user, who would otherwise get the unit tests only.
 */
export function missingPrerequisite({ env = process.env, uid = process.getuid?.(), requireRoot = false } = {}) {
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (major < 20 || (major === 20 && minor < 5)) {
    return `missing prerequisite: Node.js >= 20.5 (this is ${process.version}; see the README's first screen for Debian 12)`;
  }
  if (env.MESHCTL_INTEGRATION === '0') return null;
  const root = process.platform === 'linux' && uid === 0;
  if (!root && (requireRoot || env.MESHCTL_INTEGRATION === '1')) {
    return process.platform !== 'linux'
      ? `the integration tests need Linux (network namespaces, netfilter); run \`npm run test:unit\` for the unit tests alone`
      : `the integration tests need root (they create network namespaces): run \`sudo npm test\`, or \`npm run test:unit\` for the unit tests alone`;
  }
  if (!root) return null;
  const missing = Object.keys(TOOLS).filter((command) => !have(command, env));
  if (missing.length > 0) {
    const packages = [...new Set(missing.map((command) => TOOLS[command]))].join(' ');
    return `missing prerequisite${missing.length > 1 ? 's' : ''}: ${missing.join(', ')} (apt-get install ${packages})`;
  }
  const blocked = unreadableByProxyUser();
  if (blocked === null) return null;
  return (
    `the integration tests run the proxy as nobody (uid 65534), which cannot read ${blocked}: ` +
    'make the checkout and every directory above it readable and searchable by others (e.g. `chmod 755` on a ' +
    '`mktemp -d` directory), or run `.ci/run`, which copies an unreadable checkout to a readable place first'
  );
}

/** vitest globalSetup: fails the whole run at once, in one line, when something is missing. */
export default function setup() {
  // Each vitest project runs the global setup; check and speak once per run.
  if (process.env.MESHCTL_PREREQUISITES_CHECKED === '1') return;
  process.env.MESHCTL_PREREQUISITES_CHECKED = '1';
  const problem = missingPrerequisite();
  if (problem !== null) {
    process.stderr.write(`${problem}\n`);
    process.exit(1);
  }
  // Said once, and only when not asked for: MESHCTL_INTEGRATION=0 (`npm run test:unit`) skips them quietly.
  if (!integrationWanted() && process.env.MESHCTL_INTEGRATION !== '0') {
    process.stderr.write('[meshctl] integration tests skipped: they need root (`sudo npm test` runs everything)\n');
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const problem = missingPrerequisite({ requireRoot: true });
  if (problem !== null) {
    process.stderr.write(`${problem}\n`);
    process.exit(1);
  }
}
