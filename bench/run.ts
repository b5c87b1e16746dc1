// `npm run bench`: builds the lab, measures every candidate on every workload (repetitions interleaved across
// candidates), and writes the markdown report to bench/results/<date>.md and bench/results/latest.md (raw JSON
// under bench/results/raw/). `runBench` is also what the CI smoke test calls, with the smoke profile.
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  CANDIDATES,
  NODE_RELAY_CANDIDATE,
  POLICY_CANDIDATE,
  startCandidate,
  type CandidateName,
  type RunningCandidate,
} from './candidates.js';
import { Lab, nsExists, type Pinning } from './lab.js';
import { isPairCandidate, pairPrefix, PAIR_CANDIDATES, startPairCandidate } from './pair.js';
import { renderReport } from './report.js';
import { buildTcpbench, machineInfo, missingCommands, REPO_ROOT } from './tools.js';
import { PROFILES, WORKLOADS, runWorkload, type Measurement, type Profile, type WorkloadName } from './workloads.js';

export interface BenchOptions {
  readonly profile: Profile;
  readonly candidates: readonly CandidateName[];
  readonly workloads: readonly WorkloadName[];
  /**
   * meshctl's `proxy.workers` when given (and HAProxy-TLS's threads in the two-sidecar lab); null: meshctl runs at its
   * default (one process with a relay thread per core). The single-sidecar HAProxy candidates have their own thread counts (1 and 2).
   */
  readonly workers: number | null;
  readonly pin: Pinning;
  /** Where the report goes; null = do not write files. */
  readonly outDir: string | null;
  /** Namespace prefix (mb-…) and subnet, so a smoke test and a full run never collide. */
  readonly prefix: string;
  readonly subnet: number;
  readonly accessLog: boolean;
  /** meshctl proxy with --cpu-prof into this directory. */
  readonly cpuProfDir?: string;
  /** Extra node flags for the meshctl proxy (space-separated), e.g. V8 GC flags for an experiment. */
  readonly proxyNodeArgs?: readonly string[];
  readonly progress?: (line: string) => void;
  /** Checked between workloads: an aborted run stops there and tears the lab down. */
  readonly signal?: AbortSignal;
}

export interface BenchResult {
  readonly measurements: Measurement[];
  readonly markdown: string;
  readonly files: string[];
}

export const DEFAULT_PIN: Pinning = {};

/** Runs the whole benchmark; the lab (namespaces, servers, proxies) is torn down also on failure. */
export async function runBench(options: BenchOptions): Promise<BenchResult> {
  const missing = missingCommands();
  if (missing.length > 0)
    throw new Error(
      `the bench needs ${missing.join(', ')}: apt-get install haproxy iperf3 wrk nginx util-linux iproute2 gcc (see .ci/run)`,
    );
  const say = options.progress ?? (() => {});
  const tcpbench = buildTcpbench();
  const info = machineInfo();
  const loadStart = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const workDir = mkdtempSync(join(tmpdir(), 'meshctl-bench-'));
  chmodSync(workDir, 0o755); // the proxy runs as nobody and reads its config from here
  const measurements: Measurement[] = [];
  let lab: Lab | null = null;
  let running: RunningCandidate | null = null;
  const candidateOptions = {
    workers: options.workers,
    accessLog: options.accessLog,
    cwd: workDir,
    nodeArgs: [
      ...(options.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${options.cpuProfDir}`] : []),
      ...(options.proxyNodeArgs ?? []),
    ],
  };
  try {
    lab = await Lab.create({ prefix: options.prefix, subnet: options.subnet, workDir, pin: options.pin, tcpbench });
    for (let rep = 1; rep <= options.profile.repetitions; rep++) {
      for (const candidate of options.candidates) {
        say(`rep ${rep}/${options.profile.repetitions}: starting ${candidate}`);
        running = isPairCandidate(candidate)
          ? await startPairCandidate(candidate, lab, candidateOptions)
          : await startCandidate(candidate, lab, candidateOptions);
        for (const workload of options.workloads) {
          options.signal?.throwIfAborted();
          const values = await runWorkload(workload, running.lab ?? lab, running, options.profile);
          if (values === null) continue;
          measurements.push({ workload, candidate, rep, values });
          say(
            `  ${candidate} ${workload}: ${Object.entries(values)
              .map(([k, v]) => `${k}=${Number(v.toPrecision(4))}`)
              .join(' ')}`,
          );
        }
        await running.stop();
        running = null;
      }
    }
  } finally {
    if (running) await running.stop();
    if (lab) await lab.destroy();
    rmSync(workDir, { recursive: true, force: true });
  }
  const loadEnd = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const setup = [
    `Machine load (1/5/15-min load average) at start: ${loadStart}; at end: ${loadEnd}. Other work on the machine shares its ${info.cores} cores with the lab: compare rows within one run, not across runs.`,
    `Lab: client netns (load generators, capture rules, proxy) ↔ veth ↔ server netns (C echo server, nginx 1 worker, iperf3 -s); a fresh client netns per candidate run.`,
    `Candidates: direct (no rules); HAProxy at 1 and at 2 threads (\`nbthread\`), transparent via \`server 0.0.0.0:0\`; meshctl proxy ${options.workers === null ? 'at its default settings (`proxy.workers` and `proxy.relayThreads` unset: one process with a relay thread per core; with the proxy unit environment)' : `with ${options.workers} workers (\`proxy.workers\`)`}, access log ${options.accessLog ? 'on' : 'off'}; meshctl-log: the same with its access log on (default settings, to a file in the run's scratch directory). The proxies run as nobody behind the same capture rules, installed by \`meshctl install --netns\` (default capture config, proxy.user nobody). What ran (processes, threads) is in the idle-footprint rows.`,
    `Load generators: bench/tcpbench.c (epoll, one thread; RR, paced open-loop with latency from the intended send time, connect+close with two processes of 16 connections, hold), iperf3, wrk -t1 -c32.`,
    `Lab sysctls (every lab namespace, every candidate alike; Lab.tuneForChurn): no TIME_WAIT retention (tcp_max_tw_buckets=0), tcp_tw_reuse=1, local ports 20000-64999, conntrack TIME_WAIT 5 s. The lab checks itself: on connect-32, direct must reach ≥ 2× the best proxy's rate, else the connect rows are marked CAPPED.`,
    `CPU pinning (taskset): ${
      Object.entries(options.pin)
        .map(([k, v]) => `${k} on CPU ${v}`)
        .join(', ') || 'none — the kernel schedules load generator, servers and proxy across all cores'
    }.`,
    `Proxy CPU per op/GB = the proxy's processes' utime+stime over the run ÷ operations (warm-up included) or GB moved.`,
    ...(options.candidates.some(isPairCandidate)
      ? [
          `Two-sidecar lab (${options.candidates.filter(isPairCandidate).join(', ')}): client netns (load generators, capture rules, sidecar A) ↔ veth ↔ server netns (sidecar B next to its own echo server, nginx and iperf3), both namespaces and the servers fresh per candidate run; CPU per op/GB is A's and B's processes summed. See the two-sidecar section below.`,
        ]
      : []),
  ];
  const markdown = renderReport({
    info,
    profile: options.profile,
    candidates: options.candidates,
    measurements,
    setup,
    notes: readNotes(),
  });
  const files: string[] = [];
  if (options.outDir) {
    mkdirSync(join(options.outDir, 'raw'), { recursive: true });
    const stamp = info.date.slice(0, 10);
    for (const name of [`${stamp}.md`, 'latest.md']) {
      writeFileSync(join(options.outDir, name), markdown);
      files.push(join(options.outDir, name));
    }
    const raw = join(options.outDir, 'raw', `${info.date.replace(/[:.]/g, '-')}.json`);
    writeFileSync(
      raw,
      `${JSON.stringify({ info, options: { ...options, progress: undefined }, measurements }, null, 2)}\n`,
    );
    files.push(raw);
  }
  return { measurements, markdown, files };
}

/** bench/notes.md: the profiling analysis (where meshctl's time goes, what would close the gaps), in every report. */
function readNotes(): string[] {
  try {
    return readFileSync(join(REPO_ROOT, 'bench', 'notes.md'), 'utf8')
      .trimEnd()
      .split('\n');
  } catch {
    return [];
  }
}

function parseArgs(argv: readonly string[]): BenchOptions {
  const get = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const profileName = get('--profile') ?? 'full';
  if (!(profileName in PROFILES))
    throw new Error(`--profile ${profileName}: expected one of ${Object.keys(PROFILES).join(', ')}`);
  const base: Profile = PROFILES[profileName as keyof typeof PROFILES];
  const num = (flag: string, fallback: number) => {
    const v = get(flag);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`${flag} ${v}: expected a positive number`);
    return n;
  };
  const list = <T extends string>(flag: string, all: readonly T[], byDefault: readonly T[] = all): T[] => {
    const v = get(flag);
    if (v === undefined) return [...byDefault];
    const items = v.split(',');
    const bad = items.filter((i) => !(all as readonly string[]).includes(i));
    if (bad.length > 0) throw new Error(`${flag}: unknown ${bad.join(', ')}; expected some of ${all.join(', ')}`);
    return items as T[];
  };
  const pin: Record<string, string> = {};
  for (const role of ['loadgen', 'servers', 'proxy'] as const) {
    const v = get(`--pin-${role}`);
    if (v !== undefined) pin[role] = v;
  }
  const profile: Profile = {
    secs: num('--secs', base.secs),
    warmup: get('--warmup') === '0' ? 0 : num('--warmup', base.warmup),
    repetitions: Math.round(num('--reps', base.repetitions)),
    idleConns: Math.round(num('--idle-conns', base.idleConns)),
    pacedRate: num('--paced-rate', base.pacedRate),
    idleSettleSecs: num('--idle-settle', base.idleSettleSecs),
  };
  const out = get('--out');
  return {
    profile,
    candidates: list(
      '--candidates',
      [...CANDIDATES, POLICY_CANDIDATE, NODE_RELAY_CANDIDATE, ...PAIR_CANDIDATES],
      [...CANDIDATES, POLICY_CANDIDATE],
    ),
    workloads: list('--workloads', WORKLOADS),
    workers: get('--workers') === undefined ? null : Math.round(num('--workers', 2)),
    pin: Object.keys(pin).length > 0 ? pin : DEFAULT_PIN,
    outDir: out === '-' ? null : (out ?? join(REPO_ROOT, 'bench', 'results')),
    prefix: get('--prefix') ?? 'mb-b',
    subnet: Math.round(num('--subnet', 77)),
    accessLog: argv.includes('--access-log'),
    ...(get('--cpu-prof') ? { cpuProfDir: get('--cpu-prof')! } : {}),
    ...(get('--proxy-node-args') ? { proxyNodeArgs: get('--proxy-node-args')!.split(' ').filter(Boolean) } : {}),
  };
}

const USAGE = `usage: npm run bench -- [--profile full|smoke] [--reps N] [--secs S] [--warmup S] [--idle-conns N] [--idle-settle S] [--paced-rate R]
  [--candidates direct,haproxy-1t,haproxy-2t,meshctl,meshctl-log,meshctl-policy100[,meshctl-node][,meshctl-mtls,meshctl-pair,haproxy-tls]]
  [--workloads ${WORKLOADS.join(',')}] [--workers N]
  [--pin-loadgen CPUS] [--pin-servers CPUS] [--pin-proxy CPUS] [--access-log] [--cpu-prof DIR] [--proxy-node-args "FLAGS"] [--out DIR|-]
  [--prefix NAME] [--subnet N]
Runs as root (network namespaces NAME-cli, NAME-srv, and NAME + "p-cli"/"p-srv" for the two-sidecar candidates;
NAME defaults to mb-b, addresses 10.N.0.1/2 with N = 77). Writes bench/results/<date>.md and latest.md.`;

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (process.getuid?.() !== 0)
    throw new Error('the bench needs root: it creates network namespaces and installs capture rules inside them');
  const options = parseArgs(argv);
  const pair = pairPrefix(options.prefix);
  if ([`${options.prefix}-cli`, `${options.prefix}-srv`, `${pair}-cli`, `${pair}-srv`].some(nsExists))
    process.stderr.write(`bench: removing namespaces left by an earlier run (${options.prefix}-*, ${pair}-*)\n`);
  const started = Date.now();
  // Ctrl-C / SIGTERM: stop after the current workload; runBench's finally tears the lab down.
  const abort = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      process.stderr.write(`bench: ${sig}, stopping after the current workload and cleaning up…\n`);
      abort.abort(new Error(`interrupted by ${sig}`));
    });
  }
  const result = await runBench({
    ...options,
    signal: abort.signal,
    progress: (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(result.markdown);
  process.stderr.write(
    `bench: done in ${Math.round((Date.now() - started) / 1000)} s; wrote ${result.files.join(', ') || 'nothing'}\n`,
  );
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((error: unknown) => {
    process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  });
}
