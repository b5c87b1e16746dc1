// The mTLS tunnel's wire format, as pure helpers: TLS 1.3 with ALPN `h2`, one HTTP/2 CONNECT stream per proxied
// connection (RFC 9113 §8.5) whose `:authority` is the original destination `addr:port`; the server answers 200
// once the local app accepted, or a 4xx/5xx with a `meshctl-reason` header naming why it refused. A stream's
// END_STREAM is the TCP FIN of its direction; RST_STREAM CONNECT_ERROR is a TCP RST (RFC 9113 §8.5).
import { hostPortText, parseHostPort } from '../values/addresses.js';
import type { Family } from '../values/ip.js';

export const TUNNEL_ALPN = 'h2';
/** The header of a refusal answer naming its reason (`denied`, `connect-failed`, ...). */
export const REASON_HEADER = 'meshctl-reason';
/**
 * RST_STREAM code mirroring a TCP RST (RFC 9113 §8.5: CONNECT_ERROR, 0xa in §7; node:http2's
 * NGHTTP2_CONNECT_ERROR). Written as the number: importing node:http2 for it loaded HTTP/2 and TLS into every
 * proxy, also one without mTLS (the data plane imports this file).
 */
export const RST_CODE = 0x0a;

/** The `:authority` of a CONNECT to `address:port` (IPv6 in brackets). */
export function authorityOf(address: string, port: number): string {
  return hostPortText(address, port);
}

/** The destination a CONNECT's `:authority` names: an IP address and a port; a hostname is refused. */
export function parseAuthority(
  text: string | undefined,
): { readonly address: string; readonly port: number; readonly family: Family } | string {
  if (text === undefined || text === '') return 'the CONNECT has no :authority';
  const hp = parseHostPort(text);
  if (typeof hp === 'string') return `:authority ${JSON.stringify(text)} is not ADDRESS:PORT (${hp})`;
  if (hp.kind !== 'ip') return `:authority ${JSON.stringify(text)} names a host, not an address`;
  return { address: hp.address, port: hp.port, family: hp.family };
}

/** The HTTP status a refusal is answered with: 403 for authorization, 502 when the app did not accept, else 503. */
export function statusForRefusal(reason: string): number {
  if (reason === 'denied' || reason === 'not-local') return 403;
  if (reason === 'connect-failed' || /^E[A-Z]+$/.test(reason)) return 502;
  return 503;
}

/**
 * Why a CONNECT was not answered 200, as the client's connect-failure code: `remote-<reason>` from the server's
 * reason header, else `remote-status-<status>`.
 */
export function refusalCode(status: number, reason: string | string[] | undefined): string {
  const text = Array.isArray(reason) ? reason[0] : reason;
  return text !== undefined && /^[a-z0-9-]{1,40}$/i.test(text) ? `remote-${text}` : `remote-status-${status}`;
}

/**
 * Why a tunnel attempt failed before its stream was established, from the error that ended it: the tunnel port
 * refused or was unreachable (`tunnel-unreachable`, the only one a plaintext fallback may follow), the TLS
 * handshake failed (`tunnel-handshake-failed`), or the session closed under the stream (`tunnel-closed`).
 */
export function tunnelFailureCode(
  error: { code?: string; cause?: unknown } | undefined,
  handshakeDone: boolean,
): string {
  // A stream cancelled by its session's socket error carries that error as its cause.
  const cause = (error?.cause as { code?: unknown } | undefined)?.code;
  const code = typeof cause === 'string' ? cause : (error?.code ?? '');
  if (!handshakeDone) {
    if (['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EHOSTDOWN', 'EADDRNOTAVAIL'].includes(code))
      return 'tunnel-unreachable';
    return 'tunnel-handshake-failed';
  }
  return 'tunnel-closed';
}

/** HTTP/2 settings of both ends: large windows (the tunnel carries bulk), no push, many streams per session. */
export const TUNNEL_SETTINGS = {
  enablePush: false,
  initialWindowSize: 4 * 1024 * 1024,
  maxConcurrentStreams: 100_000,
  enableConnectProtocol: false,
} as const;

/** The session-level receive window both ends open up to (beyond the 64 KiB default). */
export const SESSION_WINDOW = 32 * 1024 * 1024;
