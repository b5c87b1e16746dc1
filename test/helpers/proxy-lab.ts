// The proxy's netns lab: a client namespace (apps as uid 1000, the capture rules, the proxy as `nobody`) and a
// server namespace (real servers) joined by veth. Agents (test/helpers/proxy-agent.mjs) run inside the namespaces
// and are driven over IPC; the proxy is the real CLI (`bin/meshctl proxy`, built into dist/).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configFromObject } from '../../src/config/load.js';
import { installCapture } from '../../src/netfilter/install.js';
import type { Config } from '../../src/config/types.js';
import { createVethPair, deleteNs, inNs } from './netns.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const AGENT = fileURLToPath(new URL('./proxy-agent.mjs', import.meta.url));
const MESHCTL = join(ROOT, 'bin', 'meshctl');

export const PROXY_UID = 65534; // nobody
export const PROXY_GID = 65534; // nogroup
export const APP_UID = 1000;

/** Fails early, with the fix, when the integration tests would run a stale or missing build. */
export function assertBuilt(): void {
  for (const file of ['dist/cli/main.js', 'dist/proxy/lifecycle.js', 'build/Release/meshctl_native.node']) {
    if (!existsSync(join(ROOT, file))) throw new Error(`${file} is missing: run \`npm run build\` (and \`npm ci\` for the addon) before the proxy integration tests`);
  }
}

/** Runs `argv` inside `ns` with a raised fd limit, optionally as uid/gid (setpriv drops root after ulimit). */
function nsCommand(ns: string, argv: readonly string[], user?: { uid: number; gid: number }): string[] {
  const drop = user ? ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups'] : [];
  return ['netns', 'exec', ns, 'sh', '-c', 'ulimit -n "$(ulimit -Hn)" && exec "$@"', 'sh', ...drop, ...argv];
}

export interface AgentError {
  message: string;
  code?: string;
  errno?: number;
  syscall?: string;
  causeCode?: string;
}

export interface Agent {
  readonly ns: string;
  readonly pid: number;
  call<T = unknown>(op: string, args?: Record<string, unknown>): Promise<T>;
  stop(): void;
}

/** Starts an agent in `ns` (as `user` when given) and waits until it answers. */
export async function startAgent(ns: string, user?: { uid: number; gid: number }): Promise<Agent> {
  const child = spawn('ip', nsCommand(ns, [process.execPath, AGENT], user), { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  let ready: () => void = () => {};
  let failed: (e: Error) => void = () => {};
  const started = new Promise<void>((resolve, reject) => {
    ready = resolve;
    failed = reject;
  });
  child.on('message', (message: { id: number; ok: boolean; result?: unknown; error?: AgentError }) => {
    if (message.id === 0) return ready();
    const p = pending.get(message.id);
    if (!p) return;
    pending.delete(message.id);
    if (message.ok) p.resolve(message.result);
    else p.reject(Object.assign(new Error(`agent in ${ns}: ${message.error?.message}`), message.error));
  });
  child.on('exit', (code, signal) => {
    const error = new Error(`agent in ${ns} exited (code ${code}, signal ${signal})`);
    failed(error);
    for (const p of pending.values()) p.reject(error);
    pending.clear();
  });
  await started;
  return {
    ns,
    pid: child.pid!,
    call<T>(op: string, args: Record<string, unknown> = {}): Promise<T> {
      const id = nextId++;
      return new Promise<T>((resolve, reject) => {
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
        child.send({ id, op, args });
      });
    },
    stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/** A lab config object: the proxy runs as nobody; SSH port 22 is the only excluded port. */
export function labConfigObject(overrides: { proxy?: Record<string, unknown>; capture?: Record<string, unknown> } = {}, stateDir = '/tmp/mp-state'): Record<string, unknown> {
  return {
    proxy: { user: 'nobody', workers: 1, keepalive: '30s', ...overrides.proxy },
    capture: { ipv6: 'intercept', ...overrides.capture },
    safety: { sshPorts: [22] },
    stateDir,
  };
}

/**
 * Installs the capture rules for `config` inside `ns` with meshctl's own installer (the same transaction as
 * `meshctl install --netns`): real iptables-restore / ip6tables-restore (or nft), ledger under config.stateDir.
 */
export async function installLabCapture(ns: string, config: Config, lockFile: string): Promise<void> {
  await installCapture({ config, netns: ns, env: { ...process.env, XTABLES_LOCKFILE: lockFile } });
}

export interface AccessLine {
  msg: string;
  direction: 'outbound' | 'inbound';
  source: string;
  originalDst: string | null;
  upstream: string | null;
  upstreamLocal: string | null;
  bytesFromClient: number;
  bytesFromUpstream: number;
  durationMs: number;
  connectMs: number | null;
  result: string;
  detail: string;
  worker: number;
  state?: string;
}

export interface RunningProxy {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; atMs: number }>;
  accessLog(): AccessLine[];
  stderr(): string;
  /** Waits until an access-log line matches (polling the collected stdout). */
  waitForAccess(match: (line: AccessLine) => boolean, timeoutMs?: number): Promise<AccessLine>;
  waitForStderr(pattern: RegExp, timeoutMs?: number): Promise<void>;
  admin(path: string, method?: string): Promise<{ status: number; body: string }>;
  adminJson<T = any>(path: string): Promise<T>;
  waitReady(timeoutMs?: number): Promise<void>;
  /** SIGKILL to the proxy and its workers (cleanup). */
  kill(): void;
}

export interface ProxyLab {
  readonly client: string;
  readonly server: string;
  readonly addrs: { a4: string; b4: string; a6: string; b6: string };
  readonly dir: string;
  readonly app: Agent;
  readonly peer: Agent;
  /** Builds the config, writes it to `name`.json, installs nothing (see installCapture). */
  writeConfig(raw: Record<string, unknown>, name?: string): { file: string; config: Config };
  /** Starts `meshctl proxy --config FILE` as nobody; `prefix` runs before node (e.g. systemd-socket-activate). */
  startProxy(configFile: string, extraArgs?: readonly string[], prefix?: readonly string[], user?: { uid: number; gid: number }): Promise<RunningProxy>;
  destroy(): Promise<void>;
}

function childPids(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' }).split('\n').map((s) => Number(s.trim())).filter((n) => n > 0);
  } catch {
    return [];
  }
}

/**
 * Creates `mp-<name>-c` (client) and `mp-<name>-s` (server), an app agent (uid 1000) in the client and a peer agent
 * (root) in the server namespace. `capture` installs the rules of the given lab config in the client namespace.
 * `prefix` replaces `mp` in the namespace and directory names (each test file owner has their own).
 */
export async function createProxyLab(name: string, subnet: number, capture: Record<string, unknown> | null, prefix = 'mp'): Promise<ProxyLab> {
  assertBuilt();
  const client = `${prefix}-${name}-c`;
  const server = `${prefix}-${name}-s`;
  const addrs = createVethPair(client, server, subnet);
  const dir = mkdtempSync(join(tmpdir(), `${prefix}-${name}-`));
  chmodSync(dir, 0o755);
  const lockFile = join(dir, 'xtables.lock');
  const proxies: RunningProxy[] = [];
  const agents: Agent[] = [];
  const writeConfig = (raw: Record<string, unknown>, file = 'config') => {
    const path = join(dir, `${file}.json`);
    const config = configFromObject(raw, { file: path });
    writeFileSync(path, `${JSON.stringify(raw, null, 2)}\n`, { mode: 0o644 });
    chmodSync(path, 0o644);
    return { file: path, config };
  };
  try {
    // The proxy's passthrough source for IPv6 inbound (IPv4's 127.0.0.6 is on lo already).
    inNs(client, 'ip', ['-6', 'addr', 'add', '::6/128', 'dev', 'lo']);
    if (capture) await installLabCapture(client, writeConfig({ ...capture, stateDir: join(dir, 'state') }, 'capture').config, lockFile);
    agents.push(await startAgent(client, { uid: APP_UID, gid: APP_UID }));
    agents.push(await startAgent(server));
  } catch (error) {
    for (const a of agents) a.stop();
    deleteNs(client);
    deleteNs(server);
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  const [app, peer] = agents as [Agent, Agent];

  const startProxy = async (
    configFile: string,
    extraArgs: readonly string[] = [],
    prefix: readonly string[] = [],
    user: { uid: number; gid: number } = { uid: PROXY_UID, gid: PROXY_GID },
  ): Promise<RunningProxy> => {
    const child = spawn('ip', nsCommand(client, [...prefix, process.execPath, MESHCTL, 'proxy', '--config', configFile, ...extraArgs], user), {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, MESHCTL_LOG_LEVEL: 'info' },
    });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; atMs: number }>((resolve) =>
      child.on('exit', (code, signal) => resolve({ code, signal, atMs: performance.now() })),
    );
    const parse = (): AccessLine[] =>
      out.split('\n').filter((l) => l.startsWith('{')).flatMap((l) => {
        try {
          return [JSON.parse(l) as AccessLine];
        } catch {
          return [];
        }
      });
    const admin = async (path: string, method = 'GET') => {
      const r = await app.call<{ status: number; body: string }>('http', { host: '127.0.0.1', port: 15000, path, method });
      return { status: r.status, body: r.body };
    };
    const proxy: RunningProxy = {
      child,
      pid: child.pid!,
      exited,
      accessLog: parse,
      stderr: () => err,
      async waitForAccess(match, timeoutMs = 5000) {
        const deadline = performance.now() + timeoutMs;
        for (;;) {
          const hit = parse().find(match);
          if (hit) return hit;
          if (performance.now() > deadline) throw new Error(`no matching access-log line within ${timeoutMs} ms; have:\n${out}`);
          await new Promise((r) => setTimeout(r, 25));
        }
      },
      async waitForStderr(pattern, timeoutMs = 5000) {
        const deadline = performance.now() + timeoutMs;
        while (!pattern.test(err)) {
          if (performance.now() > deadline) throw new Error(`stderr did not match ${pattern} within ${timeoutMs} ms:\n${err}`);
          await new Promise((r) => setTimeout(r, 25));
        }
      },
      admin,
      async adminJson(path) {
        const r = await admin(path);
        if (r.status !== 200) throw new Error(`admin ${path}: ${r.status} ${r.body}`);
        return JSON.parse(r.body);
      },
      async waitReady(timeoutMs = 15000) {
        const deadline = performance.now() + timeoutMs;
        for (;;) {
          if (child.exitCode !== null) throw new Error(`proxy exited with ${child.exitCode}:\n${err}`);
          const r = await admin('/ready').catch(() => null);
          if (r?.status === 200) return;
          if (performance.now() > deadline) throw new Error(`proxy not ready within ${timeoutMs} ms:\n${err}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      },
      kill() {
        for (const pid of [...childPids(child.pid!), child.pid!]) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      },
    };
    proxies.push(proxy);
    return proxy;
  };

  return {
    client,
    server,
    addrs,
    dir,
    app,
    peer,
    writeConfig,
    startProxy,
    async destroy() {
      for (const p of proxies) p.kill();
      for (const a of agents) a.stop();
      await Promise.all(proxies.map((p) => Promise.race([p.exited, new Promise((r) => setTimeout(r, 2000))])));
      deleteNs(client);
      deleteNs(server);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
