// A Debian bookworm container booted with systemd as PID 1 (systemd-nspawn), in a network namespace we own, for
// system tests of the units and `meshctl service` (LABS.md §1). The rootfs comes from scripts/nspawn-rootfs.sh
// (cached tarball, unpacked fresh per test file); node and the built meshctl tree are the host's, bind-mounted
// (same libc). Commands run inside through `nsenter -t <container PID 1>`: there is no machined on the host.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deleteNs, sh } from './netns.js';
import { waitUntil } from './wait.js';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const PATH_INSIDE = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Path of the cached rootfs tarball, building it on first use (debootstrap, about 40 s). */
export function rootfsTarball(): string {
  const out = execFileSync(join(REPO_ROOT, 'scripts', 'nspawn-rootfs.sh'), {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: 600_000,
  });
  return out.trim().split('\n').pop()!;
}

export interface ExecResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly status: number | null;
}

export interface LabTopology {
  /** The container's network namespace (/run/netns/<name>). */
  readonly ctNs: string;
  /** The client namespace, joined to the container by a veth pair. */
  readonly clientNs: string;
  readonly client4: string;
  readonly ct4: string;
  readonly client6: string;
  readonly ct6: string;
}

/** Container netns + client netns joined by veth (10.<subnet>.0.1 client, .2 container; fd00:<subnet>::1/::2). */
export function createLabTopology(prefix: string, subnet: number): LabTopology {
  const t: LabTopology = {
    ctNs: `${prefix}-ct`,
    clientNs: `${prefix}-cl`,
    client4: `10.${subnet}.0.1`,
    ct4: `10.${subnet}.0.2`,
    client6: `fd00:${subnet}::1`,
    ct6: `fd00:${subnet}::2`,
  };
  resetLabTopology(t, prefix);
  return t;
}

/**
 * (Re)creates both namespaces from scratch. Between two boots of the container this is what a reboot does to
 * the kernel's state: no rules, no conntrack entries; the addresses stay the same.
 */
export function resetLabTopology(t: LabTopology, prefix: string): void {
  for (const ns of [t.ctNs, t.clientNs]) {
    deleteNs(ns);
    sh('ip', ['netns', 'add', ns]);
    // With --network-namespace-path nspawn leaves lo down; OUTPUT REDIRECT to 127.0.0.1 needs it up.
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  }
  sh('ip', [
    'link',
    'add',
    `${prefix}-c0`,
    'netns',
    t.clientNs,
    'type',
    'veth',
    'peer',
    'name',
    `${prefix}-c1`,
    'netns',
    t.ctNs,
  ]);
  for (const [ns, dev, v4, v6] of [
    [t.clientNs, `${prefix}-c0`, t.client4, t.client6],
    [t.ctNs, `${prefix}-c1`, t.ct4, t.ct6],
  ] as const) {
    sh('ip', ['-n', ns, 'addr', 'add', `${v4}/24`, 'dev', dev]);
    sh('ip', ['-n', ns, '-6', 'addr', 'add', `${v6}/64`, 'dev', dev, 'nodad']);
    sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
  }
}

export function deleteLabTopology(t: LabTopology): void {
  deleteNs(t.clientNs);
  deleteNs(t.ctNs);
}

export interface ContainerOptions {
  readonly name: string;
  /** Unpacked rootfs directory. */
  readonly root: string;
  readonly netns: string;
  /** host path → container path, read-only. */
  readonly binds: Readonly<Record<string, string>>;
}

/** One boot of the container; `boot()` again after `poweroff()` is a reboot of the same rootfs. */
export class Container {
  private proc: ChildProcess | null = null;
  private exit: Promise<number | null> | null = null;
  leader = 0;
  lastPoweroffMs = 0;
  readonly consoleLog: string;

  constructor(private readonly options: ContainerOptions) {
    this.consoleLog = `${options.root}.console.log`;
  }

  async boot(timeoutMs = 120_000): Promise<void> {
    const args = [
      '-q',
      '-D',
      this.options.root,
      '-M',
      this.options.name,
      '--register=no',
      '--keep-unit',
      '-b',
      // nspawn keeps CAP_NET_ADMIN only with --private-network; the container owns its netns, so give it back.
      '--capability=CAP_NET_ADMIN',
      `--network-namespace-path=/run/netns/${this.options.netns}`,
      ...Object.entries(this.options.binds).map(([host, inside]) => `--bind-ro=${host}:${inside}`),
    ];
    const fd = openSync(this.consoleLog, 'a');
    const proc = spawn('systemd-nspawn', args, { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    this.proc = proc;
    this.exit = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
    const deadline = Date.now() + timeoutMs;
    // The container's PID 1 is the child of nspawn that runs systemd (nspawn forks short-lived helpers first).
    while (this.leader === 0) {
      if (proc.exitCode !== null) throw new Error(`systemd-nspawn exited with ${proc.exitCode}: ${this.console()}`);
      try {
        const children = execFileSync('pgrep', ['-P', String(proc.pid)], { encoding: 'utf8' })
          .trim()
          .split('\n')
          .map(Number);
        this.leader =
          children.find((pid) => {
            try {
              return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'systemd';
            } catch {
              return false;
            }
          }) ?? 0;
      } catch {
        // no child yet
      }
      if (this.leader === 0) await sleep(50);
      if (Date.now() > deadline) throw new Error(`container ${this.options.name} did not start: ${this.console()}`);
    }
    for (;;) {
      const state = this.exec('systemctl', ['is-system-running']).stdout.trim();
      if (state === 'running' || state === 'degraded') return;
      if (Date.now() > deadline) {
        const failed = this.exec('systemctl', ['--failed', '--no-pager']);
        throw new Error(
          `container ${this.options.name} stuck in state "${state}": ${failed.stdout}${failed.stderr}\nconsole:\n${this.console()}`,
        );
      }
      await sleep(100);
    }
  }

  console(): string {
    try {
      return readFileSync(this.consoleLog, 'utf8').slice(-4000);
    } catch {
      return '';
    }
  }

  private nsenterArgs(cmd: string, args: readonly string[]): string[] {
    if (this.leader === 0) throw new Error('container is not running');
    return [
      '-t',
      String(this.leader),
      '-m',
      '-u',
      '-i',
      '-n',
      '-p',
      '-C',
      '--',
      'env',
      '-i',
      PATH_INSIDE,
      cmd,
      ...args,
    ];
  }

  /** Runs a command inside (all namespaces of PID 1, a clean environment); never throws on exit status. */
  exec(cmd: string, args: readonly string[] = [], options: { input?: string; timeoutMs?: number } = {}): ExecResult {
    try {
      const stdout = execFileSync('nsenter', this.nsenterArgs(cmd, args), {
        encoding: 'utf8',
        input: options.input ?? '',
        stdio: ['pipe', 'pipe', 'pipe'],
        timeout: options.timeoutMs ?? 120_000,
      });
      return { stdout, stderr: '', status: 0 };
    } catch (error) {
      const e = error as { stdout?: string; stderr?: string; status?: number | null };
      return { stdout: e.stdout ?? '', stderr: e.stderr ?? String(error), status: e.status ?? null };
    }
  }

  /** Like exec, but throws with stdout and stderr when the command fails. */
  run(cmd: string, args: readonly string[] = [], options: { input?: string; timeoutMs?: number } = {}): string {
    const r = this.exec(cmd, args, options);
    if (r.status !== 0)
      throw new Error(
        `in container: ${cmd} ${args.join(' ')} exited ${r.status}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`,
      );
    return r.stdout;
  }

  /** Starts a long-running command inside; the caller ends it. */
  spawn(cmd: string, args: readonly string[]): ChildProcess {
    return spawn('nsenter', this.nsenterArgs(cmd, args), { stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** Clean shutdown (systemctl poweroff: units are stopped); waits for nspawn to exit. */
  async poweroff(timeoutMs = 60_000): Promise<void> {
    if (!this.proc || this.proc.exitCode !== null) return;
    const t0 = Date.now();
    this.exec('systemctl', ['poweroff']);
    const code = await Promise.race([this.exit!, sleep(timeoutMs).then(() => 'timeout' as const)]);
    if (code === 'timeout') {
      this.kill();
      throw new Error(`container ${this.options.name} did not power off within ${timeoutMs} ms: ${this.console()}`);
    }
    this.leader = 0;
    this.lastPoweroffMs = Date.now() - t0;
  }

  /** Immediate stop (cleanup path). */
  kill(): void {
    if (this.proc && this.proc.exitCode === null) {
      try {
        this.proc.kill('SIGKILL');
      } catch {
        // gone
      }
    }
    if (this.leader) {
      try {
        process.kill(this.leader, 'SIGKILL');
      } catch {
        // gone
      }
    }
    this.leader = 0;
  }

  async waitExit(): Promise<void> {
    if (this.exit) await this.exit;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Unpacks the cached rootfs into a fresh temp dir; returns it (remove it with removeRootfs). */
export function unpackRootfs(tarball: string): string {
  const base = mkdtempSync(join(process.env.MESHCTL_TEST_TMP ?? '/var/tmp', 'ms-nspawn-'));
  const root = join(base, 'root');
  mkdirSync(root);
  execFileSync('sh', ['-c', 'zstd -dc "$1" | tar -C "$2" --numeric-owner -xf -', 'sh', tarball, root], {
    stdio: 'inherit',
    timeout: 300_000,
  });
  return root;
}

export function removeRootfs(root: string): void {
  rmSync(dirname(root), { recursive: true, force: true });
}

/** A scratch directory on the host (bind-mounted into the container at /opt/lab) with the lab's scripts. */
export function writeLabScripts(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ms-lab-'));
  chmodSync(dir, 0o755); // the container's servers run as unprivileged (dynamic) users
  writeFileSync(join(dir, 'echo-server.mjs'), ECHO_SERVER);
  writeFileSync(join(dir, 'conn-loop.mjs'), CONN_LOOP);
  return dir;
}

/**
 * TCP server: greets every connection with `peer=<address> local=<address:port>` and then echoes. The peer address
 * tells a direct connection (the client's address) from one the proxy made (127.0.0.6, the inbound passthrough
 * source), so a test can see interception without trusting meshctl's own counters.
 */
const ECHO_SERVER = `import net from 'node:net';
const [host, port] = [process.argv[2], Number(process.argv[3])];
const server = net.createServer((s) => {
  s.on('error', () => {});
  s.write('peer=' + s.remoteAddress + ' local=' + s.localAddress + ':' + s.localPort + '\\n');
  s.pipe(s);
});
server.listen({ host, port, backlog: 1024 }, () => process.stdout.write('listening ' + host + ':' + port + '\\n'));
process.on('SIGTERM', () => process.exit(0));
`;

/**
 * Connection loop: sequential connections to host:port, each sends a token and must get its greeting and the
 * token echoed within 20 s. Runs until the stop file exists (or max connections / max time); then prints one
 * JSON line {ok, refused, failed, errors, peers, slowestMs}. "progress <ok>" lines go to stdout as it runs.
 * While <stop file>.pause exists it makes no new connection (and prints "paused" once none is in flight).
 */
const CONN_LOOP = `import net from 'node:net';
import { existsSync } from 'node:fs';
const [host, port, stopFile] = [process.argv[2], Number(process.argv[3]), process.argv[4]];
const maxConnections = Number(process.argv[5] ?? 2000), maxMs = Number(process.argv[6] ?? 60000);
const started = Date.now();
const r = { ok: 0, refused: 0, failed: 0, errors: [], peers: {}, slowestMs: 0 };
function once(i) {
  return new Promise((resolve) => {
    const t0 = Date.now(); const token = 'tok' + i + '\\n'; let buf = ''; let done = false;
    const s = net.connect({ host, port });
    const finish = (kind, why) => { if (done) return; done = true; clearTimeout(timer); s.destroy();
      if (kind === 'ok') { r.ok++; const ms = Date.now() - t0; if (ms > r.slowestMs) r.slowestMs = ms; }
      else { r[kind]++; if (r.errors.length < 10) r.errors.push(why); } resolve(); };
    const timer = setTimeout(() => finish('failed', 'timeout after 20s, got ' + JSON.stringify(buf)), 20000);
    s.on('connect', () => s.write(token));
    s.on('data', (d) => { buf += d; const lines = buf.split('\\n');
      if (lines.length >= 3 && lines[1] + '\\n' === token) { const peer = lines[0].split(' ')[0]; r.peers[peer] = (r.peers[peer] ?? 0) + 1; finish('ok'); } });
    s.on('error', (e) => finish(e.code === 'ECONNREFUSED' ? 'refused' : 'failed', e.code ?? e.message));
    s.on('close', () => finish('failed', 'closed early, got ' + JSON.stringify(buf)));
  });
}
const pauseFile = stopFile + '.pause';
for (let i = 0; i < maxConnections && Date.now() - started < maxMs && !existsSync(stopFile); i++) {
  if (existsSync(pauseFile)) {
    process.stdout.write('paused\\n');
    while (existsSync(pauseFile) && Date.now() - started < maxMs) await new Promise((r) => setTimeout(r, 10));
  }
  await once(i);
  if (i % 10 === 0) process.stdout.write('progress ' + r.ok + '\\n');
}
process.stdout.write(JSON.stringify(r) + '\\n');
`;

/**
 * Runs the connection loop while `during` runs (and 1 s more), then stops it; resolves with its result. `during`
 * gets `quiesce()`, which pauses the loop between two connections and resolves once none is in flight, and
 * `resume()`, so an event (a kill -9) can be placed where no connection is open and every later one must succeed.
 */
export async function loopDuring(
  start: (stopFile: string) => ChildProcess,
  stopFile: string,
  during: (control: { quiesce(): Promise<void>; resume(): void }) => Promise<void>,
): Promise<LoopResult> {
  rmSync(stopFile, { force: true });
  rmSync(`${stopFile}.pause`, { force: true });
  const child = start(stopFile);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 20_000;
  while (!/progress [1-9]/.test(out)) {
    if (child.exitCode !== null || Date.now() > deadline)
      throw new Error(`connection loop did not get going: ${out} ${err}`);
    await sleep(50);
  }
  const control = {
    async quiesce() {
      const seen = (out.match(/paused/g) ?? []).length;
      writeFileSync(`${stopFile}.pause`, 'pause');
      const until = Date.now() + 30_000;
      while ((out.match(/paused/g) ?? []).length === seen) {
        if (Date.now() > until) throw new Error(`connection loop did not pause: ${out.slice(-500)}`);
        await sleep(10);
      }
    },
    resume() {
      rmSync(`${stopFile}.pause`, { force: true });
    },
  };
  const progressLines = () => (out.match(/progress/g) ?? []).length;
  try {
    await during(control);
    control.resume();
    // Connections after the event, too: 20 more attempts (a progress line every 10), or the loop ended by itself.
    const until = progressLines() + 2;
    await waitUntil(
      '20 more connections in the loop after the event',
      () => progressLines() >= until || child.exitCode !== null,
      60_000,
      { seen: () => out.slice(-300) },
    );
  } finally {
    control.resume();
    writeFileSync(stopFile, 'stop');
  }
  await Promise.race([exited, sleep(60_000)]);
  if (child.exitCode === null) child.kill('SIGKILL');
  const last = out.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(last) as LoopResult;
  } catch {
    throw new Error(`connection loop printed no result: ${out} ${err}`);
  }
}

export interface LoopResult {
  readonly ok: number;
  readonly refused: number;
  readonly failed: number;
  readonly errors: readonly string[];
  readonly peers: Readonly<Record<string, number>>;
  readonly slowestMs: number;
}

/** Fails in one line naming the package to install when a tool the nspawn system tests use is missing. */
export function requireNspawnTools(extra: readonly { tool: string; pkg: string }[] = []): void {
  const tools = [
    { tool: 'systemd-nspawn', pkg: 'systemd-container' },
    { tool: 'debootstrap', pkg: 'debootstrap' },
    { tool: 'zstd', pkg: 'zstd' },
    { tool: 'nsenter', pkg: 'util-linux' },
    ...extra,
  ];
  for (const { tool, pkg } of tools) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0)
      throw new Error(`${tool} is missing: install ${pkg} (.ci/run does)`);
  }
}

/** What an nspawn test file made; each part may be absent when its setup failed before making it. */
export interface NspawnLabParts {
  readonly ct?: Container | undefined;
  readonly topo?: LabTopology | undefined;
  readonly root?: string | undefined;
  /** Scratch directories of the host side (lab scripts, packages, peer configs). */
  readonly dirs?: readonly (string | undefined)[];
}

/**
 * Stops the container (a clean poweroff, else SIGKILL and up to 10 s for it to exit) and removes the namespaces,
 * the rootfs and the scratch directories: every nspawn test's afterAll.
 */
export async function tearDownNspawnLab(parts: NspawnLabParts): Promise<void> {
  const { ct, topo, root, dirs = [] } = parts;
  if (ct) {
    try {
      await ct.poweroff(30_000);
    } catch {
      ct.kill();
      await Promise.race([ct.waitExit(), sleep(10_000)]);
    }
  }
  if (topo) deleteLabTopology(topo);
  if (root) removeRootfs(root);
  for (const dir of dirs) if (dir) rmSync(dir, { recursive: true, force: true });
}
