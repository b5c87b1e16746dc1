// Longest-prefix lookup of an address in a set of CIDRs, for the per-connection paths (service CIDR addresses,
// inbound allow/deny): one Map per prefix length, longest first, so a lookup costs one masked Map.get per distinct
// prefix length and no allocation for IPv4. IPv6 (bigint) is only parsed when IPv6 CIDRs exist.
import type { Cidr } from '../values/ip.js';
import { parseIp } from '../values/ip.js';

/** Dotted-quad text → unsigned 32-bit value, or -1 when it is not one. Accepts the IPv4-mapped `::ffff:a.b.c.d`. */
export function ipv4ToInt(text: string): number {
  let i = text.length > 7 && text.charCodeAt(0) === 58 /* : */ && text.startsWith('::ffff:') ? 7 : 0;
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57 && digits < 3) {
      part = part * 10 + (c - 48);
      if (part > 255) return -1;
      digits++;
    } else {
      return -1;
    }
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + part;
}

function maskV4(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

function maskV6(prefix: number): bigint {
  return prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(128 - prefix);
}

interface LevelV4<T> {
  readonly prefix: number;
  readonly mask: number;
  readonly nets: Map<number, T>;
}

interface LevelV6<T> {
  readonly prefix: number;
  readonly mask: bigint;
  readonly nets: Map<bigint, T>;
}

/** CIDR → value; `lookup` returns the value of the longest prefix containing the address. Immutable once built. */
export class CidrTable<T> {
  private readonly v4: LevelV4<T>[] = [];
  private readonly v6: LevelV6<T>[] = [];
  readonly size: number;

  /** Entries in priority order: for the same CIDR the first one wins. */
  constructor(entries: Iterable<readonly [Cidr, T]>) {
    let size = 0;
    for (const [cidr, value] of entries) {
      const ip = parseIp(cidr.address);
      if (!ip) throw new TypeError(`not a CIDR address: ${cidr.address}`);
      if (cidr.family === 'ipv4') {
        let level = this.v4.find((l) => l.prefix === cidr.prefix);
        if (!level) this.v4.push((level = { prefix: cidr.prefix, mask: maskV4(cidr.prefix), nets: new Map() }));
        const key = (Number(ip.value) & level.mask) >>> 0;
        if (!level.nets.has(key)) level.nets.set(key, value);
      } else {
        let level = this.v6.find((l) => l.prefix === cidr.prefix);
        if (!level) this.v6.push((level = { prefix: cidr.prefix, mask: maskV6(cidr.prefix), nets: new Map() }));
        const key = ip.value & level.mask;
        if (!level.nets.has(key)) level.nets.set(key, value);
      }
      size++;
    }
    this.v4.sort((a, b) => b.prefix - a.prefix);
    this.v6.sort((a, b) => b.prefix - a.prefix);
    this.size = size;
  }

  get hasIpv6(): boolean {
    return this.v6.length > 0;
  }

  lookup(address: string): T | undefined {
    const v4 = ipv4ToInt(address);
    if (v4 >= 0) {
      for (const level of this.v4) {
        const hit = level.nets.get((v4 & level.mask) >>> 0);
        if (hit !== undefined) return hit;
      }
      return undefined;
    }
    if (this.v6.length === 0) return undefined;
    const ip = parseIp(address.includes('%') ? address.slice(0, address.indexOf('%')) : address);
    if (!ip || ip.family !== 'ipv6') return undefined;
    for (const level of this.v6) {
      const hit = level.nets.get(ip.value & level.mask);
      if (hit !== undefined) return hit;
    }
    return undefined;
  }
}

/** A set of CIDRs: `has` is true when any contains the address. */
export class CidrSet {
  private readonly table: CidrTable<true>;

  constructor(cidrs: readonly Cidr[]) {
    this.table = new CidrTable(cidrs.map((c) => [c, true] as const));
  }

  get size(): number {
    return this.table.size;
  }

  has(address: string): boolean {
    return this.table.lookup(address) === true;
  }
}
