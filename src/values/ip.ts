// IP address and CIDR arithmetic for planning and explain. Pure; addresses become bigints so that
// containment and canonical forms (host bits cleared, RFC 5952 IPv6 text) are exact.
import { isIPv4, isIPv6 } from 'node:net';

export type Family = 'ipv4' | 'ipv6';

export const FAMILIES: readonly Family[] = ['ipv4', 'ipv6'];

/** A parsed CIDR: `address` is the canonical network address (host bits cleared, IPv6 compressed). */
export interface Cidr {
  readonly family: Family;
  readonly address: string;
  readonly prefix: number;
}

export interface IpAddress {
  readonly family: Family;
  readonly value: bigint;
}

const BITS: Record<Family, number> = { ipv4: 32, ipv6: 128 };

/** Parses an IPv4 or IPv6 address (IPv4-mapped IPv6 stays IPv6); returns null when it is not one. */
export function parseIp(text: string): IpAddress | null {
  if (isIPv4(text)) {
    const value = text.split('.').reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
    return { family: 'ipv4', value };
  }
  if (isIPv6(text)) {
    let groups: string[];
    let head = text;
    let tailV4: bigint | null = null;
    const lastColon = text.lastIndexOf(':');
    const maybeV4 = text.slice(lastColon + 1);
    if (isIPv4(maybeV4)) {
      tailV4 = parseIp(maybeV4)!.value;
      head = `${text.slice(0, lastColon + 1)}0:0`;
    }
    const halves = head.split('::');
    const left = halves[0] ? halves[0].split(':') : [];
    const right = halves.length > 1 && halves[1] ? halves[1].split(':') : [];
    const fill = halves.length > 1 ? 8 - left.length - right.length : 0;
    groups = [...left, ...Array<string>(fill).fill('0'), ...right];
    let value = groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
    if (tailV4 !== null) value = (value & ~0xffffffffn) | tailV4;
    return { family: 'ipv6', value };
  }
  return null;
}

/** Formats an address canonically: dotted quad, or RFC 5952 IPv6 (lowercase, longest zero run compressed). */
export function formatIp(ip: IpAddress): string {
  if (ip.family === 'ipv4') {
    return [24n, 16n, 8n, 0n].map((s) => String((ip.value >> s) & 0xffn)).join('.');
  }
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((ip.value >> BigInt(i * 16)) & 0xffffn));
  return formatIpv6Groups(groups);
}

/** Eight 16-bit groups as RFC 5952 text: lowercase hex, the first longest run of two or more zero groups as `::`. */
export function formatIpv6Groups(groups: readonly number[]): string {
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

function mask(family: Family, prefix: number): bigint {
  const bits = BITS[family];
  return prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(bits - prefix);
}

/**
 * Parses `addr` or `addr/prefix` into a canonical Cidr (host bits cleared). Returns a reason string when invalid,
 * so callers can build an error that names their own field.
 */
export function parseCidr(text: string): Cidr | string {
  const [addr = '', prefixText, ...rest] = text.split('/');
  if (rest.length > 0) return 'has more than one "/"';
  const ip = parseIp(addr);
  if (!ip) return `"${addr}" is not an IPv4 or IPv6 address`;
  const bits = BITS[ip.family];
  let prefix = bits;
  if (prefixText !== undefined) {
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > bits) return `prefix "/${prefixText}" must be 0..${bits}`;
    prefix = Number(prefixText);
  }
  return {
    family: ip.family,
    address: formatIp({ family: ip.family, value: ip.value & mask(ip.family, prefix) }),
    prefix,
  };
}

export function cidrText(cidr: Cidr): string {
  return `${cidr.address}/${cidr.prefix}`;
}

export function cidrContains(cidr: Cidr, ip: IpAddress): boolean {
  if (cidr.family !== ip.family) return false;
  const net = parseIp(cidr.address)!;
  const m = mask(cidr.family, cidr.prefix);
  return (ip.value & m) === (net.value & m);
}

/** The host route of an address: 127.0.0.6 → 127.0.0.6/32. */
export function hostCidr(address: string): Cidr {
  const ip = parseIp(address);
  if (!ip) throw new TypeError(`not an IP address: ${address}`);
  return { family: ip.family, address: formatIp(ip), prefix: BITS[ip.family] };
}

export function isLoopback(ip: IpAddress): boolean {
  return ip.family === 'ipv4' ? ip.value >> 24n === 127n : ip.value === 1n;
}
