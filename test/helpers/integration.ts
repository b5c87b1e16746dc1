// Gate for tests that need root and a real kernel (network namespaces, iptables, nft).
// They run by default when root; MESHCTL_INTEGRATION=0 skips them, =1 insists (and fails loudly when impossible).
import { execFileSync } from 'node:child_process';

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
