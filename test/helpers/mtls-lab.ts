// The mTLS lab: three hosts as namespaces on one bridge — `a` and `b` (each with meshctl's capture rules and a proxy
// as `nobody` holding its own certificate from `meshctl ca`'s code) and `c` (a plaintext client, no meshctl) — plus
// the CA files, a packet sniffer for the link (test/helpers/mtls-sniff.py) and a bare tunnel client
// (test/helpers/mtls-client.mjs) for certificates no proxy would present.
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configFromObject } from '../../src/config/load.js';
import { initCa, issueIdentity } from '../../src/mtls/ca.js';
import { destroyLab, nsCommand, spawnLabProxy, type LabProxy } from './lab-process.js';
import { deleteNs, sh } from './netns.js';
import {
  APP_UID,
  assertBuilt,
  installLabCapture,
  PROXY_GID,
  PROXY_UID,
  startAgent,
  type AccessLine,
  type Agent,
} from './proxy-lab.js';

const SNIFF = fileURLToPath(new URL('./mtls-sniff.py', import.meta.url));
const CLIENT = fileURLToPath(new URL('./mtls-client.mjs', import.meta.url));

export type MtlsLine = AccessLine & { tls?: string; peerIdentity?: string; handshakeMs?: number; service?: string };
export type MtlsProxy = LabProxy<MtlsLine>;
export type HostName = 'a' | 'b' | 'c';

export interface MtlsHost {
  readonly ns: string;
  readonly v4: string;
  readonly v6: string;
  /** The host's link (for the sniffer). */
  readonly iface: string;
  /** Apps (uid 1000); on c, root (it has no capture). */
  readonly app: Agent;
  /** Root in the namespace: the proxy's admin API answers it. */
  readonly admin: Agent;
}

export interface IdentityFiles {
  readonly certificate: string;
  readonly key: string;
  readonly bundle: string;
}

export interface MtlsLab {
  readonly dir: string;
  readonly hosts: Record<HostName, MtlsHost>;
  /** Issues `id` from the lab's CA (or the other trust domain's) into `out`, readable by the proxy user. */
  issue(
    id: string,
    out: string,
    options?: { ca?: 'mesh' | 'other'; validity?: { notBefore: Date; notAfter: Date } },
  ): Promise<IdentityFiles>;
  /** Writes a proxy config (with `mtls.identity` = `identity`) and returns its path. */
  writeConfig(name: string, raw: Record<string, unknown>): string;
  /** Installs the capture rules of config file `file`'s settings in host `host`. */
  installCapture(host: 'a' | 'b', raw: Record<string, unknown>): Promise<void>;
  /** Starts `meshctl proxy` as nobody, or as root (it switches to proxy.user, keeping CAP_NET_ADMIN for TPROXY). */
  startProxy(host: HostName, configFile: string, options?: { asRoot?: boolean }): Promise<MtlsProxy>;
  /** Starts the sniffer on `host`'s link; the returned function stops it and resolves with its counts. */
  sniff(host: HostName, marker: string): Promise<() => Promise<SniffStats>>;
  /** Runs the bare tunnel client in `host` against `target`'s tunnel port with `files`. */
  tunnelClient(host: HostName, target: string, files: IdentityFiles, authority: string): TunnelClientResult;
  destroy(): Promise<void>;
}

export interface SniffStats {
  readonly frames: number;
  readonly markerFrames: number;
  readonly tcpPayloadByPort: Record<string, number>;
}

export interface TunnelClientResult {
  readonly status: number | null;
  readonly goaway: string | null;
  readonly error: string | null;
}

export const TRUST_DOMAIN = 'mesh.test';

/** A lab config object for a proxy host: the proxy as nobody, one worker, SSH port 22 excluded, IPv4 and IPv6. */
export function mtlsConfig(
  dir: string,
  identity: IdentityFiles,
  extra: { mtls?: Record<string, unknown>; [section: string]: unknown } = {},
): Record<string, unknown> {
  const { mtls, ...rest } = extra;
  return {
    proxy: { user: 'nobody', workers: 1, connectTimeout: '2s' },
    capture: { ipv6: 'intercept' },
    safety: { sshPorts: [22] },
    stateDir: join(dir, 'state'),
    mtls: { identity, inbound: 'permissive', ...mtls },
    ...rest,
  };
}

function createBridge(prefix: string, subnet: number): Record<HostName, { ns: string; v4: string; v6: string }> {
  const br = `${prefix}-br`;
  deleteNs(br);
  sh('ip', ['netns', 'add', br]);
  sh('ip', ['-n', br, 'link', 'add', 'br0', 'type', 'bridge']);
  sh('ip', ['-n', br, 'link', 'set', 'br0', 'up']);
  const out = {} as Record<HostName, { ns: string; v4: string; v6: string }>;
  (['a', 'b', 'c'] as const).forEach((name, i) => {
    const ns = `${prefix}-${name}`;
    deleteNs(ns);
    sh('ip', ['netns', 'add', ns]);
    const dev = `${ns}-v`.slice(0, 15);
    sh('ip', ['link', 'add', dev, 'netns', ns, 'type', 'veth', 'peer', 'name', `p${name}`, 'netns', br]);
    sh('ip', ['-n', br, 'link', 'set', `p${name}`, 'master', 'br0']);
    sh('ip', ['-n', br, 'link', 'set', `p${name}`, 'up']);
    const v4 = `10.${subnet}.0.${i + 1}`;
    const v6 = `fd00:${subnet}::${i + 1}`;
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    sh('ip', ['-n', ns, 'addr', 'add', `${v4}/24`, 'dev', dev]);
    sh('ip', ['-n', ns, '-6', 'addr', 'add', `${v6}/64`, 'dev', dev, 'nodad']);
    sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
    // The proxy's IPv6 passthrough source (IPv4's 127.0.0.6 is on lo already).
    sh('ip', ['-n', ns, '-6', 'addr', 'add', '::6/128', 'dev', 'lo']);
    out[name] = { ns, v4, v6 };
  });
  return out;
}

/** Makes the identity files in `dir` readable by the proxy user (the key only by it). */
function handToProxy(dir: string): void {
  chmodSync(dir, 0o755);
  for (const f of readdirSync(dir)) {
    const path = join(dir, f);
    chownSync(path, PROXY_UID, PROXY_GID);
    chmodSync(path, f.includes('key') ? 0o600 : 0o644);
  }
}

export async function createMtlsLab(prefix: string, subnet: number): Promise<MtlsLab> {
  assertBuilt();
  const dir = mkdtempSync(join(tmpdir(), `${prefix}-`));
  chmodSync(dir, 0o755);
  const namespaces = [`${prefix}-br`, ...(['a', 'b', 'c'] as const).map((n) => `${prefix}-${n}`)];
  const agents: Agent[] = [];
  const proxies: MtlsProxy[] = [];
  const sniffers: (() => void)[] = [];
  let hosts: Record<HostName, MtlsHost>;
  try {
    const made = createBridge(prefix, subnet);
    const host = async (name: HostName): Promise<MtlsHost> => {
      const { ns, v4, v6 } = made[name];
      const app = await startAgent(ns, name === 'c' ? undefined : { uid: APP_UID, gid: APP_UID });
      agents.push(app);
      const admin = name === 'c' ? app : await startAgent(ns);
      if (admin !== app) agents.push(admin);
      return { ns, v4, v6, iface: `${ns}-v`.slice(0, 15), app, admin };
    };
    hosts = { a: await host('a'), b: await host('b'), c: await host('c') };
    // The CA is backdated a week so that it can issue a certificate that expired yesterday.
    const validity = {
      notBefore: new Date(Date.now() - 7 * 86400_000),
      notAfter: new Date(Date.now() + 30 * 86400_000),
    };
    await initCa(join(dir, 'ca'), { trustDomain: TRUST_DOMAIN, validity });
    await initCa(join(dir, 'ca-other'), { trustDomain: 'other.test', validity });
  } catch (error) {
    await destroyLab({ proxies: [], agents, namespaces, dir });
    throw error;
  }

  return {
    dir,
    hosts,
    async issue(id, out, options = {}) {
      // Issued into a staging directory and renamed into place file by file, as rotating agents do; the proxy's
      // watcher reads the set once the renames have settled.
      const stage = join(dir, `.stage-${Math.random().toString(16).slice(2)}`);
      const issued = await issueIdentity({
        caDir: join(dir, options.ca === 'other' ? 'ca-other' : 'ca'),
        id,
        outDir: stage,
        ...(options.validity ? { validity: options.validity } : {}),
      });
      handToProxy(stage);
      const target = join(dir, out);
      mkdirSync(target, { recursive: true, mode: 0o755 });
      chmodSync(target, 0o755);
      const files = {} as Record<keyof IdentityFiles, string>;
      for (const [k, path] of Object.entries(issued.paths) as [keyof IdentityFiles, string][]) {
        const name = path.slice(stage.length + 1);
        renameSync(path, join(target, name));
        files[k] = join(target, name);
      }
      return files;
    },
    writeConfig(name, raw) {
      const path = join(dir, `${name}.json`);
      configFromObject(raw, { file: path });
      writeFileSync(`${path}.tmp`, `${JSON.stringify(raw, null, 2)}\n`, { mode: 0o644 });
      renameSync(`${path}.tmp`, path);
      return path;
    },
    async installCapture(name, raw) {
      const config = configFromObject({ ...raw, stateDir: join(dir, `state-${name}`) }, { file: join(dir, 'x.json') });
      await installLabCapture(hosts[name].ns, config, join(dir, `xtables-${name}.lock`));
    },
    async startProxy(name, configFile, options = {}) {
      const proxy = spawnLabProxy<MtlsLine>(hosts[name].ns, ['--config', configFile], {
        user: options.asRoot ? { uid: 0, gid: 0 } : { uid: PROXY_UID, gid: PROXY_GID },
        adminVia: hosts[name].admin,
      });
      proxies.push(proxy);
      return proxy;
    },
    async sniff(name, marker) {
      const child = spawn('ip', nsCommand(hosts[name].ns, ['python3', SNIFF, hosts[name].iface, marker]), {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
      const kill = () => child.kill('SIGTERM');
      sniffers.push(kill);
      const deadline = Date.now() + 5000;
      while (!out.includes('"ready"')) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the sniffer did not start: ${out}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return async () => {
        kill();
        const end = Date.now() + 5000;
        while (out.trim().split('\n').length < 2) {
          if (Date.now() > end) throw new Error(`the sniffer did not report: ${out}`);
          await new Promise((r) => setTimeout(r, 20));
        }
        return JSON.parse(out.trim().split('\n')[1]!) as SniffStats;
      };
    },
    tunnelClient(name, target, files, authority) {
      const text = execFileSync(
        'ip',
        nsCommand(hosts[name].ns, [
          process.execPath,
          CLIENT,
          target,
          '15008',
          files.certificate,
          files.key,
          files.bundle,
          authority,
        ]),
        { encoding: 'utf8' },
      );
      return JSON.parse(text.trim().split('\n').at(-1)!) as TunnelClientResult;
    },
    async destroy() {
      for (const kill of sniffers) kill();
      await destroyLab({ proxies, agents, namespaces, dir });
    },
  };
}
