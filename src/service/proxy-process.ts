// How the shipped proxy unit (systemd/meshctl-proxy.service) runs node: its Environment= settings, one source for
// the unit (test/unit/service-proxy-process.test.ts holds the unit file to them) and for whoever runs the proxy
// "as shipped" outside systemd (the bench). Node flags travel in NODE_OPTIONS, so ExecStart keeps naming the
// launcher and no node path is written into the unit. Idle footprint on 2 cores (issue 19; one process with its
// relay threads, 5 starts each, RSS after /ready + 2 s and after 1,000 connections have come and gone, medians):
// 59.8 / 61.4 MiB without these, 57.9 / 59.8 MiB with them; proxy CPU per connection unchanged within noise.
// - MALLOC_ARENA_MAX=2: glibc gives every thread that calls malloc an arena of its own, up to 8 per core (the
//   Node thread, V8's and libuv's helpers, the relay threads); each keeps what it once held mapped. Two arenas
//   serve them all: the relay threads allocate their buffers once and reuse them, so there is no contention to
//   spread (−1.0 MiB). Other C libraries ignore the variable.
// - NODE_OPTIONS=--v8-pool-size=0: V8's background threads (concurrent marking, parallel scavenges, off-thread
//   compiles) number one per core less one instead of a fixed 4, so with a heap of ~10 MiB nothing waits for
//   them, and they no longer compete with the relay threads for the cores (−0.5 MiB: three threads' stacks and
//   arenas fewer on 2 cores). `--single-threaded-gc` saved nothing more and is not allowed in NODE_OPTIONS.
// - NODE_OPTIONS=--max-semi-space-size=32: the ceiling of the young generation once the mTLS tunnel lets it grow (a
//   proxy without the tunnel keeps it at 1 MiB whatever the ceiling; src/proxy/heap-flags.ts,
//   TUNNEL_MAX_SEMI_SPACE_FLAG, says why and what it measured).
// An operator's drop-in that sets NODE_OPTIONS or MALLOC_ARENA_MAX replaces ours (systemd: the last one wins).
import { TUNNEL_MAX_SEMI_SPACE_FLAG } from '../proxy/heap-flags.js';

/** The proxy unit's Environment= settings, in the unit's order. */
export const PROXY_UNIT_ENVIRONMENT: Readonly<Record<string, string>> = Object.freeze({
  NODE_ENV: 'production',
  MALLOC_ARENA_MAX: '2',
  NODE_OPTIONS: `--v8-pool-size=0 ${TUNNEL_MAX_SEMI_SPACE_FLAG}`,
});

/** The environment to run `meshctl proxy` with as the unit does: `base` (e.g. process.env) overlaid by the unit's. */
export function proxyUnitEnvironment(base: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { ...base, ...PROXY_UNIT_ENVIRONMENT };
}

/**
 * The unit file's `Environment=` lines for PROXY_UNIT_ENVIRONMENT (what systemd/meshctl-proxy.service holds); a value
 * with a space is quoted whole, as systemd splits the line at spaces otherwise.
 */
export function renderProxyUnitEnvironment(): string[] {
  return Object.entries(PROXY_UNIT_ENVIRONMENT).map(([name, value]) =>
    value.includes(' ') ? `Environment="${name}=${value}"` : `Environment=${name}=${value}`,
  );
}
