// Throwaway network namespaces for integration tests. Every test names its own namespaces (a unique prefix per
// test file) and deletes them in afterAll/afterEach, also on failure. Never touches the root namespace's rules.
import { execFileSync, spawn, type SpawnOptions, type ChildProcess } from 'node:child_process';

export function sh(cmd: string, args: readonly string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Runs a command inside `ns` (ip netns exec) and returns stdout; throws with stderr on failure. */
export function inNs(ns: string, cmd: string, args: readonly string[], input?: string): string {
  return sh('ip', ['netns', 'exec', ns, cmd, ...args], input);
}

export function spawnInNs(ns: string, cmd: string, args: readonly string[], options: SpawnOptions = {}): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, cmd, ...args], options);
}

export function deleteNs(name: string): void {
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  } catch {
    // already gone
  }
}

/**
 * Creates a namespace with lo up, a dummy link `dummy0` holding `addresses` and default routes through it,
 * so connect() to any address reaches the nat OUTPUT hook instead of failing with ENETUNREACH.
 */
export function createIsolatedNs(name: string, addresses: { ipv4?: string; ipv6?: string } = {}): void {
  deleteNs(name);
  sh('ip', ['netns', 'add', name]);
  const ip = (...args: string[]) => sh('ip', ['-n', name, ...args]);
  ip('link', 'set', 'lo', 'up');
  try {
    ip('link', 'add', 'dummy0', 'type', 'dummy');
  } catch {
    // Kernels built without the dummy driver ("Unknown device type"): a veth pair with both ends inside the
    // namespace behaves the same here (packets routed out of dummy0 go nowhere useful, the OUTPUT hook still runs).
    ip('link', 'add', 'dummy0', 'type', 'veth', 'peer', 'name', 'dummy0p');
    ip('link', 'set', 'dummy0p', 'up');
  }
  ip('link', 'set', 'dummy0', 'up');
  const v4 = addresses.ipv4 ?? '10.99.0.1/24';
  ip('addr', 'add', v4, 'dev', 'dummy0');
  ip('route', 'add', 'default', 'dev', 'dummy0');
  const v6 = addresses.ipv6 ?? 'fd00:99::1/64';
  ip('-6', 'addr', 'add', v6, 'dev', 'dummy0', 'nodad');
  ip('-6', 'route', 'add', 'default', 'dev', 'dummy0');
}

/**
 * Two namespaces joined by a veth pair: `a` (10.x.0.1, fd00:x::1) and `b` (10.x.0.2, fd00:x::2), `x` = subnet.
 * Both get lo up; addresses are added with nodad so IPv6 is usable at once.
 */
export function createVethPair(
  a: string,
  b: string,
  subnet: number,
): { a4: string; b4: string; a6: string; b6: string } {
  deleteNs(a);
  deleteNs(b);
  sh('ip', ['netns', 'add', a]);
  sh('ip', ['netns', 'add', b]);
  const ifA = `${a}-v`.slice(0, 15);
  const ifB = `${b}-v`.slice(0, 15);
  sh('ip', ['link', 'add', ifA, 'netns', a, 'type', 'veth', 'peer', 'name', ifB, 'netns', b]);
  const addrs = { a4: `10.${subnet}.0.1`, b4: `10.${subnet}.0.2`, a6: `fd00:${subnet}::1`, b6: `fd00:${subnet}::2` };
  for (const [ns, dev, v4, v6] of [
    [a, ifA, addrs.a4, addrs.a6],
    [b, ifB, addrs.b4, addrs.b6],
  ] as const) {
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    sh('ip', ['-n', ns, 'addr', 'add', `${v4}/24`, 'dev', dev]);
    sh('ip', ['-n', ns, '-6', 'addr', 'add', `${v6}/64`, 'dev', dev, 'nodad']);
    sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
  }
  return addrs;
}
