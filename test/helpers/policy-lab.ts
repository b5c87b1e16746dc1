// The policy netns lab: a client namespace `mq-<name>-c` (apps as uid 1000, meshctl's capture rules, the real proxy
// as `nobody`) and a server namespace `mq-<name>-s` holding several endpoint addresses on its veth (one server per
// address), joined by veth. Agents (test/helpers/policy-agent.mjs) run in both and are driven over IPC.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configFromObject } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { createVethPair, deleteNs, inNs } from './netns.js';
import { APP_UID, assertBuilt, installLabCapture, PROXY_GID, PROXY_UID, type AccessLine } from './proxy-lab.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const AGENT = fileURLToPath(new URL('./policy-agent.mjs', import.meta.url));
const MESHCTL = join(ROOT, 'bin', 'meshctl');

export interface PolicyAgent {
  call<T = unknown>(op: string, args?: Record<string, unknown>): Promise<T>;
  stop(): void;
}

function nsCommand(ns: string, argv: readonly string[], user?: { uid: number; gid: number }): string[] {
  const drop = user ? ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups'] : [];
  return ['netns', 'exec', ns, 'sh', '-c', 'ulimit -n "$(ulimit -Hn)" && exec "$@"', 'sh', ...drop, ...argv];
}

/** Starts the policy agent in `ns` (as `user` when given) and waits until it answers. */
export async function startPolicyAgent(ns: string, user?: { uid: number; gid: number }): Promise<PolicyAgent> {
  const child = spawn('ip', nsCommand(ns, [process.execPath, AGENT], user), { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  let ready: () => void = () => {};
  let failed: (e: Error) => void = () => {};
  const started = new Promise<void>((resolve, reject) => {
    ready = resolve;
    failed = reject;
  });
  child.on('message', (message: { id: number; ok: boolean; result?: unknown; error?: { message: string } }) => {
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

export interface PolicyProxy {
  readonly child: ChildProcess;
  accessLog(): (AccessLine & { service?: string; attempts?: number })[];
  stderr(): string;
  admin(path: string, method?: string): Promise<{ status: number; body: string }>;
  adminJson<T = any>(path: string): Promise<T>;
  waitReady(timeoutMs?: number): Promise<void>;
  /** Polls `check` (an admin query, say) until it returns a truthy value, or fails after `timeoutMs`. */
  waitFor<T>(what: string, check: () => Promise<T | null | undefined | false>, timeoutMs?: number): Promise<T>;
  kill(): void;
  readonly exited: Promise<void>;
}

export interface PolicyLab {
  readonly client: string;
  readonly server: string;
  /** 10.S.0.1 (client), 10.S.0.2 (server). */
  readonly addrs: { a4: string; b4: string; a6: string; b6: string };
  /** Extra addresses on the server's veth: 10.S.0.11, .12, ... */
  readonly endpoints: readonly string[];
  /** Extra addresses on the client's veth (sources for source-hash): 10.S.0.51, .52, ... */
  readonly clientSources: readonly string[];
  /** Extra sources on the server's veth for inbound tests: 10.S.0.81, .82, ... */
  readonly peerSources: readonly string[];
  readonly subnet: number;
  readonly dir: string;
  /** Apps in the client namespace (uid 1000). */
  readonly app: PolicyAgent;
  /** Servers (root) in the server namespace. */
  readonly peer: PolicyAgent;
  writeConfig(raw: Record<string, unknown>, name?: string): { file: string; config: Config };
  startProxy(configFile: string): Promise<PolicyProxy>;
  destroy(): Promise<void>;
}

function childPids(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' }).split('\n').map((s) => Number(s.trim())).filter((n) => n > 0);
  } catch {
    return [];
  }
}

/** The base config of a lab: the proxy as nobody, one worker (policy state is per process), SSH port 22 excluded. */
export function policyConfig(lab: Pick<PolicyLab, 'dir'>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const { proxy, ...rest } = extra as { proxy?: Record<string, unknown> };
  return {
    proxy: { user: 'nobody', workers: 1, connectTimeout: '2s', ...proxy },
    capture: { ipv6: 'intercept' },
    safety: { sshPorts: [22] },
    stateDir: join(lab.dir, 'state'),
    ...rest,
  };
}

/**
 * Creates the lab: namespaces, `endpoints` extra server addresses, `clientSources` extra client addresses, the
 * capture rules (from the base config) in the client namespace, and an agent in each namespace.
 */
export async function createPolicyLab(name: string, subnet: number, options: { endpoints?: number; clientSources?: number; peerSources?: number } = {}): Promise<PolicyLab> {
  assertBuilt();
  const client = `mq-${name}-c`;
  const server = `mq-${name}-s`;
  const addrs = createVethPair(client, server, subnet);
  const dir = mkdtempSync(join(tmpdir(), `mq-${name}-`));
  chmodSync(dir, 0o755);
  const endpoints = Array.from({ length: options.endpoints ?? 3 }, (_, i) => `10.${subnet}.0.${11 + i}`);
  const clientSources = Array.from({ length: options.clientSources ?? 0 }, (_, i) => `10.${subnet}.0.${51 + i}`);
  const peerSources = Array.from({ length: options.peerSources ?? 0 }, (_, i) => `10.${subnet}.0.${81 + i}`);
  const agents: PolicyAgent[] = [];
  const proxies: PolicyProxy[] = [];
  const writeConfig = (raw: Record<string, unknown>, file = 'config') => {
    const path = join(dir, `${file}.json`);
    const config = configFromObject(raw, { file: path });
    writeFileSync(`${path}.tmp`, `${JSON.stringify(raw, null, 2)}\n`, { mode: 0o644 });
    // Replace by rename, as config managers do: the proxy's watcher never sees a half-written file.
    execFileSync('mv', [`${path}.tmp`, path]);
    return { file: path, config };
  };
  try {
    for (const a of endpoints) inNs(server, 'ip', ['addr', 'add', `${a}/24`, 'dev', `${server}-v`.slice(0, 15)]);
    for (const a of peerSources) inNs(server, 'ip', ['addr', 'add', `${a}/24`, 'dev', `${server}-v`.slice(0, 15)]);
    for (const a of clientSources) inNs(client, 'ip', ['addr', 'add', `${a}/24`, 'dev', `${client}-v`.slice(0, 15)]);
    inNs(client, 'ip', ['-6', 'addr', 'add', '::6/128', 'dev', 'lo']);
    await installLabCapture(client, writeConfig(policyConfig({ dir }), 'capture').config, join(dir, 'xtables.lock'));
    agents.push(await startPolicyAgent(client, { uid: APP_UID, gid: APP_UID }));
    agents.push(await startPolicyAgent(server));
  } catch (error) {
    for (const a of agents) a.stop();
    deleteNs(client);
    deleteNs(server);
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  const [app, peer] = agents as [PolicyAgent, PolicyAgent];

  const startProxy = async (configFile: string): Promise<PolicyProxy> => {
    const child = spawn('ip', nsCommand(client, [process.execPath, MESHCTL, 'proxy', '--config', configFile], { uid: PROXY_UID, gid: PROXY_GID }), {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, MESHCTL_LOG_LEVEL: 'info' },
    });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    const admin = async (path: string, method = 'GET') => app.call<{ status: number; body: string }>('http', { host: '127.0.0.1', port: 15000, path, method });
    const proxy: PolicyProxy = {
      child,
      exited,
      accessLog: () => out.split('\n').filter((l) => l.startsWith('{')).flatMap((l) => {
        try {
          return [JSON.parse(l)];
        } catch {
          return [];
        }
      }),
      stderr: () => err,
      admin,
      async adminJson(path) {
        const r = await admin(path);
        if (r.status !== 200) throw new Error(`admin ${path}: ${r.status} ${r.body}`);
        return JSON.parse(r.body);
      },
      async waitReady(timeoutMs = 15_000) {
        const deadline = performance.now() + timeoutMs;
        for (;;) {
          if (child.exitCode !== null) throw new Error(`proxy exited with ${child.exitCode}:\n${err}`);
          const r = await admin('/ready').catch(() => null);
          if (r?.status === 200) return;
          if (performance.now() > deadline) throw new Error(`proxy not ready within ${timeoutMs} ms:\n${err}`);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      },
      async waitFor(what, check, timeoutMs = 10_000) {
        const deadline = performance.now() + timeoutMs;
        for (;;) {
          const value = await check();
          if (value) return value;
          if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; proxy stderr:\n${err.slice(-4000)}`);
          await new Promise((resolve) => setTimeout(resolve, 50));
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
    endpoints,
    clientSources,
    peerSources,
    subnet,
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

/** Counts of each id in a dial result. */
export function tally(ids: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const id of ids) out[id] = (out[id] ?? 0) + 1;
  return out;
}
