// Holding the live proxy to the contract the capture rules need: `meshctl install` refuses a proxy that would
// loop or whose ports the rules would redirect to nothing (PROXY_MISMATCH), and `meshctl status` reports the
// proxy half of the host (ready, not ready, unreachable, mismatched) from the same comparison.
import { compareContract, type CaptureContract, type ContractMismatch, type LiveContract } from '../config/contract.js';
import { MeshctlError } from '../errors.js';
import type { ExpiryView } from '../mtls/expiry.js';
import { endpointText, probeProxy, type AdminEndpoint } from './readiness.js';

export type ProxyState = 'ready' | 'not-ready' | 'unreachable' | 'mismatched' | 'unknown-contract';

/** The proxy half of the host, as one probe of the admin port sees it. */
export interface ProxyReport {
  readonly state: ProxyState;
  readonly admin: string;
  /** What /ready said, or why nothing answered. */
  readonly detail: string;
  readonly contract: LiveContract | null;
  readonly mismatches: readonly ContractMismatch[];
  /** The proxy's mTLS identity and certificate expiry (GET /stats), null without mTLS or an answer. */
  readonly identity?: ExpiryView | null;
}

/** /ready answers 503 for a proxy refusing its own looped connections; the contract check says why, so it may go on. */
function notReadyOnlyForSelfLoop(detail: string): boolean {
  return /^HTTP 503: not ready: self-loop/.test(detail);
}

/**
 * Probes the proxy on `endpoint` (inside `netns` when given; waiting up to `timeoutMs` for /ready) and compares
 * its live contract with `rules`. Never throws for a proxy that is down: that is a state of the report.
 */
export async function inspectProxy(
  rules: CaptureContract,
  endpoint: AdminEndpoint,
  options: { netns: string | null; timeoutMs: number },
): Promise<ProxyReport> {
  const probe = await probeProxy(endpoint, { ...options, contract: true });
  const admin = endpointText(endpoint);
  const contract = probe.contract ?? null;
  const identity = probe.identity ?? null;
  if (contract === null) {
    const answered = probe.ready || probe.detail.startsWith('HTTP ');
    return {
      state: answered ? 'unknown-contract' : 'unreachable',
      admin,
      detail: probe.detail,
      contract,
      mismatches: [],
      identity,
    };
  }
  const mismatches = compareContract(rules, contract);
  if (mismatches.length > 0)
    return { state: 'mismatched', admin, detail: probe.detail, contract, mismatches, identity };
  return { state: probe.ready ? 'ready' : 'not-ready', admin, detail: probe.detail, contract, mismatches, identity };
}

/**
 * Throws unless the proxy on `endpoint` is ready and keeps `rules`: PROXY_NOT_READY (nothing ready there, or it
 * published no contract), PROXY_MISMATCH naming every field that differs with both values and the fix. A proxy
 * that is not ready only because it refuses its own looped connections passes when this contract would fix it.
 */
export async function requireProxyContract(
  rules: CaptureContract,
  endpoint: AdminEndpoint,
  options: { netns: string | null; timeoutMs?: number },
): Promise<ProxyReport> {
  const timeoutMs = options.timeoutMs ?? 2000;
  const report = await inspectProxy(rules, endpoint, { netns: options.netns, timeoutMs });
  const where = options.netns ? ` in network namespace ${options.netns}` : '';
  if (report.state === 'mismatched') {
    throw new MeshctlError(
      'PROXY_MISMATCH',
      `the proxy on ${report.admin}${where} (pid ${report.contract!.pid}) does not keep the contract these rules need: ${report.mismatches.map((m) => m.field).join(', ')}`,
      report.mismatches.length === 1
        ? report.mismatches[0]!.fix
        : "fix each field above (the proxy's config and the install flags must agree); `meshctl status` shows both halves",
      {
        details: report.mismatches.flatMap((m) => [
          `${m.field}: ${m.message}`,
          `  rules: ${m.rules}`,
          `  proxy: ${m.proxy}`,
          ...(report.mismatches.length > 1 ? [`  fix:   ${m.fix}`] : []),
        ]),
      },
    );
  }
  if (report.state === 'ready' || (report.state === 'not-ready' && notReadyOnlyForSelfLoop(report.detail)))
    return report;
  if (report.state === 'unknown-contract') {
    throw new MeshctlError(
      'PROXY_NOT_READY',
      `the proxy on ${report.admin}${where} answered /ready (${report.detail}) but not GET /contract, so install cannot check that it keeps these rules' contract`,
      'restart the proxy with this version of meshctl (the contract endpoint is new); pass --without-proxy only for labs and tests',
    );
  }
  throw new MeshctlError(
    'PROXY_NOT_READY',
    `no proxy is ready on the admin port ${report.admin}${where} (proxy.adminPort; waited ${timeoutMs} ms: ${report.detail}), so capture would redirect traffic to nothing`,
    `start the proxy first (\`systemctl start meshctl-proxy\`, or \`meshctl proxy --config F\`${options.netns ? ` inside ${options.netns}` : ''}); pass --without-proxy only for labs and tests`,
  );
}
