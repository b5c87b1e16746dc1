// Parsers for the address forms of the policy config: service addresses (`ip:port`, `cidr:port`, `host:port`),
// endpoints (`ip:port` or `host:port`), SRV names and resolver servers. Each returns the value or a reason
// string, so the schema's formats and the loader name their own field in the error.
import type { Cidr, Family } from './ip.js';
import { formatIp, parseCidr, parseIp } from './ip.js';

export type HostPort =
  | { readonly kind: 'ip'; readonly address: string; readonly family: Family; readonly port: number }
  | { readonly kind: 'hostname'; readonly hostname: string; readonly port: number };

export type ParsedServiceAddress = HostPort | { readonly kind: 'cidr'; readonly cidr: Cidr; readonly port: number };

const LABEL = '[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?';
const HOSTNAME = new RegExp(`^${LABEL}(?:\\.${LABEL})*\\.?$`);

/** A DNS name (letters, digits, `-`, `_` for SRV labels), at most 253 characters; a trailing dot is allowed. */
export function isHostname(text: string): boolean {
  return text.length > 0 && text.length <= 254 && HOSTNAME.test(text) && !/^[\d.]+$/.test(text);
}

function parsePort(text: string | undefined): number | string {
  if (text === undefined || !/^\d{1,5}$/.test(text)) return 'needs a port: write it as HOST:PORT, [IPv6]:PORT';
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : `port ${port} must be 1..65535`;
}

/** Splits `host:port` / `[v6]:port` into its parts without judging the host. */
function split(text: string): { host: string; port: string | undefined; bracketed: boolean } {
  const bracketed = /^\[([^\]]*)\](?::(.*))?$/.exec(text);
  if (bracketed) return { host: bracketed[1]!, port: bracketed[2], bracketed: true };
  const colon = text.lastIndexOf(':');
  if (colon < 0) return { host: text, port: undefined, bracketed: false };
  const host = text.slice(0, colon);
  // `fd00::1:80` without brackets is ambiguous; say so instead of guessing.
  if (host.includes(':')) return { host: text, port: undefined, bracketed: false };
  return { host, port: text.slice(colon + 1), bracketed: false };
}

/** `10.0.1.5:8080`, `[fd00::5]:8080` or `api.internal:8080`. */
export function parseHostPort(text: string): HostPort | string {
  const { host, port: portText, bracketed } = split(text.trim());
  if (!bracketed && host.split(':').length > 2)
    return `"${text}": write an IPv6 address in brackets, e.g. [fd00::5]:8080`;
  const port = parsePort(portText);
  if (typeof port === 'string') return `"${text}" ${port}`;
  const ip = parseIp(host);
  if (ip) {
    if (bracketed && ip.family !== 'ipv6') return `"${text}": only IPv6 addresses go in brackets`;
    return { kind: 'ip', address: formatIp(ip), family: ip.family, port };
  }
  if (bracketed) return `"${host}" is not an IPv6 address`;
  if (!isHostname(host)) return `"${host}" is neither an IP address nor a hostname`;
  return { kind: 'hostname', hostname: host.toLowerCase().replace(/\.$/, ''), port };
}

/** A service address: `ip:port`, `cidr:port` (`10.96.0.0/16:80`, `[fd00:96::/64]:80`) or `hostname:port`. */
export function parseServiceAddress(text: string): ParsedServiceAddress | string {
  const { host, port: portText } = split(text.trim());
  if (host.includes('/')) {
    const port = parsePort(portText);
    if (typeof port === 'string') return `"${text}" ${port}`;
    const cidr = parseCidr(host);
    if (typeof cidr === 'string') return `"${host}" is not a CIDR (${cidr})`;
    const bits = cidr.family === 'ipv4' ? 32 : 128;
    if (cidr.prefix === bits) return { kind: 'ip', address: cidr.address, family: cidr.family, port };
    return { kind: 'cidr', cidr, port };
  }
  return parseHostPort(text);
}

/** An SRV owner name such as `_api._tcp.mesh.internal`. */
export function parseSrvName(text: string): string {
  return text.trim().toLowerCase().replace(/\.$/, '');
}

export function checkSrvName(text: string): string | null {
  return isHostname(text.trim()) ? null : `"${text}" is not a DNS name (e.g. _api._tcp.mesh.internal)`;
}

/** A DNS server: `10.0.0.2`, `10.0.0.2:5353`, `fd00::53` or `[fd00::53]:5353` (default port 53). */
export function parseResolverServer(text: string): { address: string; port: number } | string {
  const ip = parseIp(text.trim());
  if (ip) return { address: formatIp(ip), port: 53 };
  const parsed = parseHostPort(text);
  if (typeof parsed === 'string') return parsed;
  if (parsed.kind !== 'ip') return `"${text}" must be an IP address (a resolver cannot be found by name)`;
  return { address: parsed.address, port: parsed.port };
}

/** `10.0.0.5:80` / `[fd00::5]:80`: the canonical text of an endpoint. */
export function hostPortText(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}
