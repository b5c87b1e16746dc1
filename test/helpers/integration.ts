// Gate for tests that need root and a real kernel (network namespaces, iptables, nft).
// They run as root on Linux; MESHCTL_INTEGRATION=0 skips them, =1 insists. What they need on the machine is checked
// once per run by test/helpers/prerequisites.mjs (vitest's globalSetup), which fails the run naming the package.
import { integrationWanted } from './prerequisites.mjs';

export const integrationEnabled = integrationWanted();

// Whether the proxy user can read this checkout is one of those prerequisites (unreadableByProxyUser).
export { unreadableByProxyUser } from './prerequisites.mjs';
