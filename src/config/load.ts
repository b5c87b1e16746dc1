// Loads the config as a short pipeline: file (YAML or JSON) + flag overrides + control-plane overlay → schema
// validation → the field table (./fields.ts: defaults from the schema, users, groups, CIDRs, ports, durations) →
// the named cross-field checks (./checks.ts) → the policy sections (./policy.ts) → a frozen Config with its hash.
// All problems are reported at once.
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { MeshctlError } from '../errors.js';
import { parseCidr } from '../values/ip.js';
import { mtlsServicesHaveIdentity, runChecks } from './checks.js';
import { NOT_JSON, readJson, withYaml } from './document.js';
import {
  PROXY_GROUP,
  PROXY_USER,
  readField,
  resolveFields,
  SSH_PORTS,
  type ConfigBody,
  type DerivedValues,
  type ReadContext,
} from './fields.js';
import { systemHostFacts, type HostFacts, type UserDb } from './host-facts.js';
import { setPath, valueAt } from './paths.js';
import { OVERLAY_MTLS_FIELDS, POLICY_SECTIONS, resolvePolicy, type ResolvedPolicy } from './policy.js';
import { configSchema, isNearKey, schemaDefault, shownKey, validateSchema } from './schema.js';
import type { Config, ProxyUser, SafetyConfig } from './types.js';

export const DEFAULT_CONFIG_FILE = '/etc/meshctl/config.yaml';

/** A value set by a command-line flag at a config path (`proxy.outboundPort`). */
export interface FlagOverride {
  readonly path: string;
  readonly value: unknown;
  readonly flag: string;
}

/** Everything besides the raw object that resolution depends on. */
export interface ResolveOptions {
  /** The file the raw object came from (named in errors); null or absent for built-in defaults. */
  readonly file?: string | null;
  readonly flags?: readonly FlagOverride[];
  readonly env?: NodeJS.ProcessEnv;
  readonly host?: HostFacts;
  /** Policy sections from a control plane, replacing the file's sections of the same name. */
  readonly overlay?: PolicyOverlay | null;
  /** The network namespace the rules go to (--netns): sshd's listening ports are detected there. */
  readonly netns?: string | null;
}

export interface LoadOptions extends Omit<ResolveOptions, 'file'> {
  /** Explicit --config; when absent the default file is used if it exists, else built-in defaults. */
  readonly file?: string;
}

/** A control-plane document: only the policy sections (services, outbound, inbound, mtls.peers), and where it came from. */
export interface PolicyOverlay {
  readonly raw: Readonly<Record<string, unknown>>;
  /** Named in error messages instead of the file, e.g. `control plane http://10.0.0.2/policy (etag "v7")`. */
  readonly origin: string;
}

interface Problem {
  readonly path: string;
  readonly message: string;
}

/** A config file is small; anything larger is not one (and is not read into memory). */
const MAX_CONFIG_BYTES = 1 << 20;

function readRaw(file: string, explicit: boolean): unknown {
  let text: string;
  try {
    // Only a regular file: a FIFO or a device (/dev/zero, /dev/urandom) would block or never end.
    const st = statSync(file);
    if (!st.isFile()) {
      throw new MeshctlError(
        'CONFIG_NOT_FOUND',
        `cannot read config file ${file}: it is not a regular file (${st.isFIFO() ? 'a FIFO' : st.isDirectory() ? 'a directory' : st.isCharacterDevice() ? 'a character device' : st.isBlockDevice() ? 'a block device' : st.isSocket() ? 'a socket' : 'not a file'})`,
        'give --config the path of a YAML or JSON file',
      );
    }
    if (st.size > MAX_CONFIG_BYTES) {
      throw new MeshctlError(
        'CONFIG_INVALID',
        `config file ${file} is ${st.size} bytes; a config is at most ${MAX_CONFIG_BYTES} bytes`,
        'check that --config names the config file',
      );
    }
    text = readFileSync(file, 'utf8');
  } catch (error) {
    if (error instanceof MeshctlError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    if (!explicit && code === 'ENOENT') return undefined;
    throw new MeshctlError(
      'CONFIG_NOT_FOUND',
      `cannot read config file ${file}: ${code ?? String(error)}`,
      code === 'ENOENT'
        ? 'check the path given to --config, or omit --config to use built-in defaults'
        : 'check the file permissions (meshctl reads it as the invoking user)',
      { cause: error },
    );
  }
  const json = readJson(text);
  if (json !== NOT_JSON) return json ?? {};
  return withYaml((yaml) => {
    const doc = yaml.parseDocument(text, { prettyErrors: true, uniqueKeys: true });
    if (doc.errors.length > 0) {
      throw new MeshctlError(
        'CONFIG_PARSE',
        `${file} is not valid YAML/JSON`,
        'fix the syntax at the line shown; `meshctl config schema` prints what is allowed',
        { details: doc.errors.map((e) => e.message.split('\n')[0] ?? e.message) },
      );
    }
    try {
      // The yaml library bounds alias expansion (a "billion laughs" document throws instead of exhausting memory).
      return (doc.toJS({ maxAliasCount: 100 }) as unknown) ?? {};
    } catch (error) {
      throw new MeshctlError(
        'CONFIG_PARSE',
        `${file} is not a config meshctl can read: ${(error as Error).message}`,
        'write the config without YAML aliases that expand into large structures',
        { cause: error },
      );
    }
  });
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

/** The raw config after flags and overlay, and `where`: the origin of the value at a path, for messages. */
interface Sources {
  readonly merged: Record<string, unknown>;
  where(path: string): string;
}

/** What a non-plain value the YAML parser built is called, for the message. */
function yamlKind(value: object): string | null {
  if (value instanceof Set) return 'a YAML !!set';
  if (value instanceof Map) return 'a YAML ordered map (!!omap or !!pairs)';
  if (value instanceof Date) return 'a YAML timestamp';
  if (ArrayBuffer.isView(value)) return 'YAML !!binary data';
  const proto: unknown = Object.getPrototypeOf(value);
  return Array.isArray(value) || proto === Object.prototype || proto === null ? null : 'not plain data';
}

/**
 * Refuses a value that is not plain data (a mapping, list, string, number, boolean or null) anywhere in `raw`: the
 * schema would take a YAML !!set for an empty mapping. Walks with a stack, so deep nesting cannot overflow it.
 */
function refuseNonPlainData(raw: unknown, origin: string): void {
  const stack: [unknown, string][] = [[raw, '']];
  while (stack.length > 0) {
    const [value, path] = stack.pop()!;
    if (typeof value !== 'object' || value === null) continue;
    const kind = yamlKind(value);
    if (kind !== null) {
      throw new MeshctlError(
        'CONFIG_INVALID',
        `${path === '' ? '(top level)' : path} (${origin}): is ${kind}, which no config field accepts`,
        path === '' || !path.includes('.')
          ? 'write the section as a mapping of its fields; `meshctl config schema` prints them'
          : 'write the value as a mapping, a list or a scalar; `meshctl config schema` prints what each field accepts',
      );
    }
    if (Array.isArray(value)) value.forEach((item, i) => stack.push([item, `${path}[${i}]`]));
    else
      for (const [key, item] of Object.entries(value))
        stack.push([item, path === '' ? shownKey(key) : `${path}.${shownKey(key)}`]);
  }
}

/**
 * Refuses a file that is clearly not a meshctl config (/etc/shadow given to --config by mistake): a mapping none of
 * whose top-level keys is a config section or a near miss of one. One line, and no key or value of it is shown.
 */
function refuseForeignFile(raw: unknown, file: string | null): void {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return;
  const keys = Object.keys(raw);
  const sections = Object.keys((configSchema.properties ?? {}) as object);
  if (keys.length === 0 || keys.some((key) => isNearKey(key, sections))) return;
  throw new MeshctlError(
    'CONFIG_INVALID',
    `${file ?? 'config'} is not a meshctl config: none of its ${keys.length} top-level keys is a config section (${sections.join(', ')})`,
    'check that --config names the meshctl config file (YAML or JSON); `meshctl config schema` prints what it holds',
  );
}

const under = (path: string, prefix: string): boolean =>
  path === prefix || path.startsWith(`${prefix}[`) || path.startsWith(`${prefix}.`);

function mergeSources(raw: unknown, options: ResolveOptions): Sources {
  const sourceFile = options.file ?? null;
  refuseNonPlainData(raw, sourceFile ?? 'config');
  refuseForeignFile(raw, sourceFile);
  const merged: unknown = structuredClone(raw ?? {});
  if (typeof merged !== 'object' || merged === null || Array.isArray(merged)) {
    throw new MeshctlError(
      'CONFIG_INVALID',
      `${sourceFile ?? 'config'}: the top level must be a mapping of sections (proxy, capture, safety)`,
      'see `meshctl config schema`',
    );
  }
  const mapping = merged as Record<string, unknown>;
  const flagByPath = new Map<string, string>();
  for (const flag of options.flags ?? []) {
    setPath(mapping, flag.path, flag.value);
    flagByPath.set(flag.path, flag.flag);
  }
  const overlay = options.overlay ?? null;
  /** The paths the overlay sets: its sections, and mtls.peers rather than the whole mtls section. */
  const overlaid: string[] = [];
  if (overlay) {
    const allowed = [...POLICY_SECTIONS, 'mtls'];
    const foreign = Object.keys(overlay.raw).filter((k) => !allowed.includes(k));
    if (foreign.length > 0) {
      throw new MeshctlError(
        'CONFIG_INVALID',
        `${overlay.origin}: a control-plane document may only hold ${POLICY_SECTIONS.join(', ')} and mtls.peers; it has ${foreign.join(', ')}`,
        'serve only the policy sections; proxy, capture and safety settings stay in the local config file',
      );
    }
    refuseNonPlainData(overlay.raw, overlay.origin);
    for (const [key, value] of Object.entries(overlay.raw)) {
      if (key !== 'mtls') {
        mapping[key] = structuredClone(value);
        overlaid.push(key);
        continue;
      }
      for (const field of overlayMtlsFields(value, overlay.origin)) {
        const local = mapping.mtls;
        const mtls = typeof local === 'object' && local !== null && !Array.isArray(local) ? local : {};
        mapping.mtls = { ...mtls, [field]: structuredClone((value as Record<string, unknown>)[field]) };
        overlaid.push(`mtls.${field}`);
      }
    }
  }
  const where = (path: string): string => {
    for (const [flagPath, flag] of flagByPath) if (under(path, flagPath)) return `flag ${flag}`;
    if (overlay) for (const key of overlaid) if (under(path, key)) return overlay.origin;
    return sourceFile ?? 'built-in defaults';
  };
  return { merged: mapping, where };
}

/**
 * The fields of a control-plane document's `mtls` (a mapping holding only OVERLAY_MTLS_FIELDS); CONFIG_INVALID
 * naming the origin and what it holds otherwise (identity, inbound and tunnelPort stay in the local file).
 */
function overlayMtlsFields(value: unknown, origin: string): string[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new MeshctlError(
      'CONFIG_INVALID',
      `mtls (${origin}): must be a mapping holding peers, got ${JSON.stringify(value)}`,
      'serve mtls: { peers: [CIDR, …] }, or leave mtls out of the document',
    );
  }
  const keys = Object.keys(value);
  const foreign = keys.filter((k) => !(OVERLAY_MTLS_FIELDS as readonly string[]).includes(k));
  if (foreign.length > 0) {
    throw new MeshctlError(
      'CONFIG_INVALID',
      `mtls (${origin}): a control-plane document may only hold mtls.${OVERLAY_MTLS_FIELDS.join(', mtls.')}; it has ${foreign.map((k) => `mtls.${shownKey(k)}`).join(', ')}`,
      "this proxy's identity, inbound mode and tunnel port stay in the local config file",
    );
  }
  return keys;
}

/** Throws CONFIG_INVALID naming every problem with its origin; returns when there are none. */
function failOnProblems(problems: readonly Problem[], where: (path: string) => string): void {
  if (problems.length === 0) return;
  const lines = problems.map((p) => `${p.path} (${where(p.path)}): ${p.message}`);
  throw new MeshctlError(
    'CONFIG_INVALID',
    problems.length === 1 ? lines[0]! : `${problems.length} problems in the config`,
    'fix the values named above; `meshctl config schema` prints every field with what it allows',
    { details: problems.length === 1 ? [] : lines },
  );
}

/**
 * The proxy user's uid and real primary gid (or proxy.group): both are exempt from capture, so both must be known.
 * Throws USER_NOT_FOUND for a name the database lacks, or a uid without passwd entry and no proxy.group.
 */
function resolveProxyUser(
  userRef: string | number,
  groupRef: string | number | undefined,
  userDb: UserDb,
  where: (path: string) => string,
): ProxyUser {
  const userEntry = userDb.user(userRef);
  let uid = typeof userRef === 'number' ? userRef : -1;
  let gid = -1;
  let name: string | null = null;
  if (userEntry) {
    ({ uid, gid, name } = userEntry);
  } else if (typeof userRef === 'string') {
    throw new MeshctlError(
      'USER_NOT_FOUND',
      `proxy.user (${where('proxy.user')}): user "${userRef}" does not exist`,
      userRef === 'meshproxy'
        ? 'create it (`meshctl service install` does, via sysusers.d) or set proxy.user to an existing non-root user'
        : 'create the user, or set proxy.user to an existing non-root user or uid',
    );
  }
  if (groupRef !== undefined) {
    const groupEntry = typeof groupRef === 'number' ? { gid: groupRef } : userDb.group(groupRef);
    if (!groupEntry) {
      throw new MeshctlError(
        'USER_NOT_FOUND',
        `proxy.group (${where('proxy.group')}): group "${String(groupRef)}" does not exist`,
        'create the group or give a numeric gid',
      );
    }
    gid = groupEntry.gid;
  }
  if (gid < 0) {
    throw new MeshctlError(
      'USER_NOT_FOUND',
      `proxy.user (${where('proxy.user')}): uid ${uid} has no passwd entry, so its primary group is unknown`,
      'set proxy.group to the gid the proxy runs with, or create the user',
    );
  }
  return { name, uid, gid };
}

/** The Config values no single field gives: the proxy user, the SSH ports (configured, else detected) and session. */
function resolveDerived(
  sources: Sources,
  options: ResolveOptions,
  host: HostFacts,
  context: ReadContext,
): DerivedValues {
  const user = resolveProxyUser(
    readField(PROXY_USER, sources.merged, context),
    readField(PROXY_GROUP, sources.merged, context),
    host.userDb,
    sources.where,
  );
  // The configured ports, else the ports sshd really listens on (in the namespace the rules go to).
  const configured = readField(SSH_PORTS, sources.merged, context);
  const ssh = configured
    ? { ports: configured, source: 'config' as const }
    : host.detectSshPorts(options.netns ?? null);
  return {
    'proxy.user': user,
    'safety.sshPorts': [...ssh.ports],
    'safety.sshPortsSource': ssh.source,
    'safety.sshPeer': parseSshConnection((options.env ?? process.env).SSH_CONNECTION),
  };
}

/**
 * What the hash is taken over: the config without the mTLS settings while they are all at their defaults (mTLS
 * off), so that configs written before mTLS existed keep the hash their ledgers hold.
 */
function hashView(full: ConfigBody & ResolvedPolicy): unknown {
  const { mtls, services } = full;
  const off =
    mtls.inbound === 'disable' &&
    mtls.peers.length === 0 &&
    !mtls.allowPlaintextFallback &&
    mtls.tunnelPort === schemaDefault('mtls.tunnelPort') &&
    Object.values(mtls.identity).every((f) => f === null);
  const allPlain = services.every((s) => !s.mtls && s.identities.length === 0);
  const view: Record<string, unknown> = {};
  // In the config's own key order: the hash is over JSON text.
  for (const [key, value] of Object.entries(full)) {
    if (key === 'mtls' && off) continue;
    view[key] = key === 'services' && allPlain ? services.map(({ mtls: _on, identities: _ids, ...s }) => s) : value;
  }
  // Likewise proxy.relayThreads at its default, which older configs could not set.
  if (full.proxy.relayThreads === 'auto') {
    const { relayThreads: _auto, ...proxy } = full.proxy;
    view.proxy = proxy;
  }
  // Likewise the unit lists while they are at their defaults (no unit named), which older configs could not set.
  const out = full.capture.outbound;
  if (out.excludeUnits.length === 0 && out.includeUnits === 'all') {
    const { excludeUnits: _none, includeUnits: _all, ...outbound } = out;
    view.capture = { ...full.capture, outbound };
  }
  return view;
}

/** Freezes the resolved config and adds its hash (over the values, not where they came from). */
function sealConfig(body: ConfigBody, policy: ResolvedPolicy, options: ResolveOptions): Config {
  const full = { ...body, ...policy };
  const hash = createHash('sha256')
    .update(JSON.stringify(hashView(full)))
    .digest('hex');
  // The flags are where values came from, not values: two routes to the same config have the same hash.
  const flags = (options.flags ?? []).map((f) =>
    f.value === true ? f.flag : `${f.flag} ${Array.isArray(f.value) ? f.value.join(',') : String(f.value)}`,
  );
  return deepFreeze({ file: options.file ?? null, flags, hash, ...full });
}

/** Builds a Config from an already-parsed object; the loader's core, exported for tests and the proxy's reload. */
export function configFromObject(raw: unknown, options: ResolveOptions = {}): Config {
  const sources = mergeSources(raw, options);
  failOnProblems(validateSchema(sources.merged), sources.where);
  const host = options.host ?? systemHostFacts;
  const problems: Problem[] = [];
  const context: ReadContext = {
    userDb: host.userDb,
    problem: (path, message) => problems.push({ path, message }),
    ...(host.unitCgroup ? { unitCgroup: host.unitCgroup } : {}),
  };
  const body = resolveFields(sources.merged, resolveDerived(sources, options, host, context), context);
  const checked = runChecks({ config: body, given: (path) => valueAt(sources.merged, path) !== undefined });
  const unsafe = checked.find((p) => p.unsafe !== undefined);
  if (unsafe?.unsafe)
    throw new MeshctlError(
      'UNSAFE_CONFIG',
      `${unsafe.path} (${sources.where(unsafe.path)}): ${unsafe.message}`,
      unsafe.unsafe.hint,
    );
  problems.push(...checked);
  const { services, outbound, inbound, controlPlane } = sources.merged;
  const policy = resolvePolicy(
    { services, outbound, inbound, controlPlane },
    { connectTimeoutMs: body.proxy.connectTimeoutMs },
    problems,
  );
  problems.push(...mtlsServicesHaveIdentity(body, policy.services));
  failOnProblems(problems, sources.where);
  return sealConfig(body, policy, options);
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
