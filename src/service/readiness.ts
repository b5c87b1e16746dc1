// Is a proxy ready on the admin port? One probe of GET /ready, or a bounded wait for it. Used by `meshctl install`
// (it refuses to redirect traffic to nothing), `meshctl proxy-ready` (the proxy unit's ExecStartPost, so the unit is
// "active" only once the proxy takes connections) and `meshctl service install|status`.
import { request } from 'node:http';
import { execa } from 'execa';
import type { LiveContract } from '../config/contract.js';
import { MeshctlError } from '../errors.js';
import { parseExpiryView, type ExpiryView } from '../mtls/expiry.js';
import { MESHCTL_BIN } from '../netfilter/transaction/revert.js';

export interface AdminEndpoint {
  readonly address: string;
  readonly port: number;
}

export interface ReadyProbe {
  readonly ready: boolean;
  /** What the admin port said (`ready`, `not ready: draining`) or why nothing answered (ECONNREFUSED). */
  readonly detail: string;
  /** The proxy's live contract (GET /contract), when asked for and it answered. */
  readonly contract?: LiveContract | null;
  /** With the contract: the proxy's mTLS identity and its expiry (GET /stats `mtls.identity`), null without mTLS. */
  readonly identity?: ExpiryView | null;
}

export function endpointText(endpoint: AdminEndpoint): string {
  return `${endpoint.address.includes(':') ? `[${endpoint.address}]` : endpoint.address}:${endpoint.port}`;
}

/** One GET /ready; never throws: a refused or silent port is a probe that says why. */
export function probeReady(endpoint: AdminEndpoint, timeoutMs = 1000): Promise<ReadyProbe> {
  return new Promise((resolve) => {
    const req = request(
      { host: endpoint.address, port: endpoint.port, path: '/ready', method: 'GET', timeout: timeoutMs, agent: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          if (body.length < 512) body += chunk;
        });
        res.on('end', () => {
          const text = body.trim().split('\n')[0] ?? '';
          resolve({
            ready: res.statusCode === 200,
            detail: res.statusCode === 200 ? text || 'ready' : `HTTP ${res.statusCode}${text ? `: ${text}` : ''}`,
          });
        });
        res.on('error', (error) => resolve({ ready: false, detail: `response failed: ${error.message}` }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (error: NodeJS.ErrnoException) => {
      const what =
        error.code === 'ECONNREFUSED' ? 'nothing listens there (ECONNREFUSED)' : (error.code ?? error.message);
      resolve({ ready: false, detail: what });
    });
    req.end();
  });
}

/** GET `path` as JSON; null when nothing answers, the status is not 200 or the body is not JSON. */
function fetchAdminJson(endpoint: AdminEndpoint, path: string, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve) => {
    const req = request(
      {
        host: endpoint.address,
        port: endpoint.port,
        path,
        method: 'GET',
        timeout: timeoutMs,
        agent: false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          if (body.length < 1 << 20) body += chunk;
        });
        res.on('end', () => {
          try {
            resolve(res.statusCode === 200 ? (JSON.parse(body) as unknown) : null);
          } catch {
            resolve(null);
          }
        });
        res.on('error', () => resolve(null));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(null));
    req.end();
  });
}

/** GET /contract: the running proxy as the kernel sees it; null when nothing answers or the answer is not one. */
export async function fetchContract(endpoint: AdminEndpoint, timeoutMs = 2000): Promise<LiveContract | null> {
  const parsed = (await fetchAdminJson(endpoint, '/contract', timeoutMs)) as Partial<LiveContract> | null;
  return parsed !== null &&
    typeof parsed === 'object' &&
    typeof parsed.uid === 'number' &&
    parsed.tcp !== undefined &&
    parsed.expects !== undefined
    ? (parsed as LiveContract)
    : null;
}

/** GET /stats `mtls.identity`: the proxy's SPIFFE ID and certificate expiry; null without mTLS or an answer. */
export async function fetchIdentity(endpoint: AdminEndpoint, timeoutMs = 2000): Promise<ExpiryView | null> {
  const stats = (await fetchAdminJson(endpoint, '/stats', timeoutMs)) as {
    mtls?: { identity?: unknown } | null;
  } | null;
  return parseExpiryView(stats?.mtls?.identity);
}

/** Polls /ready until it answers 200 or `timeoutMs` passes; returns the last probe (ready or not). */
export async function waitReady(
  endpoint: AdminEndpoint,
  options: { timeoutMs: number; intervalMs?: number },
): Promise<ReadyProbe> {
  const deadline = Date.now() + options.timeoutMs;
  const interval = options.intervalMs ?? 100;
  for (;;) {
    const left = deadline - Date.now();
    const probe = await probeReady(endpoint, Math.max(100, Math.min(1000, left)));
    if (probe.ready || Date.now() + interval > deadline) return probe;
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

/**
 * Waits for /ready inside network namespace `netns` (Node cannot enter one itself, so this runs
 * `ip netns exec NETNS node bin/meshctl proxy-ready`). Returns the probe; throws COMMAND_FAILED when the
 * helper cannot run at all (NETNS_NOT_FOUND when the namespace does not exist).
 */
async function waitReadyInNetns(
  netns: string,
  endpoint: AdminEndpoint,
  options: { timeoutMs: number; contract?: boolean },
): Promise<ReadyProbe> {
  const args = [
    'netns',
    'exec',
    netns,
    process.execPath,
    MESHCTL_BIN,
    'proxy-ready',
    '--admin',
    endpointText(endpoint),
    '--timeout',
    `${options.timeoutMs}ms`,
    '--json',
    ...(options.contract ? ['--contract'] : []),
  ];
  const result = await execa('ip', args, { reject: false, timeout: options.timeoutMs + 15_000 });
  const line = result.stdout.trim().split('\n').pop() ?? '';
  try {
    const parsed = JSON.parse(line) as {
      ready?: unknown;
      detail?: unknown;
      contract?: LiveContract | null;
      identity?: unknown;
    };
    if (typeof parsed.ready === 'boolean' && typeof parsed.detail === 'string') {
      return {
        ready: parsed.ready,
        detail: parsed.detail,
        ...(options.contract ? { contract: parsed.contract ?? null, identity: parseExpiryView(parsed.identity) } : {}),
      };
    }
  } catch {
    // fall through: the helper did not get as far as probing
  }
  const stderr = result.stderr.trim();
  if (/Cannot open network namespace|No such file or directory/.test(stderr) && stderr.includes(netns)) {
    throw new MeshctlError(
      'NETNS_NOT_FOUND',
      `network namespace ${netns} does not exist (checking the proxy's admin port there)`,
      'create it (`ip netns add`) or fix --netns',
    );
  }
  throw new MeshctlError(
    'COMMAND_FAILED',
    `could not probe the proxy admin port ${endpointText(endpoint)} in namespace ${netns} (exit ${result.exitCode ?? 'none'})`,
    'check that `ip netns exec` works here',
    { details: [`command: ip ${args.join(' ')}`, ...(stderr ? [`stderr:  ${stderr.split('\n')[0]}`] : [])] },
  );
}

/** /ready (waiting up to timeoutMs) and, with `contract`, GET /contract, inside `netns` when given. Never throws for a silent port. */
export async function probeProxy(
  endpoint: AdminEndpoint,
  options: { netns: string | null; timeoutMs: number; contract: boolean },
): Promise<ReadyProbe> {
  if (options.netns)
    return waitReadyInNetns(options.netns, endpoint, { timeoutMs: options.timeoutMs, contract: options.contract });
  const probe = await waitReady(endpoint, { timeoutMs: options.timeoutMs });
  if (!options.contract) return probe;
  if (probe.detail.startsWith('nothing listens')) return { ...probe, contract: null, identity: null };
  const [contract, identity] = await Promise.all([fetchContract(endpoint), fetchIdentity(endpoint)]);
  return { ...probe, contract, identity };
}

/**
 * Throws PROXY_NOT_READY unless a proxy answers ready on the admin endpoint (inside `netns` when given) within
 * `timeoutMs`: capture must never redirect traffic to a port where nothing accepts it.
 */
export async function requireProxyReady(
  endpoint: AdminEndpoint,
  options: { netns?: string | null; timeoutMs?: number; contract?: boolean } = {},
): Promise<ReadyProbe> {
  const timeoutMs = options.timeoutMs ?? 2000;
  const probe = await probeProxy(endpoint, {
    netns: options.netns ?? null,
    timeoutMs,
    contract: options.contract === true,
  });
  if (probe.ready) return probe;
  const where = options.netns ? ` in network namespace ${options.netns}` : '';
  throw new MeshctlError(
    'PROXY_NOT_READY',
    `no proxy is ready on the admin port ${endpointText(endpoint)}${where} (proxy.adminPort; waited ${timeoutMs} ms: ${probe.detail}), so capture would redirect traffic to nothing`,
    `start the proxy first (\`systemctl start meshctl-proxy\`, or \`meshctl proxy --config F\`${options.netns ? ` inside ${options.netns}` : ''}); pass --without-proxy only for labs and tests`,
  );
}
