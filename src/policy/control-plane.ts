// The control plane client: polls an HTTP(S) URL for the mesh policy (a YAML or JSON document holding services,
// outbound, inbound and mtls.peers) with ETag/If-None-Match, so any web server or object store can distribute policy. A new
// document is handed to `apply` (validate, then apply atomically); a failed fetch or a rejected document keeps the
// last good policy and is reported (status for /ready and /config, counters for /metrics). Never on the
// connection path: the proxy only ever uses the last applied config.
import { readFileSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { NOT_JSON, readJson, withYaml } from '../config/document.js';
import type { ControlPlaneConfig } from '../config/types.js';
import type { PolicyOverlay } from '../config/load.js';
import { isMeshctlError } from '../errors.js';
import type { Logger } from '../log.js';

/** Largest document accepted (a policy with thousands of services is far smaller). */
const MAX_BODY_BYTES = 16 * 1024 * 1024;

export type FetchResult = 'ok' | 'not-modified' | 'failed' | 'rejected';
const FETCH_RESULTS: readonly FetchResult[] = ['ok', 'not-modified', 'failed', 'rejected'];

export interface ControlPlaneStatus {
  readonly url: string;
  /** pending: nothing fetched yet; ok: the last fetch succeeded (new or unchanged); failing: it failed or was rejected. */
  readonly state: 'pending' | 'ok' | 'failing';
  /** ETag of the policy in use (null before the first success, or when the server sends none). */
  readonly appliedEtag: string | null;
  readonly appliedAt: string | null;
  readonly lastAttemptAt: string | null;
  readonly lastSuccessAt: string | null;
  /** Why the last fetch failed or its document was rejected (null while ok). */
  readonly lastError: string | null;
  readonly consecutiveFailures: number;
  readonly fetches: Readonly<Record<FetchResult, number>>;
}

class ControlPlaneFetchError extends Error {}

interface Fetched {
  readonly status: number;
  readonly etag: string | null;
  readonly body: string;
}

async function get(
  url: URL,
  headers: Record<string, string>,
  timeoutMs: number,
  ca: string | undefined,
): Promise<Fetched> {
  // node:https (and TLS with it) only for an https control plane: a proxy without one never loads them.
  const request = url.protocol === 'https:' ? (await import('node:https')).request : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: 'GET', headers, timeout: timeoutMs, agent: false, ...(ca !== undefined ? { ca } : {}) },
      (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (d: Buffer) => {
          size += d.length;
          if (size > MAX_BODY_BYTES)
            req.destroy(new ControlPlaneFetchError(`response larger than ${MAX_BODY_BYTES} bytes`));
          else chunks.push(d);
        });
        res.on('end', () => {
          const etag = res.headers.etag;
          resolve({
            status: res.statusCode ?? 0,
            etag: typeof etag === 'string' ? etag : null,
            body: Buffer.concat(chunks).toString('utf8'),
          });
        });
        res.on('error', reject);
      },
    );
    const deadline = setTimeout(
      () => req.destroy(new ControlPlaneFetchError(`no complete response within ${timeoutMs} ms`)),
      timeoutMs,
    );
    req.on('timeout', () => req.destroy(new ControlPlaneFetchError(`no response within ${timeoutMs} ms`)));
    req.on('error', (error) => {
      clearTimeout(deadline);
      reject(error);
    });
    req.on('close', () => clearTimeout(deadline));
    req.end();
  });
}

/** Parses a control-plane document (YAML or JSON): a mapping, or a ControlPlaneFetchError naming the line. */
export function parsePolicyDocument(text: string, origin: string): Record<string, unknown> {
  const json = readJson(text);
  const value: unknown =
    json !== NOT_JSON
      ? json
      : withYaml((yaml) => {
          const doc = yaml.parseDocument(text, { prettyErrors: true, uniqueKeys: true });
          if (doc.errors.length > 0)
            throw new ControlPlaneFetchError(
              `${origin} is not valid YAML/JSON: ${doc.errors[0]!.message.split('\n')[0]}`,
            );
          return doc.toJS() as unknown;
        });
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ControlPlaneFetchError(
      `${origin}: the document must be a mapping with services, outbound, inbound and/or mtls.peers`,
    );
  }
  return value as Record<string, unknown>;
}

export class ControlPlanePoller {
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private seenEtag: string | null = null;
  private state: ControlPlaneStatus['state'] = 'pending';
  private appliedEtag: string | null = null;
  private appliedAt: string | null = null;
  private lastAttemptAt: string | null = null;
  private lastSuccessAt: string | null = null;
  private lastError: string | null = null;
  private consecutiveFailures = 0;
  private readonly fetches: Record<FetchResult, number> = { ok: 0, 'not-modified': 0, failed: 0, rejected: 0 };
  private polling: Promise<FetchResult> | null = null;
  private readonly url: URL;

  constructor(
    readonly config: ControlPlaneConfig,
    /** Validates and applies a document; throws (MeshctlError CONFIG_INVALID...) to reject it. */
    private readonly apply: (overlay: PolicyOverlay) => Promise<void>,
    private readonly log: Logger,
  ) {
    this.url = new URL(config.url);
  }

  /** Polls once now (awaited, so a reachable control plane's policy is in place before the proxy is ready), then every pollInterval. */
  async start(): Promise<void> {
    await this.poll();
    this.startPolling();
  }

  /** Polls every pollInterval from now on (after a first poll made with poll()). */
  startPolling(): void {
    if (this.timer === null) this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.poll().finally(() => this.schedule());
    }, this.config.pollIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** One poll (concurrent calls share it). */
  poll(): Promise<FetchResult> {
    this.polling ??= this.pollOnce().finally(() => {
      this.polling = null;
    });
    return this.polling;
  }

  private fail(result: 'failed' | 'rejected', message: string): FetchResult {
    this.fetches[result]++;
    this.consecutiveFailures++;
    if (this.lastError !== message || this.state !== 'failing') {
      this.log.error(
        { url: this.config.url, result, err: message, keeping: this.appliedEtag },
        `control plane ${result === 'failed' ? 'fetch failed' : 'document rejected'}; keeping the last good policy`,
      );
    }
    this.state = 'failing';
    this.lastError = message;
    return result;
  }

  private succeed(result: 'ok' | 'not-modified'): FetchResult {
    this.fetches[result]++;
    if (this.state === 'failing') this.log.info({ url: this.config.url }, 'control plane reachable again');
    this.state = 'ok';
    this.lastError = null;
    this.consecutiveFailures = 0;
    this.lastSuccessAt = new Date().toISOString();
    return result;
  }

  private async pollOnce(): Promise<FetchResult> {
    this.lastAttemptAt = new Date().toISOString();
    let ca: string | undefined;
    if (this.config.caFile !== null) {
      try {
        ca = readFileSync(this.config.caFile, 'utf8');
      } catch (error) {
        return this.fail(
          'failed',
          `cannot read controlPlane.caFile ${this.config.caFile}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
        );
      }
    }
    const headers: Record<string, string> = {
      accept: 'application/json, application/yaml;q=0.9, */*;q=0.1',
      'user-agent': 'meshctl-proxy',
    };
    if (this.seenEtag !== null) headers['if-none-match'] = this.seenEtag;
    let fetched: Fetched;
    try {
      fetched = await get(this.url, headers, this.config.timeoutMs, ca);
    } catch (error) {
      const e = error as NodeJS.ErrnoException;
      return this.fail('failed', `GET ${this.config.url}: ${e.code ? `${e.code} ` : ''}${e.message}`);
    }
    if (fetched.status === 304) {
      // Unchanged. If the document we last saw was rejected, it still is: the error stays.
      if (this.seenEtag !== null && this.seenEtag !== this.appliedEtag && this.lastError !== null)
        return this.fail('rejected', this.lastError);
      return this.succeed('not-modified');
    }
    if (fetched.status < 200 || fetched.status > 299) {
      return this.fail(
        'failed',
        `GET ${this.config.url}: HTTP ${fetched.status}${fetched.body ? `: ${fetched.body.slice(0, 200).trim()}` : ''}`,
      );
    }
    const origin = `control plane ${this.config.url}${fetched.etag ? ` (etag ${fetched.etag})` : ''}`;
    this.seenEtag = fetched.etag;
    try {
      const raw = parsePolicyDocument(fetched.body, origin);
      await this.apply({ raw, origin });
    } catch (error) {
      const e = error as Error;
      const details = isMeshctlError(error) && error.details.length > 0 ? ` (${error.details.join('; ')})` : '';
      return this.fail('rejected', `${e.message}${details}`);
    }
    this.appliedEtag = fetched.etag;
    this.appliedAt = new Date().toISOString();
    return this.succeed('ok');
  }

  status(): ControlPlaneStatus {
    return {
      url: this.config.url,
      state: this.state,
      appliedEtag: this.appliedEtag,
      appliedAt: this.appliedAt,
      lastAttemptAt: this.lastAttemptAt,
      lastSuccessAt: this.lastSuccessAt,
      lastError: this.lastError,
      consecutiveFailures: this.consecutiveFailures,
      fetches: { ...this.fetches },
    };
  }
}

/** Lines for /ready's body describing the control plane (the proxy stays ready on the last good policy). */
export function controlPlaneReadyDetail(s: ControlPlaneStatus, version: number): string[] {
  const applied = s.appliedAt
    ? `policy from the control plane${s.appliedEtag ? ` (etag ${s.appliedEtag})` : ''} applied ${s.appliedAt}`
    : "no policy from the control plane yet (using the file's)";
  switch (s.state) {
    case 'pending':
      return [`control plane ${s.url}: not fetched yet; config version ${version}`];
    case 'ok':
      return [`control plane ${s.url}: ok; ${applied}; config version ${version}`];
    case 'failing':
      return [
        `control plane ${s.url}: FAILING (${s.consecutiveFailures} in a row): ${s.lastError}`,
        `keeping the last good config: ${applied}; config version ${version}`,
      ];
  }
}

/** Prometheus text for the control plane. */
export function renderControlPlanePrometheus(s: ControlPlaneStatus | null, version: number): string {
  const out = [
    '# HELP meshctl_proxy_config_version Version of the running config (1 at start, +1 per applied change).',
    '# TYPE meshctl_proxy_config_version gauge',
    `meshctl_proxy_config_version ${version}`,
  ];
  if (s !== null) {
    out.push(
      '# HELP meshctl_control_plane_up 1 when the last control-plane fetch succeeded (new or unchanged policy), 0 when it failed or was rejected.',
    );
    out.push('# TYPE meshctl_control_plane_up gauge');
    out.push(`meshctl_control_plane_up ${s.state === 'ok' ? 1 : 0}`);
    out.push(
      '# HELP meshctl_control_plane_fetches_total Control-plane polls by result: ok (new policy applied), not-modified (304), failed (network/HTTP), rejected (invalid document; the last good policy stays).',
    );
    out.push('# TYPE meshctl_control_plane_fetches_total counter');
    for (const r of FETCH_RESULTS) out.push(`meshctl_control_plane_fetches_total{result="${r}"} ${s.fetches[r]}`);
    out.push('# HELP meshctl_control_plane_consecutive_failures Failed or rejected polls since the last success.');
    out.push('# TYPE meshctl_control_plane_consecutive_failures gauge');
    out.push(`meshctl_control_plane_consecutive_failures ${s.consecutiveFailures}`);
    if (s.lastSuccessAt !== null) {
      out.push('# HELP meshctl_control_plane_last_success_timestamp_seconds When a poll last succeeded.');
      out.push('# TYPE meshctl_control_plane_last_success_timestamp_seconds gauge');
      out.push(
        `meshctl_control_plane_last_success_timestamp_seconds ${(Date.parse(s.lastSuccessAt) / 1000).toFixed(3)}`,
      );
    }
  }
  return `${out.join('\n')}\n`;
}
