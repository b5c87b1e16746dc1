// The front door's decision table: which connections a relay thread may accept, connect and relay on its own
// (passthrough), and which it must hand to JavaScript (onAccepted) because something there decides them. Pure:
// config, the policy the worker runs and the listener in, FrontDoorOptions (src/native/addon.ts) out.
//
// The rule it keeps: a destination the table lets through natively is one for which the JavaScript path would
// have connected to the original destination as dialled, with no lease, no tunnel and no refusal (the property
// test in test/unit/proxy-front-door.test.ts holds it to routeConnection and PolicyRuntime). When in doubt it
// asks: an asked connection costs the old ~47 µs of JavaScript, a wrongly passed one skips a policy.
//   outbound  services' addresses (ip, CIDR; a hostname's whole port, as its answers change between reloads),
//             mTLS peers (the tunnel's targetFor), the proxy's own ports (a local address there is a self-loop);
//             registry-only or periodic access-log lines: everything.
//   inbound   ports with an inbound.ports entry (allow/deny, limits, counters), the proxy's own ports;
//             strict mTLS (plaintext refused), TPROXY (transparent upstream), "*" entries or periodic lines:
//             everything.
import type { Config } from '../config/types.js';
import type { FrontDoorOptions } from '../native/addon.js';
import type { Cidr, Family } from '../values/ip.js';
import type { Direction } from './metrics.js';
import { relayBounds } from './relay-thread.js';

export type { FrontDoorOptions };

/** The compiled table and, for people (goldens, logs), why each part of it is there. */
export interface FrontDoorPlan {
  readonly options: FrontDoorOptions;
  /** Why every connection goes to JavaScript (empty when passthrough). */
  readonly everything: readonly string[];
  /** Why each `options.ask` entry is asked, index for index. */
  readonly askWhy: readonly string[];
}

export interface FrontDoorInput {
  readonly config: Pick<Config, 'proxy' | 'capture' | 'mtls'>;
  /** The policy the worker runs (PolicyRuntime.config): services, outbound policy, inbound entries. */
  readonly policy: Pick<Config, 'services' | 'outbound' | 'inbound'>;
  readonly listener: { readonly direction: Direction; readonly family: Family };
  /** Every port the proxy listens on (ProxyWorker.ownPorts). */
  readonly ownPorts: ReadonlySet<number>;
  /** The uid of this process's sockets (-1: unknown, no self-loop check). */
  readonly ownUid: number;
}

/**
 * Above this many asked inbound ports (an inbound.ports range of thousands), every inbound connection goes to
 * JavaScript instead: the table is matched per accepted connection, and a wide range is most of the ports anyway.
 */
export const MAX_ASKED_INBOUND_PORTS = 1024;

const ANY: Record<Family, string> = { ipv4: '0.0.0.0', ipv6: '::' };
const HOST_PREFIX: Record<Family, number> = { ipv4: 32, ipv6: 128 };

/** Whether the proxy runs as one process (workerCount in ./lifecycle.ts: "auto" is 1 with the native relay). */
function soleProcess(proxy: Pick<Config['proxy'], 'workers' | 'relay'>): boolean {
  return proxy.workers === 1 || (proxy.workers === 'auto' && proxy.relay === 'native');
}

/** Builds the front door's table for one listener. Pure; never throws for a valid Config. */
export function compileFrontDoor(input: FrontDoorInput): FrontDoorPlan {
  const { config, policy, listener } = input;
  const family = listener.family;
  const everything: string[] = [];
  const asks = new Map<string, { ask: FrontDoorOptions['ask'][number]; why: string }>();
  const ask = (address: string, prefix: number, port: number, why: string) => {
    const key = `${address}/${prefix}:${port}`;
    if (!asks.has(key)) asks.set(key, { ask: { address, prefix, port }, why });
  };
  const askCidr = (cidr: Cidr, port: number, why: string) => {
    if (cidr.family === family) ask(cidr.address, cidr.prefix, port, why);
  };

  if (config.proxy.accessLog.enabled && config.proxy.accessLog.periodicIntervalMs !== null)
    everything.push('proxy.accessLog.periodicInterval: progress lines come from JavaScript connections');
  for (const port of [...input.ownPorts].sort((a, b) => a - b))
    ask(ANY[family], 0, port, `the proxy's own port ${port}: a local address there is a self-loop`);

  if (listener.direction === 'outbound') {
    if (policy.outbound.policy === 'registry-only')
      everything.push('outbound.policy registry-only: destinations outside the registry are refused');
    policy.services.forEach((svc, i) => {
      for (const a of svc.addresses) {
        const why = `services[${i}] ${svc.name}`;
        if (a.kind === 'ip') {
          if (a.family === family) ask(a.address, HOST_PREFIX[family], a.port, why);
        } else if (a.kind === 'cidr') {
          askCidr(a.cidr, a.port, why);
        } else {
          // Its answers (and a mesh name's VIP) change without a reload: the whole port is asked.
          ask(ANY[family], 0, a.port, `${why} (hostname ${a.hostname})`);
        }
      }
    });
    config.mtls.peers.forEach((peer, i) => askCidr(peer, 0, `mtls.peers[${i}]: through the tunnel`));
  } else {
    if (config.mtls.inbound === 'strict') everything.push('mtls.inbound strict: captured plaintext is refused');
    if (config.capture.inbound.mode === 'tproxy')
      everything.push("capture.inbound.mode tproxy: the upstream leaves from the peer's address");
    const ranges = policy.inbound.ports.map((p) => p.ports);
    if (ranges.includes('all')) everything.push('inbound.ports "*": every port has a policy');
    const count = ranges.reduce((n, r) => (r === 'all' ? n : n + r.to - r.from + 1), 0);
    if (count > MAX_ASKED_INBOUND_PORTS)
      everything.push(`inbound.ports cover ${count} ports (more than ${MAX_ASKED_INBOUND_PORTS} to ask one by one)`);
    else
      policy.inbound.ports.forEach((entry, i) => {
        if (entry.ports === 'all') return;
        for (let port = entry.ports.from; port <= entry.ports.to; port++)
          ask(ANY[family], 0, port, `inbound.ports[${i}]`);
      });
  }

  const passthrough = everything.length === 0;
  const entries = passthrough ? [...asks.values()] : [];
  const bounds = relayBounds(config.proxy, 0);
  const source = config.proxy.inboundPassthroughSource;
  return {
    options: {
      direction: listener.direction,
      family: family === 'ipv6' ? 6 : 4,
      passthrough,
      ask: entries.map((e) => e.ask),
      sourceAddress: listener.direction === 'inbound' ? (family === 'ipv6' ? source.ipv6 : source.ipv4) : null,
      selfLoopUid: listener.direction === 'outbound' ? input.ownUid : -1,
      // With one proxy process the relay threads' own upstream sockets are the ones that can loop natively: a
      // passthrough connection absent from their set skips sock_diag (src/native/front_door.cc, OwnRegistry).
      selfLoopOwnSet: listener.direction === 'outbound' && input.ownUid >= 0 && soleProcess(config.proxy),
      connectTimeoutMs: config.proxy.connectTimeoutMs,
      maxDurationMs: bounds.maxRemainingMs,
      idleMs: bounds.idleMs,
      halfCloseMs: bounds.halfCloseMs,
      keepaliveSec: bounds.keepaliveSec,
    },
    everything,
    askWhy: entries.map((e) => e.why),
  };
}
