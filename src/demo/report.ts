// Turns what the demo saw (client results, the proxy's access-log records, /stats) into a report a newcomer can
// read: for every scripted connection, intercepted or not, the original destination the proxy recovered, bytes.
// Pure: text in, text out.
import type { AccessRecord } from '../proxy/access-log.js';
import type { ClientResult, LabAddresses } from './lab.js';

/** The fields of an access-log line the report uses: the proxy's own record type, not a copy of it. */
export type AccessLine = Pick<
  AccessRecord,
  | 'direction'
  | 'source'
  | 'originalDst'
  | 'upstream'
  | 'upstreamLocal'
  | 'bytesFromClient'
  | 'bytesFromUpstream'
  | 'durationMs'
  | 'result'
  | 'detail'
  | 'tls'
  | 'peerIdentity'
>;

/** A connection through the mTLS tunnel: the identities both proxies should show, and the far proxy's record. */
export interface TunnelView {
  /** This (the app host's) proxy's SPIFFE ID: the far proxy's record names it as the peer. */
  readonly local: string;
  /** The far (mesh host's) proxy's SPIFFE ID: this proxy's record names it as the peer. */
  readonly remote: string;
  readonly remoteRecord: AccessLine | null;
}

export interface DemoStep {
  readonly title: string;
  readonly direction: 'outbound' | 'inbound';
  readonly from: string;
  readonly to: string;
  /** What the config says should happen. */
  readonly expect: 'intercepted' | 'direct';
  readonly why: string;
  readonly client: ClientResult;
  readonly record: AccessLine | null;
  /** Set for a connection that should go through the mTLS tunnel. */
  readonly tunnel?: TunnelView;
}

/** Parses the proxy's stdout into access-log records (other lines are ignored). */
export function parseAccessLog(stdout: string): AccessLine[] {
  const records: AccessLine[] = [];
  for (const line of stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const r = JSON.parse(line) as Partial<AccessLine>;
      if (
        (r.direction === 'outbound' || r.direction === 'inbound') &&
        typeof r.source === 'string' &&
        typeof r.bytesFromClient === 'number'
      )
        records.push(r as AccessLine);
    } catch {
      // not JSON: skip
    }
  }
  return records;
}

/** The access record of the connection whose client-side address is `local` (address:port), if the proxy saw it. */
export function recordFor(records: readonly AccessLine[], local: string): AccessLine | null {
  const port = local.split(':').pop();
  const address = local.slice(0, local.lastIndexOf(':')).replace(/^::ffff:/, '');
  return records.find((r) => r.source.replace(/^::ffff:/, '') === `${address}:${port}`) ?? null;
}

export function intercepted(step: DemoStep): boolean {
  return step.record !== null && step.record.originalDst !== null;
}

/** Whether a tunneled step showed both identities: each proxy's record names the other's SPIFFE ID. */
function tunnelOk(step: DemoStep): boolean {
  const t = step.tunnel;
  if (t === undefined) return true;
  return (
    step.record?.tls === 'mtls' &&
    step.record.peerIdentity === t.remote &&
    t.remoteRecord?.tls === 'mtls' &&
    t.remoteRecord.peerIdentity === t.local
  );
}

/** Whether every step did what the config says, and every connection worked. */
export function stepOk(step: DemoStep): boolean {
  return (
    step.client.ok &&
    (step.expect === 'intercepted'
      ? intercepted(step) && step.record!.originalDst === step.to && tunnelOk(step)
      : step.record === null)
  );
}

const quote = (text: string | undefined) =>
  text ? `"${text.length > 60 ? `${text.slice(0, 57)}...` : text}"` : '(nothing)';

function stepLines(step: DemoStep, index: number): string[] {
  const head = `${index + 1}. ${step.title.padEnd(13)} ${`${step.from} → ${step.to}`.padEnd(34)}`;
  if (!step.client.ok) return [`${head} FAILED: ${step.client.error ?? 'no answer'}`];
  const r = step.record;
  if (!r) {
    return [
      `${head} DIRECT (not intercepted)`,
      `   ${step.why}.`,
      `   The proxy has no record of it; the server answered ${quote(step.client.firstLine)} all the same.`,
    ];
  }
  const lines = [`${head} ${step.tunnel ? 'INTERCEPTED, mTLS' : 'INTERCEPTED'}`, `   ${step.why}.`];
  if (step.tunnel) {
    const far = step.tunnel.remoteRecord;
    lines.push(
      `   the kernel redirected it to the proxy (:15001), which read the original destination ${r.originalDst}: a mesh`,
      `   member, so it went through the mTLS tunnel (TLS 1.3 with both certificates, HTTP/2 CONNECT to :15008).`,
      `   This proxy is ${step.tunnel.local}; the server's proxy proved ${r.peerIdentity ?? '(none)'} (tls ${r.tls ?? '?'}).`,
      far
        ? `   The mesh host's proxy logged the client as ${far.peerIdentity ?? '(none)'} (tls ${far.tls ?? '?'}) and passed it to its app from ${far.upstreamLocal ?? '?'}.`
        : `   The mesh host's proxy has no record of it.`,
      `   ${r.bytesFromClient} B out, ${r.bytesFromUpstream} B back, closed by ${r.result} after ${Math.round(r.durationMs)} ms.`,
    );
  } else if (step.direction === 'outbound') {
    lines.push(
      `   the kernel redirected it to the proxy (:15001); the proxy read the original destination ${r.originalDst}`,
      `   (SO_ORIGINAL_DST) and connected there itself: ${r.bytesFromClient} B out, ${r.bytesFromUpstream} B back, closed by ${r.result} after ${Math.round(r.durationMs)} ms.`,
    );
  } else {
    lines.push(
      `   it arrived for ${r.originalDst}; the kernel redirected it to the proxy (:15006), which passed it on to the app`,
      `   from ${r.upstreamLocal ?? '?'}: ${r.bytesFromClient} B in, ${r.bytesFromUpstream} B back, closed by ${r.result} after ${Math.round(r.durationMs)} ms.`,
    );
  }
  lines.push(`   The client got ${quote(step.client.firstLine)}.`);
  return lines;
}

export interface StatsView {
  readonly connections?: { readonly accepted?: { readonly outbound?: number; readonly inbound?: number } };
  readonly bytes?: {
    readonly outbound?: { readonly clientToUpstream?: number; readonly upstreamToClient?: number };
    readonly inbound?: { readonly clientToUpstream?: number; readonly upstreamToClient?: number };
  };
}

export function formatReport(input: {
  addresses: LabAddresses;
  proxyUser: string;
  steps: readonly DemoStep[];
  stats: StatsView;
  explainTarget: string;
  explain: string;
  backendLine: string;
}): string {
  const { addresses: a, steps, stats } = input;
  const out: string[] = [];
  out.push('', 'meshctl demo: the real proxy and real netfilter rules, in two throwaway network namespaces', '');
  out.push(
    `  app host   ${a.appNs.padEnd(14)} ${a.app.padEnd(12)} runs the proxy (as user ${input.proxyUser}), the capture rules and an app on :8080`,
  );
  out.push(
    `  peer host  ${a.peerNs.padEnd(14)} ${a.peer.padEnd(12)} runs servers on :80 (HTTP), :25 (speaks first), :9999 (not captured)`,
  );
  out.push(
    `  mesh host  ${a.meshNs.padEnd(14)} ${a.mesh.padEnd(12)} runs meshctl too (capture, a proxy with its own identity, strict mTLS) and an app on :80`,
  );
  out.push(`  capture    ${input.backendLine}`, '');
  out.push("What happened to each connection (from the proxy's live access log):", '');
  steps.forEach((s, i) => out.push(...stepLines(s, i), ''));
  const acc = stats.connections?.accepted ?? {};
  const bytes = stats.bytes ?? {};
  out.push(
    `Proxy /stats: ${acc.outbound ?? 0} outbound and ${acc.inbound ?? 0} inbound connections accepted; ` +
      `outbound ${bytes.outbound?.clientToUpstream ?? 0} B sent / ${bytes.outbound?.upstreamToClient ?? 0} B received, ` +
      `inbound ${bytes.inbound?.clientToUpstream ?? 0} B / ${bytes.inbound?.upstreamToClient ?? 0} B.`,
    '',
  );
  out.push(
    `Why was ${input.explainTarget} intercepted? \`meshctl explain --out --dst ${input.explainTarget} --netns ${a.appNs}\` walks the rules:`,
    '',
  );
  out.push(
    ...input.explain
      .trimEnd()
      .split('\n')
      .map((l) => `    ${l}`),
    '',
  );
  const bad = steps.filter((s) => !stepOk(s));
  out.push(
    bad.length === 0
      ? `All ${steps.length} connections behaved as the config says.`
      : `${bad.length} of ${steps.length} connections did NOT behave as the config says: ${bad.map((s) => s.title).join(', ')}.`,
  );
  return `${out.join('\n')}\n`;
}
