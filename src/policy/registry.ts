// The service registry's matcher: original destination (address, port) → service. Precompiled so that a
// connection costs two Map lookups for an exact `ip:port` (port, then address text) and, only for ports that have
// CIDR addresses, one masked lookup per prefix length. Hostname addresses are resolved elsewhere and enter the
// exact table; the whole matcher is rebuilt and swapped when they change (never on the connection path).
import type { Cidr } from '../values/ip.js';
import { formatIp, parseIp } from '../values/ip.js';
import { CidrTable } from './cidr-table.js';

export type RegistryEntry<T> =
  | { readonly kind: 'ip'; readonly address: string; readonly port: number; readonly value: T }
  | { readonly kind: 'cidr'; readonly cidr: Cidr; readonly port: number; readonly value: T };

/** Canonical address text (RFC 5952 for IPv6) so that `fd00:0::1` and `fd00::1` are one key. */
function canonicalAddress(address: string): string {
  const ip = parseIp(address);
  return ip ? formatIp(ip) : address;
}

export class ServiceMatcher<T> {
  private readonly exact = new Map<number, Map<string, T>>();
  private readonly cidr = new Map<number, CidrTable<T>>();
  private readonly ipv6Ports = new Set<number>();
  readonly size: number;

  /** Entries in priority order: the first entry for an exact address or an identical CIDR wins. */
  constructor(entries: readonly RegistryEntry<T>[]) {
    const cidrs = new Map<number, [Cidr, T][]>();
    for (const e of entries) {
      if (e.kind === 'ip') {
        const key = canonicalAddress(e.address);
        let byAddress = this.exact.get(e.port);
        if (!byAddress) this.exact.set(e.port, (byAddress = new Map()));
        if (!byAddress.has(key)) byAddress.set(key, e.value);
        if (key.includes(':')) this.ipv6Ports.add(e.port);
      } else {
        const list = cidrs.get(e.port) ?? [];
        list.push([e.cidr, e.value]);
        cidrs.set(e.port, list);
      }
    }
    for (const [port, list] of cidrs) this.cidr.set(port, new CidrTable(list));
    this.size = entries.length;
  }

  /** The service whose address is `address:port`: an exact address first, then the longest CIDR prefix. */
  lookup(address: string, port: number): T | null {
    const byAddress = this.exact.get(port);
    if (byAddress !== undefined) {
      const hit = byAddress.get(address);
      if (hit !== undefined) return hit;
      // Original destinations come from inet_ntop; only IPv6 text can differ from our canonical form.
      if (this.ipv6Ports.has(port) && address.includes(':')) {
        const again = byAddress.get(canonicalAddress(address));
        if (again !== undefined) return again;
      }
    }
    const table = this.cidr.get(port);
    if (table !== undefined) return table.lookup(address) ?? null;
    return null;
  }
}
