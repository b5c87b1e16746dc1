// The policy netns lab: a client namespace `mq-<name>-c` (apps as uid 1000, meshctl's capture rules, the real proxy
// as `nobody`) and a server namespace `mq-<name>-s` holding several endpoint addresses on its veth (one server per
// address), joined by veth. Agents (test/helpers/policy-agent.mjs) run in both and are driven over IPC.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configFromObject } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { destroyLab, spawnLabProxy, startLabAgent, type Agent, type LabProxy, type NsUser } from './lab-process.js';
import { createVethPair, inNs } from './netns.js';
import { APP_UID, assertBuilt, installLabCapture, PROXY_GID, PROXY_UID, type AccessLine } from './proxy-lab.js';

const AGENT = fileURLToPath(new URL('./policy-agent.mjs', import.meta.url));

export type PolicyAgent = Agent;
export type PolicyAccessLine = AccessLine & { service?: string; attempts?: number };
export type PolicyProxy = LabProxy<PolicyAccessLine>;

/** Starts the policy agent (test/helpers/policy-agent.mjs) in `ns` (as `user` when given) and waits until it answers. */
export function startPolicyAgent(ns: string, user?: NsUser): Promise<PolicyAgent> {
  return startLabAgent(AGENT, ns, user);
}

export interface PolicyLab {
  readonly client: string;
  readonly server: string;
  /** 10.S.0.1 (client), 10.S.0.2 (server). */
  readonly addrs: { a4: string; b4: string; a6: string; b6: string };
  /** Extra addresses on the server's veth: 10.S.0.11, .12, ... */
  readonly endpoints: readonly string[];
  /** Extra addresses on the client's veth (sources for source-hash): 10.S.0.51, .52, ... */
  readonly clientSources: readonly string[];
  /** Extra sources on the server's veth for inbound tests: 10.S.0.81, .82, ... */
  readonly peerSources: readonly string[];
  readonly subnet: number;
  readonly dir: string;
  /** Apps in the client namespace (uid 1000). */
  readonly app: PolicyAgent;
  /** Servers (root) in the server namespace. */
  readonly peer: PolicyAgent;
  writeConfig(raw: Record<string, unknown>, name?: string): { file: string; config: Config };
  startProxy(configFile: string): Promise<PolicyProxy>;
  destroy(): Promise<void>;
}

/** The base config of a lab: the proxy as nobody, one worker (policy state is per process), SSH port 22 excluded. */
export function policyConfig(
  lab: Pick<PolicyLab, 'dir'>,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  const { proxy, ...rest } = extra as { proxy?: Record<string, unknown> };
  return {
    proxy: { user: 'nobody', workers: 1, connectTimeout: '2s', ...proxy },
    capture: { ipv6: 'intercept' },
    safety: { sshPorts: [22] },
    stateDir: join(lab.dir, 'state'),
    ...rest,
  };
}

/**
 * Creates the lab: namespaces, `endpoints` extra server addresses, `clientSources` extra client addresses, the
 * capture rules (from the base config) in the client namespace, and an agent in each namespace.
 */
export async function createPolicyLab(
  name: string,
  subnet: number,
  options: { endpoints?: number; clientSources?: number; peerSources?: number } = {},
): Promise<PolicyLab> {
  assertBuilt();
  const client = `mq-${name}-c`;
  const server = `mq-${name}-s`;
  const addrs = createVethPair(client, server, subnet);
  const dir = mkdtempSync(join(tmpdir(), `mq-${name}-`));
  chmodSync(dir, 0o755);
  const endpoints = Array.from({ length: options.endpoints ?? 3 }, (_, i) => `10.${subnet}.0.${11 + i}`);
  const clientSources = Array.from({ length: options.clientSources ?? 0 }, (_, i) => `10.${subnet}.0.${51 + i}`);
  const peerSources = Array.from({ length: options.peerSources ?? 0 }, (_, i) => `10.${subnet}.0.${81 + i}`);
  const agents: PolicyAgent[] = [];
  const proxies: PolicyProxy[] = [];
  const writeConfig = (raw: Record<string, unknown>, file = 'config') => {
    const path = join(dir, `${file}.json`);
    const config = configFromObject(raw, { file: path });
    writeFileSync(`${path}.tmp`, `${JSON.stringify(raw, null, 2)}\n`, { mode: 0o644 });
    // Replace by rename, as config managers do: the proxy's watcher never sees a half-written file.
    execFileSync('mv', [`${path}.tmp`, path]);
    return { file: path, config };
  };
  try {
    for (const a of endpoints) inNs(server, 'ip', ['addr', 'add', `${a}/24`, 'dev', `${server}-v`.slice(0, 15)]);
    for (const a of peerSources) inNs(server, 'ip', ['addr', 'add', `${a}/24`, 'dev', `${server}-v`.slice(0, 15)]);
    for (const a of clientSources) inNs(client, 'ip', ['addr', 'add', `${a}/24`, 'dev', `${client}-v`.slice(0, 15)]);
    inNs(client, 'ip', ['-6', 'addr', 'add', '::6/128', 'dev', 'lo']);
    await installLabCapture(client, writeConfig(policyConfig({ dir }), 'capture').config, join(dir, 'xtables.lock'));
    agents.push(await startPolicyAgent(client, { uid: APP_UID, gid: APP_UID }));
    agents.push(await startPolicyAgent(server));
    // Root in the client namespace: the admin API's privileged paths (/config, /connections, /drain) answer only
    // root and the proxy's user, not the apps (uid 1000).
    agents.push(await startPolicyAgent(client));
  } catch (error) {
    await destroyLab({ proxies: [], agents, namespaces: [client, server], dir });
    throw error;
  }
  const [app, peer, admin] = agents as [PolicyAgent, PolicyAgent, PolicyAgent];

  const startProxy = async (configFile: string): Promise<PolicyProxy> => {
    const proxy = spawnLabProxy<PolicyAccessLine>(client, ['--config', configFile], {
      user: { uid: PROXY_UID, gid: PROXY_GID },
      adminVia: admin,
    });
    proxies.push(proxy);
    return proxy;
  };

  return {
    client,
    server,
    addrs,
    endpoints,
    clientSources,
    peerSources,
    subnet,
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

/** Counts of each id in a dial result. */
export function tally(ids: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const id of ids) out[id] = (out[id] ?? 0) + 1;
  return out;
}
