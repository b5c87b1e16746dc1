// Processes of the bench: starting them inside a namespace (optionally as another user, pinned, with a raised fd
// limit), running clients to completion with a hard time bound, and reading CPU time and RSS of process trees.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** How a bench process is launched. Every wrapper execs, so the spawned pid is the program's own pid. */
export interface LaunchOptions {
  /** Network namespace to run in (`ip netns exec`). */
  readonly ns?: string;
  /** Drop to this uid/gid (setpriv) after entering the namespace. */
  readonly user?: { readonly uid: number; readonly gid: number };
  /** RLIMIT_NOFILE (soft and hard) for the process. */
  readonly nofile?: number;
  /** CPU list for taskset (`0`, `1`, `0-1`); unpinned when absent. */
  readonly cpus?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

export function launchArgv(argv: readonly string[], options: LaunchOptions): string[] {
  const out: string[] = [];
  if (options.ns) out.push('ip', 'netns', 'exec', options.ns);
  if (options.nofile) out.push('prlimit', `--nofile=${options.nofile}:${options.nofile}`);
  if (options.cpus) out.push('taskset', '-c', options.cpus);
  // Every process the bench starts dies with the bench (the parent-death signal survives the execs above): a bench
  // killed with SIGKILL, or by a timeout, otherwise left its proxies and servers running with their namespaces gone.
  out.push('setpriv', '--pdeathsig', 'SIGKILL');
  if (options.user) out.push(`--reuid=${options.user.uid}`, `--regid=${options.user.gid}`, '--clear-groups');
  out.push(...argv);
  return out;
}

/** A long-running process (server, proxy) with its output kept for error messages. */
export interface Proc {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Last 64 KiB of stdout and stderr. */
  output(): string;
  /** Resolves with the exit code (or the signal name) once the process has exited. */
  readonly exited: Promise<number | string>;
  /** Whether the process is still running. */
  alive(): boolean;
}

const OUTPUT_KEEP = 64 * 1024;

export function startProc(
  name: string,
  argv: readonly string[],
  options: LaunchOptions & { stdin?: 'pipe' | 'ignore' } = {},
): Proc {
  const full = launchArgv(argv, options);
  const child = spawn(full[0]!, full.slice(1), {
    stdio: [options.stdin ?? 'ignore', 'pipe', 'pipe'],
    env: options.env ?? process.env,
    cwd: options.cwd,
  });
  if (child.pid === undefined) throw new Error(`${name}: could not spawn ${full.join(' ')}`);
  let buffer = '';
  const keep = (chunk: Buffer) => {
    buffer += chunk.toString('utf8');
    if (buffer.length > OUTPUT_KEEP * 2) buffer = buffer.slice(-OUTPUT_KEEP);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let running = true;
  const exited = new Promise<number | string>((resolve) => {
    child.on('exit', (code, signal) => {
      running = false;
      resolve(code ?? signal ?? 'unknown');
    });
    child.on('error', (error) => {
      running = false;
      buffer += `\nspawn error: ${error.message}`;
      resolve('spawn-error');
    });
  });
  return { name, pid: child.pid, child, output: () => buffer.slice(-OUTPUT_KEEP), exited, alive: () => running };
}

/** Sends SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
export async function stopProc(proc: Proc, graceMs = 3000): Promise<void> {
  if (!proc.alive()) return;
  for (const pid of descendants(proc.pid).reverse()) signal(pid, 'SIGTERM');
  signal(proc.pid, 'SIGTERM');
  const timer = setTimeout(() => {
    for (const pid of [proc.pid, ...descendants(proc.pid)]) signal(pid, 'SIGKILL');
  }, graceMs);
  await proc.exited;
  clearTimeout(timer);
  // Children that outlived their parent (cluster workers, forked servers) are killed by pid.
  for (const pid of descendants(proc.pid)) signal(pid, 'SIGKILL');
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

export interface Completed {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number | string;
  /** CPU seconds (user + system) the program used, read from its wrapper shell's cutime/cstime. */
  readonly cpuSeconds: number;
  readonly wallSeconds: number;
}

const CLK_TCK = 100; // USER_HZ; fixed at 100 on every Linux ABI Node supports.

/**
 * Runs a client to completion with a hard bound (`timeoutMs`, then SIGKILL) and returns its output and the CPU
 * time it used. A shell wraps the program and prints its own /proc stat after the wait, whose cutime/cstime are
 * exactly the program's CPU time. Rejects on timeout or a non-zero exit, with the output in the message.
 */
export async function runClient(
  name: string,
  argv: readonly string[],
  options: LaunchOptions,
  timeoutMs: number,
): Promise<Completed> {
  const wrapped = ['sh', '-c', '"$@"; rc=$?; echo "MB_STAT $(cat /proc/$$/stat)" >&2; exit $rc', 'sh', ...argv];
  const full = launchArgv(wrapped, options);
  const started = process.hrtime.bigint();
  const child = spawn(full[0]!, full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    for (const pid of [...descendants(child.pid ?? -1), child.pid ?? -1]) signal(pid, 'SIGKILL');
  }, timeoutMs);
  const code = await new Promise<number | string>((resolve) => {
    child.on('exit', (c, s) => resolve(c ?? s ?? 'unknown'));
    child.on('error', () => resolve('spawn-error'));
  });
  clearTimeout(timer);
  const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  const statLine = stderr.split('\n').find((l) => l.startsWith('MB_STAT '));
  stderr = stderr
    .split('\n')
    .filter((l) => !l.startsWith('MB_STAT '))
    .join('\n');
  if (timedOut)
    throw new Error(
      `${name} did not finish within ${timeoutMs} ms (killed): ${full.join(' ')}\n${stderr.slice(-2000)}`,
    );
  if (code !== 0)
    throw new Error(`${name} exited with ${code}: ${full.join(' ')}\n${stderr.slice(-2000)}${stdout.slice(-1000)}`);
  let cpuSeconds = Number.NaN;
  if (statLine) {
    const fields = statFields(statLine.slice('MB_STAT '.length));
    cpuSeconds = (Number(fields[13]) + Number(fields[14])) / CLK_TCK; // cutime, cstime
  }
  return { stdout, stderr, code, cpuSeconds, wallSeconds };
}

/** Fields of a /proc/PID/stat line, 0-based after the pid (field 0 = state), robust to spaces in comm. */
function statFields(line: string): string[] {
  const close = line.lastIndexOf(')');
  return line.slice(close + 2).split(' ');
}

/** All descendants of `pid` (children first level first), from /proc. */
export function descendants(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const fields = statFields(readFileSync(`/proc/${entry}/stat`, 'utf8'));
      parentOf.set(Number(entry), Number(fields[1]));
    } catch {
      // exited meanwhile
    }
  }
  const out: number[] = [];
  let frontier = [pid];
  while (frontier.length > 0) {
    const next: number[] = [];
    for (const [child, parent] of parentOf) if (frontier.includes(parent)) next.push(child);
    out.push(...next);
    frontier = next;
  }
  return out;
}

export interface TreeUsage {
  /** user + system CPU seconds of the processes alive now (all their threads). */
  readonly cpuSeconds: number;
  /** Sum of VmRSS, bytes (each process's RSS counts all its threads). */
  readonly rssBytes: number;
  readonly pids: readonly number[];
  /** Threads of all those processes (`Threads:` in /proc/PID/status, summed). */
  readonly threads: number;
}

/** CPU time and RSS of `pid` and its descendants. */
export function treeUsage(pid: number): TreeUsage {
  const pids = [pid, ...descendants(pid)];
  let ticks = 0;
  let rss = 0;
  let threads = 0;
  const alive: number[] = [];
  for (const p of pids) {
    try {
      const fields = statFields(readFileSync(`/proc/${p}/stat`, 'utf8'));
      const status = readFileSync(`/proc/${p}/status`, 'utf8');
      ticks += Number(fields[11]) + Number(fields[12]); // utime, stime
      const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
      rss += m ? Number(m[1]) * 1024 : 0;
      threads += Number(/^Threads:\s+(\d+)/m.exec(status)?.[1] ?? 1);
      alive.push(p);
    } catch {
      // exited meanwhile
    }
  }
  return { cpuSeconds: ticks / CLK_TCK, rssBytes: rss, pids: alive, threads };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
