// Mesh names: every hostname in services[].addresses, and the addresses the DNS server answers for it. A service
// that also has fixed IP addresses is answered with those; one without gets a virtual IP (VIP) pair from the
// reserved ranges below, which the service matcher then matches like a fixed address. Pure and deterministic:
// the primary (which answers DNS) and every worker (which match connections) compute the same table from the same
// config, and the same names get the same VIPs across restarts, with no state to share or persist.
//
// VIP ranges (Istio's, so that operators know them): 240.240.0.0/16 (class E, never routed on the internet) and
// 2001:2::/48 (RFC 5180 benchmarking, not globally routed). Slot n (1..65534) is 240.240.(n>>8).(n&255) and
// 2001:2::n. A name's slot is the first free one of sha256(name), sha256(name#1), ... with the names taken in
// sorted order, so a name keeps its VIP unless a name sorted before it newly collides on its slot (p ≈ names/65534).
import { createHash } from 'node:crypto';
import type { ServiceConfig } from '../config/types.js';
import type { Family } from '../values/ip.js';

export const VIP_RANGES: Readonly<Record<Family, string>> = { ipv4: '240.240.0.0/16', ipv6: '2001:2::/48' };
const SLOTS = 65534;

export interface MeshName {
  /** Lower case, no trailing dot. */
  readonly name: string;
  readonly service: string;
  readonly ipv4: readonly string[];
  readonly ipv6: readonly string[];
  /** True when the addresses are the name's VIPs (the service has no fixed address of its own). */
  readonly vip: boolean;
}

export function normalizeHostname(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

function slotOf(name: string, attempt: number): number {
  const digest = createHash('sha256')
    .update(attempt === 0 ? name : `${name}#${attempt}`)
    .digest();
  return (digest.readUInt32BE(0) % SLOTS) + 1;
}

/** The VIPs of `names` (deduplicated); deterministic for the same set of names. */
export function allocateVips(names: Iterable<string>): Map<string, { ipv4: string; ipv6: string }> {
  const taken = new Set<number>();
  const out = new Map<string, { ipv4: string; ipv6: string }>();
  const sorted = [...new Set(names)].sort();
  if (sorted.length > SLOTS) throw new RangeError(`${sorted.length} mesh names need a VIP; the range has ${SLOTS}`);
  for (const name of sorted) {
    let slot = slotOf(name, 0);
    // A few rehashes, then a linear probe, which always ends: there are more slots than names.
    for (let attempt = 1; taken.has(slot); attempt++) slot = attempt < 8 ? slotOf(name, attempt) : (slot % SLOTS) + 1;
    taken.add(slot);
    out.set(name, { ipv4: `240.240.${slot >> 8}.${slot & 255}`, ipv6: `2001:2::${slot.toString(16)}` });
  }
  return out;
}

/** Mesh names of `services` (the first service naming a hostname owns it, as in the service matcher). */
export function meshNames(services: readonly ServiceConfig[]): Map<string, MeshName> {
  const owners = new Map<string, ServiceConfig>();
  for (const s of services) {
    for (const a of s.addresses) {
      if (a.kind !== 'hostname') continue;
      const name = normalizeHostname(a.hostname);
      if (!owners.has(name)) owners.set(name, s);
    }
  }
  const fixed = (s: ServiceConfig, family: Family) => [
    ...new Set(s.addresses.flatMap((a) => (a.kind === 'ip' && a.family === family ? [a.address] : []))),
  ];
  const needVip = [...owners]
    .filter(([, s]) => fixed(s, 'ipv4').length === 0 && fixed(s, 'ipv6').length === 0)
    .map(([n]) => n);
  const vips = allocateVips(needVip);
  const out = new Map<string, MeshName>();
  for (const [name, s] of owners) {
    const vip = vips.get(name);
    out.set(
      name,
      vip
        ? { name, service: s.name, ipv4: [vip.ipv4], ipv6: [vip.ipv6], vip: true }
        : { name, service: s.name, ipv4: fixed(s, 'ipv4'), ipv6: fixed(s, 'ipv6'), vip: false },
    );
  }
  return out;
}
