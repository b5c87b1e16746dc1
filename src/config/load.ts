// Loads the config: file (YAML or JSON) + flag overrides → schema validation → defaults → resolution of users,
// groups, CIDRs, ports and durations → cross-field checks → a frozen Config. All problems are reported at once.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { MeshctlError } from '../errors.js';
import type { Cidr } from '../values/ip.js';
import type { PortRange } from '../values/ports.js';
import { cidrText, parseCidr } from '../values/ip.js';
import { POLICY_SECTIONS, resolvePolicy } from './policy.js';
import { systemHostFacts, type HostFacts, type UserEntry } from './host-facts.js';
import { validateSchema } from './schema.js';
import type { Config, PortSelection, CidrSelection, SafetyConfig } from './types.js';
import { parseDuration } from '../values/duration.js';
import { parsePortRange, portInRanges, portText, rangesOverlap } from '../values/ports.js';

export const DEFAULT_CONFIG_FILE = '/etc/meshctl/config.yaml';

/** A value set by a command-line flag at a config path (`proxy.outboundPort`). */
export interface FlagOverride {
  readonly path: string;
  readonly value: unknown;
  readonly flag: string;
}

export interface LoadOptions {
  /** Explicit --config; when absent the default file is used if it exists, else built-in defaults. */
  readonly file?: string;
  readonly flags?: readonly FlagOverride[];
  readonly env?: NodeJS.ProcessEnv;
  readonly host?: HostFacts;
  /** Policy sections from a control plane, replacing the file's sections of the same name. */
  readonly overlay?: PolicyOverlay | null;
  /** The network namespace the rules go to (--netns): sshd's listening ports are detected there. */
  readonly netns?: string | null;
}

/** A control-plane document: only the policy sections (services, outbound, inbound), and where it came from. */
export interface PolicyOverlay {
  readonly raw: Readonly<Record<string, unknown>>;
  /** Named in error messages instead of the file, e.g. `control plane http://10.0.0.2/policy (etag "v7")`. */
  readonly origin: string;
}

interface Problem {
  readonly path: string;
  readonly message: string;
}

function readRaw(file: string, explicit: boolean): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (!explicit && code === 'ENOENT') return undefined;
    throw new MeshctlError('CONFIG_NOT_FOUND', `cannot read config file ${file}: ${code ?? String(error)}`,
      code === 'ENOENT' ? 'check the path given to --config, or omit --config to use built-in defaults' : 'check the file permissions (meshctl reads it as the invoking user)',
      { cause: error });
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new MeshctlError('CONFIG_PARSE', `${file} is not valid YAML/JSON`, 'fix the syntax at the line shown; `meshctl config schema` prints what is allowed',
      { details: doc.errors.map((e) => e.message.split('\n')[0] ?? e.message) });
  }
  return doc.toJS() ?? {};
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split('.');
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[keys[keys.length - 1]!] = value;
}

function get(raw: unknown, path: string): unknown {
  let node = raw;
  for (const key of path.split('.')) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

/** Builds a Config from an already-parsed object; the loader's core, exported for tests and the proxy's reload. */
export function configFromObject(raw: unknown, options: { file?: string | null; flags?: readonly FlagOverride[]; env?: NodeJS.ProcessEnv; host?: HostFacts; overlay?: PolicyOverlay | null; netns?: string | null } = {}): Config {
  const host = options.host ?? systemHostFacts;
  const env = options.env ?? process.env;
  const sourceFile = options.file ?? null;
  const merged: Record<string, unknown> = structuredClone((raw ?? {}) as Record<string, unknown>);
  if (typeof merged !== 'object' || merged === null || Array.isArray(merged)) {
    throw new MeshctlError('CONFIG_INVALID', `${sourceFile ?? 'config'}: the top level must be a mapping of sections (proxy, capture, safety)`, 'see `meshctl config schema`');
  }
  const flagByPath = new Map<string, string>();
  for (const flag of options.flags ?? []) {
    setPath(merged, flag.path, flag.value);
    flagByPath.set(flag.path, flag.flag);
  }
  const overlay = options.overlay ?? null;
  if (overlay) {
    const foreign = Object.keys(overlay.raw).filter((k) => !(POLICY_SECTIONS as readonly string[]).includes(k));
    if (foreign.length > 0) {
      throw new MeshctlError('CONFIG_INVALID', `${overlay.origin}: a control-plane document may only hold ${POLICY_SECTIONS.join(', ')}; it has ${foreign.join(', ')}`,
        'serve only the policy sections; proxy, capture and safety settings stay in the local config file');
    }
    for (const [key, value] of Object.entries(overlay.raw)) merged[key] = structuredClone(value);
  }
  const where = (path: string): string => {
    for (const [flagPath, flag] of flagByPath) if (path === flagPath || path.startsWith(`${flagPath}[`) || path.startsWith(`${flagPath}.`)) return `flag ${flag}`;
    if (overlay) for (const key of Object.keys(overlay.raw)) if (path === key || path.startsWith(`${key}[`) || path.startsWith(`${key}.`)) return overlay.origin;
    return sourceFile ?? 'built-in defaults';
  };
  const fail = (problems: Problem[]): never => {
    const lines = problems.map((p) => `${p.path} (${where(p.path)}): ${p.message}`);
    throw new MeshctlError('CONFIG_INVALID', problems.length === 1 ? lines[0]! : `${problems.length} problems in the config`,
      'fix the values named above; `meshctl config schema` prints every field with what it allows',
      { details: problems.length === 1 ? [] : lines });
  };

  const schemaProblems = validateSchema(merged);
  if (schemaProblems.length > 0) fail(schemaProblems);

  const problems: Problem[] = [];
  const v = (path: string, fallback: unknown): unknown => get(merged, path) ?? fallback;

  const ports = (list: unknown[]): PortRange[] =>
    list.map((item) => (typeof item === 'number' ? { from: item, to: item } : (parsePortRange(String(item)) as PortRange)));
  const portSelection = (path: string): PortSelection => {
    const value = v(path, '*');
    return value === '*' ? 'all' : ports(value as unknown[]);
  };
  const cidrs = (list: unknown[]): Cidr[] => list.map((item) => parseCidr(String(item)) as Cidr);
  const cidrSelection = (path: string): CidrSelection => {
    const value = v(path, '*');
    return value === '*' ? 'all' : cidrs(value as unknown[]);
  };
  const duration = (path: string, fallback: string, allowOff: boolean): number | null => {
    const ms = parseDuration(String(v(path, fallback))) as number | null;
    if (ms === null && !allowOff) problems.push({ path, message: '"off" is not allowed here; give a duration such as "30s"' });
    return ms;
  };
  const ids = (path: string, kind: 'user' | 'group'): number[] =>
    ((v(path, []) as unknown[]) ?? []).flatMap((ref, i) => {
      if (typeof ref === 'number') return [ref];
      const entry = kind === 'user' ? host.userDb.user(ref as string) : host.userDb.group(ref as string);
      if (entry === null) {
        problems.push({ path: `${path}[${i}]`, message: `${kind} "${String(ref)}" does not exist in the ${kind === 'user' ? 'passwd' : 'group'} database; use a numeric id or create it` });
        return [];
      }
      return [kind === 'user' ? (entry as UserEntry).uid : entry.gid];
    });

  // Proxy user: its uid AND its real primary gid are exempt from capture, so both must be known.
  const userRef = v('proxy.user', 'meshproxy') as string | number;
  const groupRef = get(merged, 'proxy.group') as string | number | undefined;
  const userEntry = host.userDb.user(userRef);
  let uid = typeof userRef === 'number' ? userRef : -1;
  let gid = -1;
  let userName: string | null = null;
  if (userEntry) {
    uid = userEntry.uid;
    gid = userEntry.gid;
    userName = userEntry.name;
  } else if (typeof userRef === 'string') {
    throw new MeshctlError('USER_NOT_FOUND', `proxy.user (${where('proxy.user')}): user "${userRef}" does not exist`,
      userRef === 'meshproxy' ? 'create it (`meshctl service install` does, via sysusers.d) or set proxy.user to an existing non-root user' : 'create the user, or set proxy.user to an existing non-root user or uid');
  }
  if (groupRef !== undefined) {
    const groupEntry = typeof groupRef === 'number' ? { gid: groupRef } : host.userDb.group(groupRef);
    if (!groupEntry) {
      throw new MeshctlError('USER_NOT_FOUND', `proxy.group (${where('proxy.group')}): group "${String(groupRef)}" does not exist`, 'create the group or give a numeric gid');
    }
    gid = groupEntry.gid;
  }
  if (gid < 0) {
    throw new MeshctlError('USER_NOT_FOUND', `proxy.user (${where('proxy.user')}): uid ${uid} has no passwd entry, so its primary group is unknown`,
      'set proxy.group to the gid the proxy runs with, or create the user');
  }
  if (uid === 0) problems.push({ path: 'proxy.user', message: 'the proxy must not run as root (uid 0): exempting uid 0 from capture would let every root process bypass the mesh; use a dedicated user such as "meshproxy"' });
  if (gid === 0 && uid !== 0) problems.push({ path: groupRef !== undefined ? 'proxy.group' : 'proxy.user', message: 'the proxy\'s group is root (gid 0): exempting gid 0 would let root-group processes bypass the mesh; give the proxy user its own group' });

  const outboundPort = v('proxy.outboundPort', 15001) as number;
  const inboundPort = v('proxy.inboundPort', 15006) as number;
  const adminPort = v('proxy.adminPort', 15000) as number;
  const dnsPort = v('capture.dns.port', 15053) as number;
  const dnsEnabled = v('capture.dns.enabled', false) as boolean;
  const named: [string, number][] = [['proxy.outboundPort', outboundPort], ['proxy.inboundPort', inboundPort], ['proxy.adminPort', adminPort]];
  if (dnsEnabled) named.push(['capture.dns.port', dnsPort]);
  for (let i = 0; i < named.length; i++)
    for (let j = i + 1; j < named.length; j++)
      if (named[i]![1] === named[j]![1]) problems.push({ path: named[j]![0], message: `port ${named[j]![1]} is also ${named[i]![0]}; each proxy port must be distinct` });

  const inboundInclude = portSelection('capture.inbound.includePorts');
  const inboundExclude = ports(v('capture.inbound.excludePorts', []) as unknown[]);
  const outboundIncludePorts = portSelection('capture.outbound.includePorts');
  const outboundExcludePorts = ports(v('capture.outbound.excludePorts', []) as unknown[]);
  const includeCidrs = cidrSelection('capture.outbound.includeCidrs');
  const excludeCidrs = cidrs(v('capture.outbound.excludeCidrs', []) as unknown[]);
  const excludeUids = ids('capture.outbound.excludeUids', 'user');
  const excludeGids = ids('capture.outbound.excludeGids', 'group');
  const includeGidsRaw = v('capture.outbound.includeGids', '*');
  const includeGids = includeGidsRaw === '*' ? ('all' as const) : ids('capture.outbound.includeGids', 'group');
  const dnsServers = cidrSelection('capture.dns.servers');
  const ipv6 = v('capture.ipv6', 'intercept') as Config['capture']['ipv6'];

  const conflictPorts = (includePath: string, include: PortSelection, excludePath: string, exclude: readonly PortRange[]) => {
    if (include === 'all') return;
    include.forEach((inc, i) =>
      exclude.forEach((exc, j) => {
        if (rangesOverlap(inc, exc)) problems.push({ path: `${includePath}[${i}]`, message: `port ${portText(inc)} is also excluded by ${excludePath}[${j}] (${portText(exc)}); a port cannot be both included and excluded` });
      }),
    );
  };
  conflictPorts('capture.inbound.includePorts', inboundInclude, 'capture.inbound.excludePorts', inboundExclude);
  conflictPorts('capture.outbound.includePorts', outboundIncludePorts, 'capture.outbound.excludePorts', outboundExcludePorts);
  if (includeCidrs !== 'all') {
    includeCidrs.forEach((inc, i) => {
      const j = excludeCidrs.findIndex((exc) => exc.family === inc.family && exc.address === inc.address && exc.prefix === inc.prefix);
      if (j >= 0) problems.push({ path: `capture.outbound.includeCidrs[${i}]`, message: `${cidrText(inc)} is also in capture.outbound.excludeCidrs[${j}]; a CIDR cannot be both included and excluded` });
    });
  }
  if (includeGids !== 'all' && excludeGids.length > 0) {
    problems.push({ path: 'capture.outbound.includeGids', message: 'cannot be combined with capture.outbound.excludeGids: with an allow-list of groups, every other group is already excluded' });
  }
  for (const [path, range] of (inboundInclude === 'all' ? [] : inboundInclude).map((r, i) => [`capture.inbound.includePorts[${i}]`, r] as const)) {
    const hits = named.filter(([, port]) => portInRanges(port, [range])).map(([name, port]) => `${name} ${port}`);
    if (hits.length > 0) problems.push({ path, message: `includes ${hits.join(', ')}: the proxy's own ports are never captured` });
  }

  // SSH: the configured ports, else the ports sshd really listens on (in the namespace the rules go to).
  const configuredSsh = get(merged, 'safety.sshPorts') as number[] | undefined;
  const ssh = configuredSsh ? { ports: configuredSsh, source: 'config' as const } : host.detectSshPorts(options.netns ?? null);
  const unsafeCaptureSsh = v('safety.unsafeCaptureSsh', false) as boolean;
  if (!unsafeCaptureSsh && inboundInclude !== 'all') {
    inboundInclude.forEach((range, i) => {
      const hit = ssh.ports.find((p) => portInRanges(p, [range]));
      if (hit !== undefined) {
        throw new MeshctlError('UNSAFE_CONFIG', `capture.inbound.includePorts[${i}] (${where(`capture.inbound.includePorts[${i}]`)}): ${portText(range)} includes SSH port ${hit} (safety.sshPorts from ${ssh.source}); capturing it can lock you out`,
          'remove the SSH port from includePorts; only if you are sure, pass --unsafe-capture-ssh (safety.unsafeCaptureSsh: true)');
      }
    });
  }
  const sshPeer = parseSshConnection(env.SSH_CONNECTION);

  if (problems.length > 0) fail(problems);

  const safety: SafetyConfig = {
    sshPorts: [...ssh.ports],
    sshPortsSource: ssh.source,
    unsafeCaptureSsh,
    sshPeer,
    onProxyDown: v('safety.onProxyDown', 'closed') as SafetyConfig['onProxyDown'],
  };
  const body = {
    proxy: {
      user: { name: userName, uid, gid },
      outboundPort,
      inboundPort,
      adminPort,
      adminAddress: '127.0.0.1',
      workers: v('proxy.workers', 'auto') as number | 'auto',
      connectTimeoutMs: duration('proxy.connectTimeout', '10s', false) as number,
      idleTimeoutMs: duration('proxy.idleTimeout', 'off', true),
      maxConnectionDurationMs: duration('proxy.maxConnectionDuration', 'off', true),
      halfCloseTimeoutMs: duration('proxy.halfCloseTimeout', '60s', false) as number,
      drainTimeoutMs: duration('proxy.drainTimeout', '20s', false) as number,
      keepaliveDelayMs: duration('proxy.keepalive', '30s', true),
      relay: v('proxy.relay', 'native') as 'native' | 'node',
      accessLog: {
        enabled: v('proxy.accessLog.enabled', true) as boolean,
        path: (get(merged, 'proxy.accessLog.path') as string | null | undefined) ?? null,
        sampleRatio: v('proxy.accessLog.sampleRatio', 1) as number,
        periodicIntervalMs: duration('proxy.accessLog.periodicInterval', 'off', true),
      },
      inboundPassthroughSource: { ipv4: '127.0.0.6', ipv6: '::6' },
    },
    capture: {
      backend: v('capture.backend', 'auto') as Config['capture']['backend'],
      ipv6,
      dropInvalid: v('capture.dropInvalid', false) as boolean,
      excludeInterfaces: v('capture.excludeInterfaces', []) as string[],
      inbound: {
        enabled: v('capture.inbound.enabled', true) as boolean,
        mode: v('capture.inbound.mode', 'redirect') as 'redirect' | 'tproxy',
        includePorts: inboundInclude,
        excludePorts: inboundExclude,
        tproxyMark: v('capture.inbound.tproxyMark', 1337) as number,
        tproxyRouteTable: v('capture.inbound.tproxyRouteTable', 133) as number,
      },
      outbound: {
        enabled: v('capture.outbound.enabled', true) as boolean,
        includeCidrs,
        excludeCidrs,
        includePorts: outboundIncludePorts,
        excludePorts: outboundExcludePorts,
        excludeUids,
        excludeGids,
        includeGids,
      },
      dns: { enabled: dnsEnabled, port: dnsPort, servers: dnsServers },
    },
    safety,
    stateDir: v('stateDir', '/var/lib/meshctl') as string,
  };
  const policy = resolvePolicy(
    { services: merged.services, outbound: merged.outbound, inbound: merged.inbound, controlPlane: merged.controlPlane },
    { connectTimeoutMs: body.proxy.connectTimeoutMs },
    problems,
  );
  if (problems.length > 0) fail(problems);
  const full = { ...body, ...policy };
  const hash = createHash('sha256').update(JSON.stringify(full)).digest('hex');
  // The flags are where values came from, not values: two routes to the same config have the same hash.
  const flags = (options.flags ?? []).map((f) => (f.value === true ? f.flag : `${f.flag} ${Array.isArray(f.value) ? f.value.join(',') : String(f.value)}`));
  return deepFreeze({ file: sourceFile, flags, hash, ...full });
}

/** SSH_CONNECTION is "client_ip client_port server_ip server_port"; anything else is ignored. */
export function parseSshConnection(value: string | undefined): SafetyConfig['sshPeer'] {
  if (!value) return null;
  const parts = value.trim().split(/\s+/);
  if (parts.length !== 4) return null;
  const [address, port, localAddress, localPort] = parts as [string, string, string, string];
  if (typeof parseCidr(address) === 'string' || typeof parseCidr(localAddress) === 'string') return null;
  return { address, port: Number(port), localAddress, localPort: Number(localPort) };
}

/** Reads the config file (or defaults), applies flags, validates and resolves. Throws MeshctlError. */
export async function loadConfig(options: LoadOptions = {}): Promise<Config> {
  const explicit = options.file !== undefined;
  const file = options.file ?? DEFAULT_CONFIG_FILE;
  const raw = readRaw(file, explicit);
  return configFromObject(raw ?? {}, {
    file: raw === undefined ? null : file,
    ...(options.overlay ? { overlay: options.overlay } : {}),
    ...(options.flags ? { flags: options.flags } : {}),
    ...(options.env ? { env: options.env } : {}),
    ...(options.host ? { host: options.host } : {}),
    ...(options.netns ? { netns: options.netns } : {}),
  });
}
