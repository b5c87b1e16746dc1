// Counters of the mTLS tunnel in one process (sessions per side, CONNECT streams per direction, handshake latency,
// handshake failures by reason), their sum over worker processes, and their Prometheus text. The certificate's
// expiry is rendered by src/mtls/expiry.ts.

export type TunnelSide = 'client' | 'server';
const SIDES: readonly TunnelSide[] = ['client', 'server'];

/** Upper bounds (seconds) of the handshake latency histogram. */
const HANDSHAKE_BUCKETS_S: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export interface TunnelSnapshot {
  /** TLS sessions opened and open now, by side (client: this proxy dialled; server: a peer dialled it). */
  sessions: Record<TunnelSide, { opened: number; active: number }>;
  /** CONNECT streams (one per proxied connection), by side. */
  streams: Record<TunnelSide, { opened: number; active: number }>;
  /** Handshake latency: counts per bucket of HANDSHAKE_BUCKETS_S plus an overflow slot, sum (s) and count. */
  handshake: { counts: number[]; sum: number; count: number };
  /** Handshakes refused or failed, by reason (`wrong-trust-domain`, `expired`, `identity-not-allowed`, `tls-error`...). */
  handshakeFailures: Record<string, number>;
}

function emptySide(): Record<TunnelSide, { opened: number; active: number }> {
  return { client: { opened: 0, active: 0 }, server: { opened: 0, active: 0 } };
}

export function emptyTunnelSnapshot(): TunnelSnapshot {
  return {
    sessions: emptySide(),
    streams: emptySide(),
    handshake: { counts: new Array<number>(HANDSHAKE_BUCKETS_S.length + 1).fill(0), sum: 0, count: 0 },
    handshakeFailures: {},
  };
}

export class TunnelMetrics {
  readonly data: TunnelSnapshot = emptyTunnelSnapshot();

  sessionOpened(side: TunnelSide): void {
    this.data.sessions[side].opened++;
    this.data.sessions[side].active++;
  }

  sessionClosed(side: TunnelSide): void {
    this.data.sessions[side].active--;
  }

  streamOpened(side: TunnelSide): void {
    this.data.streams[side].opened++;
    this.data.streams[side].active++;
  }

  streamClosed(side: TunnelSide): void {
    this.data.streams[side].active--;
  }

  handshake(ms: number): void {
    const s = ms / 1000;
    const h = this.data.handshake;
    let i = HANDSHAKE_BUCKETS_S.findIndex((b) => s <= b);
    if (i < 0) i = HANDSHAKE_BUCKETS_S.length;
    h.counts[i]!++;
    h.sum += s;
    h.count++;
  }

  handshakeFailed(reason: string): void {
    this.data.handshakeFailures[reason] = (this.data.handshakeFailures[reason] ?? 0) + 1;
  }

  snapshot(): TunnelSnapshot {
    return structuredClone(this.data);
  }
}

/** Adds up the snapshots of several worker processes (null: none of them runs a tunnel). */
export function mergeTunnelSnapshots(snapshots: readonly (TunnelSnapshot | null)[]): TunnelSnapshot | null {
  const present = snapshots.filter((s): s is TunnelSnapshot => s !== null);
  if (present.length === 0) return null;
  const out = emptyTunnelSnapshot();
  for (const s of present) {
    for (const side of SIDES) {
      for (const key of ['sessions', 'streams'] as const) {
        out[key][side].opened += s[key][side].opened;
        out[key][side].active += s[key][side].active;
      }
    }
    s.handshake.counts.forEach((c, i) => (out.handshake.counts[i]! += c));
    out.handshake.sum += s.handshake.sum;
    out.handshake.count += s.handshake.count;
    for (const [reason, n] of Object.entries(s.handshakeFailures))
      out.handshakeFailures[reason] = (out.handshakeFailures[reason] ?? 0) + n;
  }
  return out;
}

/** Prometheus text (0.0.4) for the merged tunnel counters; empty when no worker runs a tunnel. */
export function renderTunnelPrometheus(s: TunnelSnapshot | null): string {
  if (s === null) return '';
  const out: string[] = [];
  const family = (name: string, type: string, help: string) =>
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  family('meshctl_mtls_tunnel_sessions_total', 'counter', 'TLS sessions of the mTLS tunnel opened, by side.');
  for (const side of SIDES) out.push(`meshctl_mtls_tunnel_sessions_total{side="${side}"} ${s.sessions[side].opened}`);
  family('meshctl_mtls_tunnel_sessions_active', 'gauge', 'TLS sessions of the mTLS tunnel open now, by side.');
  for (const side of SIDES) out.push(`meshctl_mtls_tunnel_sessions_active{side="${side}"} ${s.sessions[side].active}`);
  family('meshctl_mtls_tunnel_streams_total', 'counter', 'CONNECT streams (proxied connections) of the tunnel.');
  for (const side of SIDES) out.push(`meshctl_mtls_tunnel_streams_total{side="${side}"} ${s.streams[side].opened}`);
  family('meshctl_mtls_tunnel_streams_active', 'gauge', 'CONNECT streams of the tunnel open now.');
  for (const side of SIDES) out.push(`meshctl_mtls_tunnel_streams_active{side="${side}"} ${s.streams[side].active}`);
  family('meshctl_mtls_handshake_seconds', 'histogram', 'TLS handshake latency of tunnel sessions.');
  let cumulative = 0;
  HANDSHAKE_BUCKETS_S.forEach((b, i) => {
    cumulative += s.handshake.counts[i]!;
    out.push(`meshctl_mtls_handshake_seconds_bucket{le="${b}"} ${cumulative}`);
  });
  out.push(`meshctl_mtls_handshake_seconds_bucket{le="+Inf"} ${s.handshake.count}`);
  out.push(`meshctl_mtls_handshake_seconds_sum ${s.handshake.sum}`);
  out.push(`meshctl_mtls_handshake_seconds_count ${s.handshake.count}`);
  family('meshctl_mtls_handshake_failures_total', 'counter', 'Tunnel handshakes refused or failed, by reason.');
  for (const [reason, n] of Object.entries(s.handshakeFailures).sort())
    out.push(`meshctl_mtls_handshake_failures_total{reason="${reason}"} ${n}`);
  return `${out.join('\n')}\n`;
}
