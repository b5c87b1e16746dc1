// The processes of the netns labs (proxy-lab.ts, policy-lab.ts): agents driven over IPC (an agent script run inside
// a namespace, optionally as another uid) and the real proxy (`bin/meshctl proxy`) with its collected output.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deleteNs } from './netns.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MESHCTL = join(ROOT, 'bin', 'meshctl');

export interface NsUser {
  uid: number;
  gid: number;
}

/**
 * The fd limit the lab asks for, as the proxy unit's LimitNOFILE= would give: room for both legs of the 10,000
 * idle connections of the stress test. Raising the hard limit needs CAP_SYS_RESOURCE; without it (a container) the
 * hard limit stays, and the soft one is raised to it.
 */
const LAB_NOFILE = 65536;
const RAISE_FD_LIMIT = `h=$(ulimit -Hn); if [ "$h" != unlimited ] && [ "$h" -lt ${LAB_NOFILE} ]; then ulimit -Hn ${LAB_NOFILE} 2>/dev/null; fi; ulimit -n "$(ulimit -Hn)" && exec "$@"`;

/** Runs `argv` inside `ns` with a raised fd limit, optionally as uid/gid (setpriv drops root after ulimit). */
export function nsCommand(ns: string, argv: readonly string[], user?: NsUser): string[] {
  const drop = user ? ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups'] : [];
  return ['netns', 'exec', ns, 'sh', '-c', RAISE_FD_LIMIT, 'sh', ...drop, ...argv];
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

/** Starts the agent `script` (a .mjs built on agent-core.mjs) in `ns` (as `user` when given) and waits until it answers. */
export async function startLabAgent(script: string, ns: string, user?: NsUser): Promise<Agent> {
  const child = spawn('ip', nsCommand(ns, [process.execPath, script], user), {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
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

export function childPids(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .map((s) => Number(s.trim()))
      .filter((n) => n > 0);
  } catch {
    return [];
  }
}

/** A running `meshctl proxy`; `Line` is the shape of its JSON access-log lines. */
export interface LabProxy<Line> {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; atMs: number }>;
  accessLog(): Line[];
  stderr(): string;
  /** Waits until an access-log line matches (polling the collected stdout). */
  waitForAccess(match: (line: Line) => boolean, timeoutMs?: number): Promise<Line>;
  waitForStderr(pattern: RegExp, timeoutMs?: number): Promise<void>;
  admin(path: string, method?: string): Promise<{ status: number; body: string }>;
  adminJson<T = any>(path: string): Promise<T>;
  waitReady(timeoutMs?: number): Promise<void>;
  /** Polls `check` (an admin query, say) until it returns a truthy value, or fails after `timeoutMs`. */
  waitFor<T>(what: string, check: () => Promise<T | null | undefined | false>, timeoutMs?: number): Promise<T>;
  /** SIGKILL to the proxy and its workers (cleanup). */
  kill(): void;
}

/**
 * Spawns `meshctl proxy ARGS` in `ns` as `user` (`prefix` runs before node, e.g. systemd-socket-activate), with
 * info-level logs; the admin API (127.0.0.1:15000) is reached through `adminVia`, an agent in the same namespace.
 */
export function spawnLabProxy<Line>(
  ns: string,
  args: readonly string[],
  options: { user: NsUser; adminVia: Agent; prefix?: readonly string[] },
): LabProxy<Line> {
  const child = spawn(
    'ip',
    nsCommand(ns, [...(options.prefix ?? []), process.execPath, MESHCTL, 'proxy', ...args], options.user),
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, MESHCTL_LOG_LEVEL: 'info' },
    },
  );
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; atMs: number }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal, atMs: performance.now() })),
  );
  const parse = (): Line[] =>
    out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Line];
        } catch {
          return [];
        }
      });
  const admin = async (path: string, method = 'GET') => {
    const r = await options.adminVia.call<{ status: number; body: string }>('http', {
      host: '127.0.0.1',
      port: 15000,
      path,
      method,
    });
    return { status: r.status, body: r.body };
  };
  return {
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
        if (performance.now() > deadline)
          throw new Error(`no matching access-log line within ${timeoutMs} ms; have:\n${out}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    async waitForStderr(pattern, timeoutMs = 5000) {
      const deadline = performance.now() + timeoutMs;
      while (!pattern.test(err)) {
        if (performance.now() > deadline)
          throw new Error(`stderr did not match ${pattern} within ${timeoutMs} ms:\n${err}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
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
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async waitFor(what, check, timeoutMs = 10_000) {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const value = await check();
        if (value) return value;
        if (performance.now() > deadline)
          throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; proxy stderr:\n${err.slice(-4000)}`);
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
}

/**
 * Tears a two-namespace lab down: SIGKILL to its proxies and agents, up to 2 s for the proxies to exit, then the
 * namespaces and the lab directory go.
 */
export async function destroyLab(parts: {
  proxies: readonly LabProxy<unknown>[];
  agents: readonly Agent[];
  namespaces: readonly string[];
  dir: string;
}): Promise<void> {
  for (const p of parts.proxies) p.kill();
  for (const a of parts.agents) a.stop();
  await Promise.all(parts.proxies.map((p) => Promise.race([p.exited, new Promise((r) => setTimeout(r, 2000))])));
  for (const ns of parts.namespaces) deleteNs(ns);
  rmSync(parts.dir, { recursive: true, force: true });
}
