// The demo's namespace lab: an "app host" namespace (the proxy as a non-root user, the capture rules, an app server),
// a "peer host" namespace (servers the app calls, and the client that calls the app), joined by a veth pair, and a
// "mesh host" namespace joined to the app host by a second pair: meshctl too (capture, its own proxy), so that the two
// proxies, each with an identity from a throwaway CA (src/mtls/ca.ts, as `meshctl ca` makes them), talk mTLS.
// Everything is created under one name prefix and torn down in reverse order, also after an error or Ctrl-C; a run
// first removes what a killed earlier run left behind (its namespaces and the processes still inside them).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { systemUserDb } from '../config/host-facts.js';
import { MeshctlError } from '../errors.js';
import { initCa, issueIdentity } from '../mtls/ca.js';
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
  readonly meshNs: string;
  readonly app: string;
  readonly peer: string;
  /** The mesh host, on the second link (the app host is `appOnMesh` there). */
  readonly mesh: string;
  readonly appOnMesh: string;
}

export const PORTS = { http: 80, banner: 25, excluded: 9999, appService: 8080, meshService: 80 } as const;

/** The two proxies' SPIFFE IDs, from the lab's CA (trust domain demo.test). */
export const IDENTITIES = { app: 'spiffe://demo.test/app', mesh: 'spiffe://demo.test/mesh' } as const;

/** The identity files `meshctl ca issue` writes into a directory. */
const identityFiles = (dir: string) => ({
  certificate: join(dir, 'svid.pem'),
  key: join(dir, 'svid_key.pem'),
  bundle: join(dir, 'svid_bundle.pem'),
});

/** A proxy the lab started, and what it printed. */
interface ProxyProcess {
  readonly child: ChildProcess;
  out: string;
  err: string;
}

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
  /** The mesh host's config (its proxy and capture). */
  readonly meshConfigFile: string;
  private readonly children: ChildProcess[] = [];
  private readonly proxies: { app: ProxyProcess | null; mesh: ProxyProcess | null } = { app: null, mesh: null };
  private readonly captured: { app: boolean; mesh: boolean } = { app: false, mesh: false };
  private torn = false;

  constructor(private readonly options: LabOptions) {
    const { prefix, subnet } = options;
    this.addresses = {
      appNs: `${prefix}-app`,
      peerNs: `${prefix}-peer`,
      meshNs: `${prefix}-mesh`,
      app: `10.${subnet}.77.1`,
      peer: `10.${subnet}.77.2`,
      appOnMesh: `10.${subnet}.78.1`,
      mesh: `10.${subnet}.78.2`,
    };
    this.dir = mkdtempSync(join(tmpdir(), 'meshctl-demo-'));
    chmodSync(this.dir, 0o755); // the proxy reads its config as the non-root user
    this.configFile = join(this.dir, 'config.json');
    this.meshConfigFile = join(this.dir, 'config-mesh.json');
  }

  /** Namespaces a killed earlier run left behind; removed (with their processes) before building. */
  static leftovers(prefix: string): string[] {
    return [`${prefix}-app`, `${prefix}-peer`, `${prefix}-mesh`].filter(namespaceExists);
  }

  static removeLeftovers(prefix: string): void {
    for (const ns of DemoLab.leftovers(prefix)) destroyNamespace(ns);
  }

  get proxyStdout(): string {
    return this.proxies.app?.out ?? '';
  }

  /** The mesh host's proxy's stdout (its access log). */
  get meshProxyStdout(): string {
    return this.proxies.mesh?.out ?? '';
  }

  private writeConfig(file: string, host: 'app' | 'mesh'): void {
    const { mesh, appOnMesh } = this.addresses;
    const config = {
      proxy: {
        user: this.options.proxyUser,
        workers: 1,
        drainTimeout: '2s',
        accessLog: { enabled: true, path: null },
      },
      capture: { ipv6: 'off', ...(host === 'app' ? { outbound: { excludePorts: [PORTS.excluded] } } : {}) },
      safety: { sshPorts: [22] },
      stateDir: join(this.dir, host === 'app' ? 'state' : 'state-mesh'),
      // The app host tunnels to the mesh host (a member by address) and accepts tunnels and plaintext; the mesh
      // host accepts nothing but tunnels from its own trust domain.
      mtls:
        host === 'app'
          ? { identity: identityFiles(join(this.dir, 'id-app')), inbound: 'permissive', peers: [`${mesh}/32`] }
          : { identity: identityFiles(join(this.dir, 'id-mesh')), inbound: 'strict', peers: [`${appOnMesh}/32`] },
    };
    writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
  }

  /**
   * A throwaway CA (trust domain demo.test) and one identity per proxy, owned by the proxy user (the key 0600):
   * what `meshctl ca init` and `meshctl ca issue` write.
   */
  async issueIdentities(): Promise<void> {
    const user = systemUserDb.user(this.options.proxyUser);
    if (user === null)
      throw new MeshctlError(
        'USER_NOT_FOUND',
        `--proxy-user ${this.options.proxyUser}: no such user (the demo proxies run as it)`,
        'pass an existing non-root user, e.g. --proxy-user nobody',
      );
    await initCa(join(this.dir, 'ca'), { trustDomain: 'demo.test' });
    for (const host of ['app', 'mesh'] as const) {
      const outDir = join(this.dir, `id-${host}`);
      await issueIdentity({ caDir: join(this.dir, 'ca'), id: IDENTITIES[host], outDir });
      chmodSync(outDir, 0o755);
      for (const f of readdirSync(outDir)) chownSync(join(outDir, f), user.uid, user.gid);
    }
    this.options.progress(
      `issued ${IDENTITIES.app} and ${IDENTITIES.mesh} from a throwaway CA (as \`meshctl ca init\` and \`meshctl ca issue\` do)`,
    );
  }

  build(): void {
    const { appNs, peerNs, meshNs, app, peer, mesh, appOnMesh } = this.addresses;
    const { prefix } = this.options;
    writeFileSync(join(this.dir, 'server.mjs'), SERVER_SCRIPT);
    writeFileSync(join(this.dir, 'client.mjs'), CLIENT_SCRIPT);
    this.writeConfig(this.configFile, 'app');
    this.writeConfig(this.meshConfigFile, 'mesh');
    for (const ns of [appNs, peerNs, meshNs]) {
      run('ip', ['netns', 'add', ns], `creating namespace ${ns}`);
      run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'], `bringing up lo in ${ns}`);
    }
    run(
      'ip',
      ['link', 'add', `${prefix}-a`, 'netns', appNs, 'type', 'veth', 'peer', 'name', `${prefix}-p`, 'netns', peerNs],
      'creating the veth pair',
    );
    run(
      'ip',
      ['link', 'add', `${prefix}-m`, 'netns', appNs, 'type', 'veth', 'peer', 'name', `${prefix}-n`, 'netns', meshNs],
      'creating the second veth pair',
    );
    for (const [ns, dev, addr] of [
      [appNs, `${prefix}-a`, app],
      [peerNs, `${prefix}-p`, peer],
      [appNs, `${prefix}-m`, appOnMesh],
      [meshNs, `${prefix}-n`, mesh],
    ] as const) {
      run('ip', ['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', dev], `addressing ${ns}`);
      run('ip', ['-n', ns, 'link', 'set', dev, 'up'], `bringing up ${dev}`);
    }
    this.options.progress(
      `created namespaces ${appNs} (${app}, ${appOnMesh}), ${peerNs} (${peer}) and ${meshNs} (${mesh}), joined by two veth pairs`,
    );
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
    const { appNs, peerNs, meshNs, app, peer, mesh } = this.addresses;
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
      [
        this.spawnIn(meshNs, [server, 'http', mesh, String(PORTS.meshService), 'mesh']),
        `mesh server ${mesh}:${PORTS.meshService}`,
      ],
    ];
    await Promise.all(starts.map(([child, what]) => this.waitFor(child, /listening/, what)));
    this.options.progress(
      `started servers: peer :${PORTS.http} (HTTP), :${PORTS.banner} (speaks first), :${PORTS.excluded} (excluded from capture); app :${PORTS.appService}; mesh :${PORTS.meshService} (HTTP)`,
    );
  }

  /** Starts both proxies (app host, mesh host) as the proxy user, then waits until each is ready. */
  async startProxy(): Promise<void> {
    const hosts = (['app', 'mesh'] as const).map((host) => {
      const ns = host === 'app' ? this.addresses.appNs : this.addresses.meshNs;
      const configFile = host === 'app' ? this.configFile : this.meshConfigFile;
      const child = this.spawnIn(ns, [MESHCTL_BIN, 'proxy', '--config', configFile]);
      const proxy: ProxyProcess = { child, out: '', err: '' };
      this.proxies[host] = proxy;
      child.stdout!.on('data', (d: Buffer) => (proxy.out += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (proxy.err += d.toString()));
      return { ns, configFile, proxy };
    });
    for (const { ns, configFile, proxy } of hosts) {
      const ready = spawnSync(
        'ip',
        ['netns', 'exec', ns, process.execPath, MESHCTL_BIN, 'proxy-ready', '--config', configFile, '--timeout', '15s'],
        { encoding: 'utf8' },
      );
      if (ready.status !== 0) {
        throw new MeshctlError(
          'PROXY_NOT_READY',
          `the demo proxy in ${ns} did not become ready`,
          'build the native addon (`npm ci` runs node-gyp) and re-run with --debug',
          {
            details: [
              ...ready.stderr.trim().split('\n'),
              ...proxy.err.trim().split('\n').slice(-8),
              ...proxy.out.trim().split('\n').slice(-4),
            ].filter(Boolean),
          },
        );
      }
    }
    this.options.progress(
      `started the proxies in ${this.addresses.appNs} (${IDENTITIES.app}) and ${this.addresses.meshNs} (${IDENTITIES.mesh}) as user ${this.options.proxyUser}: outbound :15001, inbound :15006, mTLS tunnel :15008, admin 127.0.0.1:15000`,
    );
  }

  /** `meshctl install --netns <ns> --config <lab config>` on the app host, then the mesh host; returns the app's output. */
  installCapture(): string {
    let appOut = '';
    for (const host of ['app', 'mesh'] as const) {
      const ns = host === 'app' ? this.addresses.appNs : this.addresses.meshNs;
      const configFile = host === 'app' ? this.configFile : this.meshConfigFile;
      const r = spawnSync(process.execPath, [MESHCTL_BIN, 'install', '--netns', ns, '--config', configFile], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      if (r.status !== 0) {
        throw new MeshctlError(
          'COMMAND_FAILED',
          `meshctl install --netns ${ns} failed (exit ${r.status})`,
          're-run with --debug',
          {
            details: r.stderr.trim().split('\n'),
          },
        );
      }
      this.captured[host] = true;
      this.options.progress(`installed capture: meshctl install --netns ${ns}`);
      if (host === 'app') appOut = r.stdout;
    }
    return appOut;
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
    const { appNs, peerNs, meshNs } = this.addresses;
    for (const host of ['app', 'mesh'] as const) {
      if (!this.captured[host]) continue;
      const ns = host === 'app' ? appNs : meshNs;
      const configFile = host === 'app' ? this.configFile : this.meshConfigFile;
      const r = spawnSync(process.execPath, [MESHCTL_BIN, 'uninstall', '--netns', ns, '--config', configFile], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      if (r.status !== 0) problems.push(`meshctl uninstall --netns ${ns} failed: ${r.stderr.trim().split('\n')[0]}`);
      else this.options.progress(`removed capture: meshctl uninstall --netns ${ns}`);
    }
    const running = [this.proxies.app, this.proxies.mesh].filter(
      (p): p is ProxyProcess => p !== null && p.child.exitCode === null,
    );
    // ip netns exec execs node: the signal reaches the proxy, which drains and exits.
    const stopped = await Promise.all(
      running.map(async ({ child }) => {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5000))]);
        return child.exitCode !== null || child.signalCode !== null;
      }),
    );
    if (stopped.some((ok) => !ok)) problems.push('a proxy did not stop within 5 s; killed it');
    else if (running.length > 0) this.options.progress('stopped the proxies (SIGTERM: drained, exit 0)');
    for (const child of this.children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    for (const ns of [appNs, peerNs, meshNs]) destroyNamespace(ns);
    const left = [appNs, peerNs, meshNs].filter(namespaceExists);
    if (left.length > 0) problems.push(`namespaces still present: ${left.join(', ')}`);
    else this.options.progress(`deleted namespaces ${appNs}, ${peerNs} and ${meshNs}`);
    rmSync(this.dir, { recursive: true, force: true });
    return problems;
  }
}
