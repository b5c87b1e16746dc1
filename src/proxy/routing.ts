// Decides where an accepted connection goes: outbound to its original destination, inbound to the local app
// (from the passthrough source address), or nowhere when it was not redirected or points back at the proxy.
// Under TPROXY (capture.inbound.mode tproxy) an inbound connection's destination is its own local endpoint, and
// the proxy connects to the app from the peer's own address.
// Pure: the caller reads the host's interface addresses (worker.ts) and passes them in; nothing here touches a
// socket or the host.
import { isIPv4 } from 'node:net';
import type { ProxyConfig } from '../config/types.js';
import type { Direction } from './metrics.js';
import type { RefusalReason } from '../policy/refusals.js';
import type { OriginalDst } from '../native/original-dst.js';

/**
 * TPROXY's inbound leg leaves from the peer's own address: an IP_TRANSPARENT socket bound to `address` (on a port no
 * other connection of that address to the app uses), marked `mark` so the capture rules route the app's replies
 * back to the proxy.
 */
export interface TransparentSource {
  readonly address: string;
  readonly mark: number;
}

export type Route =
  | {
      readonly kind: 'connect';
      readonly host: string;
      readonly port: number;
      readonly localAddress: string | null;
      readonly transparentSource?: TransparentSource;
    }
  | { readonly kind: 'refuse'; readonly reason: RefusalReason };

/** The addresses that reach this host: the interface addresses the caller read, plus the loopback and unspecified ranges. */
export class LocalAddresses {
  private set = new Set<string>();

  constructor(addresses: Iterable<string> = []) {
    for (const a of addresses) this.set.add(normalize(a));
  }

  has(address: string): boolean {
    const a = normalize(address);
    if (a === '0.0.0.0' || a === '::' || a === '::1') return true;
    if (isIPv4(a) && a.startsWith('127.')) return true;
    return this.set.has(a);
  }
}

function normalize(address: string): string {
  const lower = address.toLowerCase();
  const mapped = lower.startsWith('::ffff:') ? lower.slice(7) : lower;
  const zone = mapped.indexOf('%');
  return zone >= 0 ? mapped.slice(0, zone) : mapped;
}

export interface AcceptedOn {
  readonly localAddress: string;
  readonly localPort: number;
}

/**
 * The original destination of a connection accepted on an inbound listener in tproxy mode: TPROXY delivers the
 * peer's packets unchanged, so the accepted socket's local endpoint is where the peer was going. Null when the
 * connection arrived on the inbound port itself: then it is either the proxy calling its own address (the capture
 * plan sends that through nat REDIRECT, so SO_ORIGINAL_DST answers) or a direct, uncaptured connection to the
 * listener (no NAT record: refused as not redirected, never looped). Outbound always uses SO_ORIGINAL_DST.
 */
export function transparentDestination(
  acceptedOn: AcceptedOn,
  family: OriginalDst['family'],
  inboundPort: number,
): OriginalDst | null {
  if (acceptedOn.localPort === inboundPort || acceptedOn.localAddress === '') return null;
  return { address: normalize(acceptedOn.localAddress), port: acceptedOn.localPort, family, via: 'tproxy' };
}

/** The peer address of a TPROXY'd connection and the mark the capture plan routes the app's replies by. */
export interface TransparentPeer {
  readonly address: string;
  readonly mark: number;
}

/**
 * Where to connect a redirected connection. `ownPorts` are every port the proxy listens on (outbound, inbound,
 * admin); a destination on one of them at a local address is the proxy itself and is refused, never looped.
 * A destination equal to the socket's own local endpoint means netfilter did not rewrite it (not redirected),
 * unless it came from TPROXY, where that is the rule (transparentDestination). A TPROXY'd inbound connection with
 * its `peer` connects from the peer's own address; every other inbound one from the passthrough source.
 */
export function routeConnection(
  direction: Direction,
  dst: OriginalDst,
  acceptedOn: AcceptedOn,
  ownPorts: ReadonlySet<number>,
  local: LocalAddresses,
  proxy: Pick<ProxyConfig, 'inboundPassthroughSource'>,
  peer: TransparentPeer | null = null,
): Route {
  if (
    dst.via !== 'tproxy' &&
    dst.port === acceptedOn.localPort &&
    normalize(dst.address) === normalize(acceptedOn.localAddress)
  ) {
    return { kind: 'refuse', reason: 'not-redirected' };
  }
  if (ownPorts.has(dst.port) && local.has(dst.address)) return { kind: 'refuse', reason: 'self-loop' };
  if (direction === 'inbound' && dst.via === 'tproxy' && peer !== null) {
    const transparentSource = { address: normalize(peer.address), mark: peer.mark };
    return { kind: 'connect', host: dst.address, port: dst.port, localAddress: null, transparentSource };
  }
  if (direction === 'inbound') {
    // The app sees 127.0.0.6 / ::6 as the peer; the capture plan lets that source through on lo (DESIGN.md §3).
    const source = dst.family === 'ipv6' ? proxy.inboundPassthroughSource.ipv6 : proxy.inboundPassthroughSource.ipv4;
    return { kind: 'connect', host: dst.address, port: dst.port, localAddress: source };
  }
  return { kind: 'connect', host: dst.address, port: dst.port, localAddress: null };
}
