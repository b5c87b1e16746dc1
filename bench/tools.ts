// The bench's external tools: the C load generator (compiled here with the machine's cc), the peer programs it
// drives (haproxy, iperf3, wrk, nginx) and the versions reported next to the results.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
/** The repository root; bench/ may run from source (vitest) or from its compiled copy under dist-bench/bench. */
export const REPO_ROOT = findRepoRoot(BENCH_DIR);

function findRepoRoot(start: string): string {
  let dir = start;
  for (let i = 0; i < 5; i++) {
    try {
      if (statSync(join(dir, 'package.json')).isFile() && statSync(join(dir, 'bench', 'tcpbench.c')).isFile())
        return dir;
    } catch {
      // keep looking upwards
    }
    dir = dirname(dir);
  }
  throw new Error(`cannot find the repository root (package.json next to bench/tcpbench.c) above ${start}`);
}

export const REQUIRED_COMMANDS = [
  'ip',
  'iptables-restore',
  'ss',
  'prlimit',
  'setpriv',
  'taskset',
  'cc',
  'haproxy',
  'iperf3',
  'wrk',
  'nginx',
] as const;

export function missingCommands(): string[] {
  return REQUIRED_COMMANDS.filter((c) => {
    try {
      execFileSync('sh', ['-c', `command -v ${c}`], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
}

/** Compiles bench/tcpbench.c into build/bench/ unless the binary is newer than the source; returns its path. */
export function buildTcpbench(): string {
  const source = join(REPO_ROOT, 'bench', 'tcpbench.c');
  const outDir = join(REPO_ROOT, 'build', 'bench');
  const binary = join(outDir, 'tcpbench');
  mkdirSync(outDir, { recursive: true });
  let fresh = false;
  try {
    fresh = statSync(binary).mtimeMs > statSync(source).mtimeMs;
  } catch {
    fresh = false;
  }
  if (!fresh) {
    execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', binary, source], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }
  return binary;
}

/** First line a version command prints, on stdout or stderr (nginx -v and wrk -v use stderr; wrk -v exits 1). */
function firstLine(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n')[0]!.trim();
}

export interface MachineInfo {
  readonly date: string;
  readonly kernel: string;
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly node: string;
  readonly versions: Readonly<Record<string, string>>;
  readonly commit: string;
}

export function machineInfo(): MachineInfo {
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['-C', REPO_ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', REPO_ROOT, 'status', '--porcelain', '--', 'src'], {
      encoding: 'utf8',
    }).trim();
    if (dirty) commit += '+uncommitted src changes';
  } catch {
    // not a git checkout
  }
  let cpuModel = cpus()[0]?.model ?? 'unknown';
  try {
    cpuModel = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpuModel;
  } catch {
    // keep os.cpus()
  }
  return {
    date: new Date().toISOString(),
    kernel: firstLine('uname', ['-r']),
    cpu: cpuModel,
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    versions: {
      haproxy: firstLine('haproxy', ['-v']).replace(/ - https.*/, ''),
      iperf3: firstLine('iperf3', ['--version']),
      wrk: firstLine('wrk', ['-v']).replace(/ Copyright.*/, ''),
      nginx: firstLine('nginx', ['-v']).replace('nginx version: ', ''),
      iptables: firstLine('iptables', ['-V']),
      cc: firstLine('cc', ['--version']),
    },
    commit,
  };
}
