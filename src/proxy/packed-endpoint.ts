// Endpoints as the relay thread packs them into a batch of end records (EndDetails in src/native/addon.ts): byte 0
// the family (0 none, 4, 6), bytes 2-3 the port and 4.. the address, in network order. The text is made only when
// something prints it (an access-log line, a `/lookup` row, a self-loop event), the way inet_ntop would print it,
// so it reads exactly as the text the thread used to send with every record.
import { formatIpv6Groups } from '../values/ip.js';

/** Bytes per packed endpoint (the addon's relayEndpointBytes). */
export const PACKED_ENDPOINT_BYTES = 20;

/** 0 (none), 4 or 6. */
export function packedFamily(bytes: Uint8Array, at: number): number {
  return bytes[at]!;
}

export function packedPort(bytes: Uint8Array, at: number): number {
  return (bytes[at + 2]! << 8) | bytes[at + 3]!;
}

function ipv4Text(bytes: Uint8Array, at: number): string {
  return `${bytes[at]}.${bytes[at + 1]}.${bytes[at + 2]}.${bytes[at + 3]}`;
}

/** glibc's inet_ntop for AF_INET6: RFC 5952 text, but IPv4-mapped and -compatible addresses dotted. */
function ipv6Text(bytes: Uint8Array, at: number): string {
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push((bytes[at + 2 * i]! << 8) | bytes[at + 2 * i + 1]!);
  const leadingZeros = words.findIndex((w) => w !== 0);
  if (leadingZeros === 6 || (leadingZeros === 5 && words[5] === 0xffff)) {
    return `::${leadingZeros === 5 ? 'ffff:' : ''}${ipv4Text(bytes, at + 12)}`;
  }
  return formatIpv6Groups(words);
}

/** The address alone (`10.0.0.1`, `fd00::1`), '' when none. */
export function packedAddress(bytes: Uint8Array, at: number): string {
  const family = bytes[at];
  if (family === 4) return ipv4Text(bytes, at + 4);
  if (family === 6) return ipv6Text(bytes, at + 4);
  return '';
}

/** `a:p` / `[a]:p` as the proxy prints endpoints everywhere, '' when none. */
export function formatPackedEndpoint(bytes: Uint8Array, at: number): string {
  const family = bytes[at];
  if (family === 4) return `${ipv4Text(bytes, at + 4)}:${packedPort(bytes, at)}`;
  if (family === 6) return `[${ipv6Text(bytes, at + 4)}]:${packedPort(bytes, at)}`;
  return '';
}
