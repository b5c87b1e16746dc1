// The one injected interface through which meshctl touches netfilter: iptables-save/-restore for either xtables
// backend, nft, and the few read-only helpers (ip, sysctl files) the transaction and doctor need. Backed by execa;
// with a namespace every command runs as `ip netns exec NAME …`, so the host's own rules are never involved.
import { assertNetnsExists } from '../../values/netns.js';
import { accessSync, constants } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { delimiter, join } from 'node:path';
import { execa, ExecaError } from 'execa';
import type { Family } from '../../values/ip.js';
import type { Table } from '../../capture/model.js';
import type { Backend } from '../../config/types.js';
import { MeshctlError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { silentLogger } from '../../log.js';

export type XtablesBackend = Exclude<Backend, 'nftables'>;
/** `test`: parse and check only; `noflush`: apply on top of what is there; `replace`: replace each table given. */
export type RestoreMode = 'test' | 'noflush' | 'replace';

export interface ExecResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly exitCode: number;
}

export interface NetfilterRunner {
  /** The namespace every command runs in, or null for the current one. */
  readonly netns: string | null;
  /** `iptables-save -t TABLE` (or the whole family when table is omitted) through the backend's own binary. */
  save(backend: XtablesBackend, family: Family, table?: Table): Promise<string>;
  /** `iptables-restore --wait` in the given mode with `text` on stdin. Throws RESTORE_FAILED. */
  restore(backend: XtablesBackend, family: Family, text: string, options: { mode: RestoreMode }): Promise<void>;
  /** `nft -f -` (or `nft -c -f -` with check). Throws RESTORE_FAILED. */
  nft(script: string, options: { check: boolean }): Promise<void>;
  /** `nft list ruleset`. */
  list(): Promise<string>;
  /**
   * Any other command in the namespace, reads and changes alike: `ip rule|route|addr` show and add/del (routes.ts),
   * `nft -f -` deleting empty leftovers (nft-tidy.ts), `cat` of a /proc/sys file. Never throws on exit status: the
   * caller checks `exitCode` and names what it was doing.
   */
  exec(command: string, args: readonly string[], options?: { input?: string }): Promise<ExecResult>;
}

export interface RunnerOptions {
  readonly netns?: string | null;
  /** Environment for every command (tests put fault-injecting wrappers first on PATH). Defaults to process.env. */
  readonly env?: NodeJS.ProcessEnv;
  readonly log?: Logger;
}

/** The binaries of one xtables backend; the suffixed names exist on Debian, Ubuntu, Fedora, RHEL and Alpine. */
export function xtablesBinary(backend: XtablesBackend, family: Family, tool: 'save' | 'restore'): string {
  const base = family === 'ipv4' ? 'iptables' : 'ip6tables';
  return `${base}-${backend === 'iptables-legacy' ? 'legacy' : 'nft'}-${tool}`;
}

function commandLine(command: string, args: readonly string[]): string {
  return [command, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`)).join(' ');
}

function firstLines(text: string, max: number): string[] {
  const lines = text
    .trim()
    .split('\n')
    .filter((l) => l.length > 0);
  return lines.length > max ? [...lines.slice(0, max), `… ${lines.length - max} more lines`] : lines;
}

/**
 * Retrying transient conflicts with other netfilter writers (Docker, kube-proxy, fail2ban …): the xtables lock held
 * past --wait, an nftables generation change (EBUSY / ERESTART) and EAGAIN. Each is a refused atomic update (nothing
 * changed), so the same command is run again after a growing pause, at most `attempts` times in all.
 */
export const TRANSIENT_RETRY = { attempts: 8, firstDelayMs: 25, maxDelayMs: 800 } as const;

/** stderr of a command that another writer's concurrent update made fail; running it again may succeed. */
export const TRANSIENT_STDERR =
  /Another app is currently holding the xtables lock|Resource temporarily unavailable|Device or resource busy|Interrupted system call|\bEAGAIN\b|\bEBUSY\b|\bERESTART\b|generation ID|changed by another/i;

/** The pause before retry number `retry` (1-based): doubling from firstDelayMs, capped, with jitter. */
export function transientDelayMs(
  retry: number,
  policy: { firstDelayMs: number; maxDelayMs: number } = TRANSIENT_RETRY,
): number {
  const base = Math.min(policy.maxDelayMs, policy.firstDelayMs * 2 ** (retry - 1));
  return Math.round(base / 2 + Math.random() * (base / 2));
}

/** What `run` throws when a command fails for good: BACKEND_UNAVAILABLE when the binary is missing, else `failCode`. */
function commandFailure(
  error: ExecaError,
  c: {
    command: string;
    file: string;
    argv: readonly string[];
    netns: string | null;
    failCode: 'RESTORE_FAILED' | 'COMMAND_FAILED';
    what: string;
    attempt: number;
  },
): MeshctlError {
  const { command, file, argv, netns, failCode, what, attempt } = c;
  const stderr = typeof error.stderr === 'string' ? error.stderr : '';
  // The binary itself is missing: execa could not spawn it, or `ip netns exec` could not exec it.
  const missing = error.code === 'ENOENT' || /^exec of ".*" failed: No such file or directory/m.test(stderr);
  const details = [
    `command: ${commandLine(file, argv)}`,
    ...firstLines(stderr, 12).map((l, i) => `${i === 0 ? 'stderr:  ' : '         '}${l}`),
  ];
  if (missing) {
    return new MeshctlError(
      'BACKEND_UNAVAILABLE',
      `${command} is not installed${netns ? ` (looked up on PATH for namespace ${netns})` : ''}, so meshctl cannot ${what}`,
      `install it (Debian/Ubuntu: apt-get install ${command.startsWith('nft') ? 'nftables' : 'iptables'}) or choose another backend with --backend`,
      { cause: error, details },
    );
  }
  return new MeshctlError(
    failCode,
    `${command} failed while meshctl tried to ${what} (${error.exitCode === undefined ? error.shortMessage : `exit ${error.exitCode}`})`,
    failCode === 'RESTORE_FAILED'
      ? 'run `meshctl install --dry-run` and check the line named in stderr'
      : 'check the stderr shown above; `meshctl doctor` lists missing privileges and kernel features',
    {
      cause: error,
      details: attempt > 1 ? [...details, `attempts: ${attempt} (transient conflicts retried)`] : details,
    },
  );
}

/** `run(command, args, input, failCode, what)`: runs it (in `netns`), retrying transient conflicts with other writers. */
function commandRunner(
  netns: string | null,
  env: NodeJS.ProcessEnv,
  log: Logger,
  wrap: (command: string, args: readonly string[]) => [string, string[]],
) {
  return async function run(
    command: string,
    args: readonly string[],
    input: string | undefined,
    failCode: 'RESTORE_FAILED' | 'COMMAND_FAILED',
    what: string,
  ): Promise<string> {
    const [file, argv] = wrap(command, args);
    const started = Date.now();
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await execa(file, argv, { input: input ?? '', env, extendEnv: false, stripFinalNewline: false });
        log.debug({ command: commandLine(command, args), ms: Date.now() - started, attempt }, 'ran');
        return result.stdout;
      } catch (error) {
        if (!(error instanceof ExecaError)) throw error;
        const stderr = typeof error.stderr === 'string' ? error.stderr : '';
        if (attempt < TRANSIENT_RETRY.attempts && error.exitCode !== undefined && TRANSIENT_STDERR.test(stderr)) {
          const pause = transientDelayMs(attempt);
          log.warn(
            { command: commandLine(command, args), attempt, pauseMs: pause, stderr: stderr.trim() },
            'transient conflict with another netfilter writer; retrying',
          );
          await sleep(pause);
          continue;
        }
        log.debug({ command: commandLine(command, args), exitCode: error.exitCode, stderr }, 'command failed');
        throw commandFailure(error, { command, file, argv, netns, failCode, what, attempt });
      }
    }
  };
}

/** Creates the execa-backed runner. Throws NETNS_NOT_FOUND when `netns` is given and does not exist. */
export function createRunner(options: RunnerOptions = {}): NetfilterRunner {
  const netns = options.netns ?? null;
  if (netns !== null) assertNetnsExists(netns);
  const env = options.env ?? process.env;
  const log = (options.log ?? silentLogger).child({ component: 'runner', netns });

  const wrap = (command: string, args: readonly string[]): [string, string[]] =>
    netns === null ? [command, [...args]] : ['ip', ['netns', 'exec', netns, command, ...args]];

  const run = commandRunner(netns, env, log, wrap);

  return {
    netns,
    async save(backend, family, table) {
      const bin = xtablesBinary(backend, family, 'save');
      return run(
        bin,
        table ? ['-t', table] : [],
        undefined,
        'COMMAND_FAILED',
        `read the ${family} ${table ?? ''} rules`.replace('  ', ' '),
      );
    },
    async restore(backend, family, text, { mode }) {
      const bin = xtablesBinary(backend, family, 'restore');
      const args = ['--wait'];
      if (mode === 'test') args.push('--test', '--noflush');
      if (mode === 'noflush') args.push('--noflush');
      const verb = mode === 'test' ? 'check' : mode === 'noflush' ? 'apply' : 'restore';
      await run(bin, args, text, 'RESTORE_FAILED', `${verb} the ${family} rules`);
    },
    async nft(script, { check }) {
      await run(
        'nft',
        check ? ['-c', '-f', '-'] : ['-f', '-'],
        script,
        'RESTORE_FAILED',
        check ? 'check the nftables script' : 'apply the nftables script',
      );
    },
    async list() {
      return run('nft', ['list', 'ruleset'], undefined, 'COMMAND_FAILED', 'list the nftables ruleset');
    },
    async exec(command, args, execOptions = {}) {
      const [file, argv] = wrap(command, args);
      const result = await execa(file, argv, {
        input: execOptions.input ?? '',
        env,
        extendEnv: false,
        reject: false,
        stripFinalNewline: false,
      });
      const text = (v: unknown): string => (typeof v === 'string' ? v : '');
      return {
        stdout: text(result.stdout),
        stderr: text(result.stderr),
        exitCode: result.exitCode ?? (result.failed ? 127 : 0),
      };
    },
  };
}

/** Whether `name` is an executable file on PATH (the namespace shares the filesystem, so this holds inside it too). */
export function findOnPath(name: string, env: NodeJS.ProcessEnv = process.env): string | null {
  for (const dir of (env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}
