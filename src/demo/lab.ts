// The demo's namespace lab: an "app host" namespace (the proxy as a non-root user, the capture rules, an app server)
// and a "peer host" namespace (servers the app calls, and the client that calls the app), joined by a veth pair.
// Everything is created under one name prefix and torn down in reverse order, also after an error or Ctrl-C; a run
// first removes what a killed earlier run left behind (its namespaces and the processes still inside them).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MeshctlError } from '../errors.js';
import { MESHCTL_BIN } from '../netfilter/transaction/revert.js';
import { CLIENT_SCRIPT, SERVER_SCRIPT } from './scripts.js';

export interface LabOptions {
  /** Namespace and interface name prefix (at most 10 characters). */
  readonly prefix: string;
  /** Second octet of the lab subnet 10.<n>.77.0/24. */
  readonly subnet: number;
  /** The non-root user the proxy runs as (its uid and gid are exempt from capture inside the lab only). */
  readonly proxyUser: string;
  /** Say what is happening, one line at a time (the CLI prints it). */
  readonly progress: (line: string) => void;
}

export interface LabAddresses {
  readonly appNs: string;
  readonly peerNs: string;
  readonly app: string;
  readonly peer: string;
}

export const PORTS = { http: 80, banner: 25, excluded: 9999, appService: 8080 } as const;

export interface ClientResult {
  readonly ok: boolean;
  readonly local: string;
  readonly sent: number;
  readonly received: number;
  readonly firstLine?: string;
  readonly lastLine?: string;
  readonly ms?: number;
  readonly error?: string;
}

function run(cmd: string, args: readonly string[], what: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) {
    throw new MeshctlError(
      'COMMAND_FAILED',
      `${what}: ${cmd} ${args.join(' ')} failed (exit ${r.status ?? r.signal ?? r.error?.message})`,
      'the demo needs iproute2 and a kernel with network namespaces and veth',
      { details: (r.stderr ?? '').trim() ? [`stderr:  ${(r.stderr ?? '').trim()}`] : [] },
    );
  }
  return r.stdout;
}

function namespaceExists(name: string): boolean {
  return spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .stdout.split('\n')
    .some((l) => l.split(' ')[0] === name);
}

/** Kills every process inside a namespace, then deletes it. */
function destroyNamespace(name: string): void {
  if (!namespaceExists(name)) return;
  const pids = spawnSync('ip', ['netns', 'pids', name], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter(Boolean)
    .map(Number);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  spawnSync('ip', ['netns', 'del', name]);
}

export class DemoLab {
  readonly addresses: LabAddresses;
  readonly dir: string;
  readonly configFile: string;
  private readonly children: ChildProcess[] = [];
  private proxy: ChildProcess | null = null;
  private captureInstalled = false;
  private proxyOut = '';
  private proxyErr = '';
  private torn = false;

  constructor(private readonly options: LabOptions) {
    const { prefix, subnet } = options;
    this.addresses = {
      appNs: `${prefix}-app`,
      peerNs: `${prefix}-peer`,
      app: `10.${subnet}.77.1`,
      peer: `10.${subnet}.77.2`,
    };
    this.dir = mkdtempSync(join(tmpdir(), 'meshctl-demo-'));
    chmodSync(this.dir, 0o755); // the proxy reads its config as the non-root user
    this.configFile = join(this.dir, 'config.json');
  }

  /** Namespaces a killed earlier run left behind; removed (with their processes) before building. */
  static leftovers(prefix: string): string[] {
    return [`${prefix}-app`, `${prefix}-peer`].filter(namespaceExists);
  }

  static removeLeftovers(prefix: string): void {
    for (const ns of DemoLab.leftovers(prefix)) destroyNamespace(ns);
  }

  get proxyStdout(): string {
    return this.proxyOut;
  }

  build(): void {
    const { appNs, peerNs, app, peer } = this.addresses;
    const { prefix } = this.options;
    writeFileSync(join(this.dir, 'server.mjs'), SERVER_SCRIPT);
    writeFileSync(join(this.dir, 'client.mjs'), CLIENT_SCRIPT);
    writeFileSync(
      this.configFile,
      `${JSON.stringify(
        {
          proxy: {
            user: this.options.proxyUser,
            workers: 1,
            drainTimeout: '2s',
            accessLog: { enabled: true, path: null },
          },
          capture: { ipv6: 'off', outbound: { excludePorts: [PORTS.excluded] } },
          safety: { sshPorts: [22] },
          stateDir: join(this.dir, 'state'),
        },
        null,
        2,
      )}\n`,
    );
    for (const ns of [appNs, peerNs]) {
      run('ip', ['netns', 'add', ns], `creating namespace ${ns}`);
      run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'], `bringing up lo in ${ns}`);
    }
    run(
      'ip',
      ['link', 'add', `${prefix}-a`, 'netns', appNs, 'type', 'veth', 'peer', 'name', `${prefix}-p`, 'netns', peerNs],
      'creating the veth pair',
    );
    for (const [ns, dev, addr] of [
      [appNs, `${prefix}-a`, app],
      [peerNs, `${prefix}-p`, peer],
    ] as const) {
      run('ip', ['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', dev], `addressing ${ns}`);
      run('ip', ['-n', ns, 'link', 'set', dev, 'up'], `bringing up ${dev}`);
    }
    this.options.progress(`created namespaces ${appNs} (${app}) and ${peerNs} (${peer}), joined by a veth pair`);
  }

  private spawnIn(ns: string, args: readonly string[]): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.children.push(child);
    return child;
  }

  private async waitFor(child: ChildProcess, pattern: RegExp, what: string, timeoutMs = 15_000): Promise<void> {
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(out)) {
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new MeshctlError(
          'COMMAND_FAILED',
          `${what} did not start (${child.exitCode !== null ? `exit ${child.exitCode}` : `no sign of life within ${timeoutMs} ms`})`,
          're-run with --debug',
          { details: [...out.trim().split('\n').slice(-5), ...err.trim().split('\n').slice(-5)].filter(Boolean) },
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }

  async startServers(): Promise<void> {
    const { appNs, peerNs, app, peer } = this.addresses;
    const server = join(this.dir, 'server.mjs');
    const starts: Array<[ChildProcess, string]> = [
      [this.spawnIn(peerNs, [server, 'http', peer, String(PORTS.http)]), `peer HTTP server ${peer}:${PORTS.http}`],
      [
        this.spawnIn(peerNs, [server, 'banner', peer, String(PORTS.banner)]),
        `peer banner server ${peer}:${PORTS.banner}`,
      ],
      [
        this.spawnIn(peerNs, [server, 'http', peer, String(PORTS.excluded)]),
        `peer unmanaged server ${peer}:${PORTS.excluded}`,
      ],
      [this.spawnIn(appNs, [server, 'whoami', app, String(PORTS.appService)]), `app server ${app}:${PORTS.appService}`],
    ];
    await Promise.all(starts.map(([child, what]) => this.waitFor(child, /listening/, what)));
    this.options.progress(
      `started servers: peer :${PORTS.http} (HTTP), :${PORTS.banner} (speaks first), :${PORTS.excluded} (excluded from capture); app :${PORTS.appService}`,
    );
  }

  async startProxy(): Promise<void> {
    const child = this.spawnIn(this.addresses.appNs, [MESHCTL_BIN, 'proxy', '--config', this.configFile]);
    this.proxy = child;
    child.stdout!.on('data', (d: Buffer) => (this.proxyOut += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (this.proxyErr += d.toString()));
    const ready = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        this.addresses.appNs,
        process.execPath,
        MESHCTL_BIN,
        'proxy-ready',
        '--config',
        this.configFile,
        '--timeout',
        '15s',
      ],
      { encoding: 'utf8' },
    );
    if (ready.status !== 0) {
      throw new MeshctlError(
        'PROXY_NOT_READY',
        `the demo proxy in ${this.addresses.appNs} did not become ready`,
        'build the native addon (`npm ci` runs node-gyp) and re-run with --debug',
        {
          details: [...ready.stderr.trim().split('\n'), ...this.proxyErr.trim().split('\n').slice(-8)].filter(Boolean),
        },
      );
    }
    this.options.progress(
      `started the proxy in ${this.addresses.appNs} as user ${this.options.proxyUser}: outbound :15001, inbound :15006, admin 127.0.0.1:15000`,
    );
  }

  /** `meshctl install --netns <app> --config <lab config>`; returns its output. */
  installCapture(): string {
    const r = spawnSync(
      process.execPath,
      [MESHCTL_BIN, 'install', '--netns', this.addresses.appNs, '--config', this.configFile],
      { encoding: 'utf8', timeout: 60_000 },
    );
    if (r.status !== 0) {
      throw new MeshctlError(
        'COMMAND_FAILED',
        `meshctl install --netns ${this.addresses.appNs} failed (exit ${r.status})`,
        're-run with --debug',
        { details: r.stderr.trim().split('\n') },
      );
    }
    this.captureInstalled = true;
    this.options.progress(`installed capture: meshctl install --netns ${this.addresses.appNs}`);
    return r.stdout;
  }

  /** One scripted connection from `from` (app or peer namespace). */
  connect(from: 'app' | 'peer', mode: 'http' | 'banner' | 'whoami', host: string, port: number): ClientResult {
    const ns = from === 'app' ? this.addresses.appNs : this.addresses.peerNs;
    const r = spawnSync(
      'ip',
      ['netns', 'exec', ns, process.execPath, join(this.dir, 'client.mjs'), mode, host, String(port)],
      { encoding: 'utf8', timeout: 30_000 },
    );
    const line = r.stdout.trim().split('\n').pop() ?? '';
    try {
      return JSON.parse(line) as ClientResult;
    } catch {
      return {
        ok: false,
        local: '?',
        sent: 0,
        received: 0,
        error: (r.stderr || `client exited ${r.status}`).trim().split('\n')[0] ?? 'client failed',
      };
    }
  }

  /** GET /stats from the proxy (inside the app namespace). */
  stats(): unknown {
    const code = "fetch('http://127.0.0.1:15000/stats').then((r) => r.text()).then((t) => process.stdout.write(t))";
    return JSON.parse(
      run('ip', ['netns', 'exec', this.addresses.appNs, process.execPath, '-e', code], 'reading the proxy stats'),
    ) as unknown;
  }

  explain(host: string, port: number): string {
    const args = [
      MESHCTL_BIN,
      'explain',
      '--out',
      '--dst',
      `${host}:${port}`,
      '--uid',
      '0',
      '--netns',
      this.addresses.appNs,
      '--config',
      this.configFile,
    ];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 30_000 });
    return r.status === 0 ? r.stdout : `(meshctl explain failed: ${r.stderr.trim().split('\n')[0]})`;
  }

  /**
   * Undoes everything, in reverse order, continuing past failures; returns what could not be undone (empty when
   * the lab is fully gone). Idempotent.
   */
  async teardown(): Promise<string[]> {
    if (this.torn) return [];
    this.torn = true;
    const problems: string[] = [];
    const { appNs, peerNs } = this.addresses;
    if (this.captureInstalled) {
      const r = spawnSync(process.execPath, [MESHCTL_BIN, 'uninstall', '--netns', appNs, '--config', this.configFile], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      if (r.status !== 0) problems.push(`meshctl uninstall --netns ${appNs} failed: ${r.stderr.trim().split('\n')[0]}`);
      else this.options.progress(`removed capture: meshctl uninstall --netns ${appNs}`);
    }
    if (this.proxy && this.proxy.exitCode === null) {
      const exited = new Promise((resolve) => this.proxy!.once('exit', resolve));
      this.proxy.kill('SIGTERM'); // ip netns exec execs node: the signal reaches the proxy, which drains and exits
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5000))]);
      if (this.proxy.exitCode === null && this.proxy.signalCode === null)
        problems.push('the proxy did not stop within 5 s; killed it');
      else this.options.progress('stopped the proxy (SIGTERM: drained, exit 0)');
    }
    for (const child of this.children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    for (const ns of [appNs, peerNs]) destroyNamespace(ns);
    const left = [appNs, peerNs].filter(namespaceExists);
    if (left.length > 0) problems.push(`namespaces still present: ${left.join(', ')}`);
    else this.options.progress(`deleted namespaces ${appNs} and ${peerNs}`);
    rmSync(this.dir, { recursive: true, force: true });
    return problems;
  }
}
