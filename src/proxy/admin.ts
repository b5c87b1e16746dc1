// The admin HTTP server on 127.0.0.1:15000 (excluded from capture): readiness, stats, Prometheus metrics,
// the effective config, the live connection table and drain. Handlers come from the lifecycle; this file
// only maps routes to them.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { MeshctlError } from '../errors.js';
import { parseSourceQuery } from './recent-connections.js';

/**
 * Who may use the endpoints that change the proxy or reveal more than health: /config (the whole config),
 * /connections and /lookup (every app's peers and destinations), POST /drain. Read-only health and metrics
 * (/ready, /stats, /metrics, /contract) stay open to every local user, for probes and Prometheus.
 */
const PRIVILEGED_PATHS: ReadonlySet<string> = new Set(['/config', '/connections', '/lookup', '/drain']);

/** The uid owning the client's socket (its peer credentials), and whether that uid may use privileged paths. */
export type AdminAuthorizer = (socket: Socket) => {
  readonly allowed: boolean;
  readonly uid: number;
  readonly who: string;
};

export interface AdminHandlers {
  /** `detail`: extra lines after the first (e.g. the control plane's state), shown whether ready or not. */
  ready(): { ready: boolean; reason: string; detail?: readonly string[] };
  stats(): Promise<unknown>;
  metrics(): Promise<string>;
  config(): unknown;
  /** What this proxy is as the kernel sees it, and the capture contract its config derives (LiveContract). */
  contract(): Promise<unknown>;
  connections(limit: number): Promise<unknown>;
  /** The open and recently closed connections from `source` (canonical ADDR:PORT or [ADDR]:PORT). */
  lookup(source: string): Promise<unknown>;
  /** Starts a drain (idempotent); resolves at once, the drain runs on. */
  drain(): { alreadyDraining: boolean; timeoutMs: number };
}

const DEFAULT_CONNECTIONS_LIMIT = 1000;
const MAX_CONNECTIONS_LIMIT = 100_000;

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(text);
}

function sendText(res: ServerResponse, status: number, text: string, type = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(text);
}

/** Answers 403 and returns true when `pathname` is privileged and `authorize` does not allow the client's socket. */
function refusedPrivileged(
  pathname: string,
  req: IncomingMessage,
  res: ServerResponse,
  authorize: AdminAuthorizer | null,
): boolean {
  if (authorize === null || !PRIVILEGED_PATHS.has(pathname)) return false;
  const peer = authorize(req.socket);
  if (peer.allowed) return false;
  sendText(
    res,
    403,
    `${pathname} is only for ${peer.who}; this request came from ${peer.uid < 0 ? 'a socket whose owner is unknown' : `uid ${peer.uid}`} (ask as root, e.g. with sudo)\n`,
  );
  return true;
}

async function route(
  handlers: AdminHandlers,
  req: IncomingMessage,
  res: ServerResponse,
  authorize: AdminAuthorizer | null,
): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://admin');
  const method = req.method ?? 'GET';
  if (refusedPrivileged(url.pathname, req, res, authorize)) return;
  const only = (allowed: string): boolean => {
    if (method === allowed || (allowed === 'GET' && method === 'HEAD')) return true;
    res.setHeader('allow', allowed);
    sendText(res, 405, `${url.pathname} accepts ${allowed} only\n`);
    return false;
  };
  switch (url.pathname) {
    case '/ready': {
      if (!only('GET')) return;
      const { ready, reason, detail = [] } = handlers.ready();
      sendText(
        res,
        ready ? 200 : 503,
        [ready ? 'ready' : `not ready: ${reason}`, ...detail].map((l) => `${l}\n`).join(''),
      );
      return;
    }
    case '/stats':
      if (only('GET')) sendJson(res, 200, await handlers.stats());
      return;
    case '/metrics':
      if (only('GET')) sendText(res, 200, await handlers.metrics(), 'text/plain; version=0.0.4; charset=utf-8');
      return;
    case '/config':
      if (only('GET')) sendJson(res, 200, handlers.config());
      return;
    case '/contract':
      if (only('GET')) sendJson(res, 200, await handlers.contract());
      return;
    case '/connections': {
      if (!only('GET')) return;
      const raw = url.searchParams.get('limit');
      const limit = raw === null ? DEFAULT_CONNECTIONS_LIMIT : Number(raw);
      if (!Number.isInteger(limit) || limit < 1 || limit > MAX_CONNECTIONS_LIMIT) {
        sendText(res, 400, `limit must be an integer from 1 to ${MAX_CONNECTIONS_LIMIT}, got ${raw}\n`);
        return;
      }
      sendJson(res, 200, await handlers.connections(limit));
      return;
    }
    case '/lookup': {
      if (!only('GET')) return;
      const query = parseSourceQuery(url.searchParams.get('source') ?? '');
      if (typeof query === 'string') {
        sendText(res, 400, `${query} (ask /lookup?source=ADDR:PORT)\n`);
        return;
      }
      sendJson(res, 200, await handlers.lookup(query.text));
      return;
    }
    case '/drain': {
      if (!only('POST')) return;
      const { alreadyDraining, timeoutMs } = handlers.drain();
      sendJson(res, 202, { draining: true, alreadyDraining, timeoutMs });
      return;
    }
    case '/':
      if (only('GET'))
        sendText(
          res,
          200,
          'meshctl proxy admin: /ready /stats /metrics /config /contract /connections /lookup?source=ADDR:PORT POST /drain\n',
        );
      return;
    default:
      sendText(res, 404, `no such admin endpoint: ${url.pathname}\n`);
  }
}

/**
 * Starts the admin server; rejects with MeshctlError LISTEN_FAILED when the port is taken. With `authorize`, the
 * PRIVILEGED_PATHS answer 403 to a client whose socket the authorizer does not allow.
 */
export function startAdminServer(
  handlers: AdminHandlers,
  address: string,
  port: number,
  authorize: AdminAuthorizer | null = null,
): Promise<Server> {
  const server = createServer((req, res) => {
    route(handlers, req, res, authorize).catch((error: unknown) => {
      if (!res.headersSent) sendText(res, 500, `admin handler failed: ${(error as Error).message}\n`);
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 5000;
  return new Promise((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new MeshctlError(
          'LISTEN_FAILED',
          `cannot start the admin server on ${address}:${port}: ${error.code ?? error.message}`,
          `another process holds port ${port}; stop it or change proxy.adminPort`,
          { cause: error },
        ),
      ),
    );
    server.listen({ host: address, port }, () => resolve(server));
  });
}
