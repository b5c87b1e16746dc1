// The proxy's netns lab: a client namespace (apps as uid 1000, the capture rules, the proxy as `nobody`) and a
// server namespace (real servers) joined by veth. Agents (test/helpers/proxy-agent.mjs) run inside the namespaces
// and are driven over IPC; the proxy is the real CLI (`bin/meshctl proxy`, built into dist/).
import { chmodSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configFromObject } from '../../src/config/load.js';
import { installCapture } from '../../src/netfilter/install.js';
import type { Config } from '../../src/config/types.js';
import { destroyLab, spawnLabProxy, startLabAgent, type Agent, type LabProxy, type NsUser } from './lab-process.js';
import { createVethPair, inNs } from './netns.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const AGENT = fileURLToPath(new URL('./proxy-agent.mjs', import.meta.url));

export const PROXY_UID = 65534; // nobody
export const PROXY_GID = 65534; // nogroup
export const APP_UID = 1000;

/** Fails early, with the fix, when the integration tests would run a stale or missing build. */
export function assertBuilt(): void {
  for (const file of ['dist/cli/main.js', 'dist/proxy/lifecycle.js', 'build/Release/meshctl_native.node']) {
    if (!existsSync(join(ROOT, file)))
      throw new Error(
        `${file} is missing: run \`npm run build\` (and \`npm ci\` for the addon) before the proxy integration tests`,
      );
  }
}

export type { Agent, AgentError } from './lab-process.js';

/** Starts a proxy agent (test/helpers/proxy-agent.mjs) in `ns` (as `user` when given) and waits until it answers. */
export function startAgent(ns: string, user?: NsUser): Promise<Agent> {
  return startLabAgent(AGENT, ns, user);
}

/** A lab config object: the proxy runs as nobody; SSH port 22 is the only excluded port. */
export function labConfigObject(
  overrides: { proxy?: Record<string, unknown>; capture?: Record<string, unknown> } = {},
  stateDir = '/tmp/mp-state',
): Record<string, unknown> {
  return {
    proxy: { user: 'nobody', workers: 1, keepalive: '30s', ...overrides.proxy },
    capture: { ipv6: 'intercept', ...overrides.capture },
    safety: { sshPorts: [22] },
    stateDir,
  };
}

/**
 * Installs the capture rules for `config` inside `ns` with meshctl's own installer (the same transaction as
 * `meshctl install --netns`): real iptables-restore / ip6tables-restore (or nft), ledger under config.stateDir.
 */
export async function installLabCapture(ns: string, config: Config, lockFile: string): Promise<void> {
  await installCapture({ config, netns: ns, env: { ...process.env, XTABLES_LOCKFILE: lockFile } });
}

export interface AccessLine {
  msg: string;
  direction: 'outbound' | 'inbound';
  source: string;
  originalDst: string | null;
  upstream: string | null;
  upstreamLocal: string | null;
  bytesFromClient: number;
  bytesFromUpstream: number;
  durationMs: number;
  connectMs: number | null;
  result: string;
  detail: string;
  worker: number;
  state?: string;
}

export type RunningProxy = LabProxy<AccessLine>;

export interface ProxyLab {
  readonly client: string;
  readonly server: string;
  readonly addrs: { a4: string; b4: string; a6: string; b6: string };
  readonly dir: string;
  readonly app: Agent;
  readonly peer: Agent;
  /** Builds the config, writes it to `name`.json, installs nothing (see installCapture). */
  writeConfig(raw: Record<string, unknown>, name?: string): { file: string; config: Config };
  /** Starts `meshctl proxy --config FILE` as nobody; `prefix` runs before node (e.g. systemd-socket-activate). */
  startProxy(
    configFile: string,
    extraArgs?: readonly string[],
    prefix?: readonly string[],
    user?: { uid: number; gid: number },
  ): Promise<RunningProxy>;
  destroy(): Promise<void>;
}

/**
 * Creates `mp-<name>-c` (client) and `mp-<name>-s` (server), an app agent (uid 1000) in the client and a peer agent
 * (root) in the server namespace. `capture` installs the rules of the given lab config in the client namespace.
 * `prefix` replaces `mp` in the namespace and directory names (each test file owner has their own).
 */
export async function createProxyLab(
  name: string,
  subnet: number,
  capture: Record<string, unknown> | null,
  prefix = 'mp',
): Promise<ProxyLab> {
  assertBuilt();
  const client = `${prefix}-${name}-c`;
  const server = `${prefix}-${name}-s`;
  const addrs = createVethPair(client, server, subnet);
  const dir = mkdtempSync(join(tmpdir(), `${prefix}-${name}-`));
  chmodSync(dir, 0o755);
  const lockFile = join(dir, 'xtables.lock');
  const proxies: RunningProxy[] = [];
  const agents: Agent[] = [];
  const writeConfig = (raw: Record<string, unknown>, file = 'config') => {
    const path = join(dir, `${file}.json`);
    const config = configFromObject(raw, { file: path });
    writeFileSync(path, `${JSON.stringify(raw, null, 2)}\n`, { mode: 0o644 });
    chmodSync(path, 0o644);
    return { file: path, config };
  };
  try {
    // The proxy's passthrough source for IPv6 inbound (IPv4's 127.0.0.6 is on lo already).
    inNs(client, 'ip', ['-6', 'addr', 'add', '::6/128', 'dev', 'lo']);
    if (capture)
      await installLabCapture(
        client,
        writeConfig({ ...capture, stateDir: join(dir, 'state') }, 'capture').config,
        lockFile,
      );
    agents.push(await startAgent(client, { uid: APP_UID, gid: APP_UID }));
    agents.push(await startAgent(server));
    // Root in the client namespace: the admin API's privileged paths (/config, /connections, /drain) answer only
    // root and the proxy's user, not the apps (uid 1000).
    agents.push(await startAgent(client));
  } catch (error) {
    await destroyLab({ proxies: [], agents, namespaces: [client, server], dir });
    throw error;
  }
  const [app, peer, admin] = agents as [Agent, Agent, Agent];

  const startProxy = async (
    configFile: string,
    extraArgs: readonly string[] = [],
    prefix: readonly string[] = [],
    user: { uid: number; gid: number } = { uid: PROXY_UID, gid: PROXY_GID },
  ): Promise<RunningProxy> => {
    const proxy = spawnLabProxy<AccessLine>(client, ['--config', configFile, ...extraArgs], {
      user,
      adminVia: admin,
      prefix,
    });
    proxies.push(proxy);
    return proxy;
  };

  return {
    client,
    server,
    addrs,
    dir,
    app,
    peer,
    writeConfig,
    startProxy,
    async destroy() {
      await destroyLab({ proxies, agents, namespaces: [client, server], dir });
    },
  };
}
