// The field table: every value of Config's proxy, capture and safety sections and stateDir, in Config's key order
// (the config hash is taken over that order, and the ledger keeps the hash). A field entry names the file path it is
// read from, its parser (./parsers.ts: raw → typed, and back for `meshctl config validate`), where it lands in
// Config when that differs, and its command-line flag. Defaults are not written here: they are the schema's
// `default` keyword (rules/meshctl.schema.json), read at load. Values that no single file field gives are
// `derived` (the proxy user, the SSH ports, filled by ./load.ts) or `constant`. The policy sections (services,
// outbound, inbound, controlPlane) are resolved by ./policy.ts.
//
// To add a field: the schema (with its `default`), one entry here, the property in ./types.ts, a README row.
// The compiler holds each entry's parser to the Config type at its path, and every Config leaf to an entry;
// test/unit/config-fields.test.ts holds the table to the schema.
import type { UserDb } from './host-facts.js';
import type { UnitCgroupResolver } from './unit-cgroups.js';
import type { Config } from './types.js';
import { BACKEND_CHOICES, INBOUND_MODES, IPV6_MODES, MTLS_INBOUND_MODES, ON_PROXY_DOWN, RELAY_KINDS } from './types.js';
import type { Parser } from './parsers.js';
import {
  boolean,
  cidrs,
  cidrSelection,
  duration,
  durationOrOff,
  groupIds,
  groupSelection,
  idName,
  idRef,
  number,
  oneOf,
  optional,
  port,
  portNumbers,
  ports,
  portSelection,
  text,
  textOrNull,
  texts,
  units,
  unitSelection,
  userIds,
  workers,
} from './parsers.js';
import { setPath, valueAt } from './paths.js';
import { schemaDefault } from './schema.js';

/** The type at a dotted path of T; never when T has no such path. */
type At<T, P extends string> = P extends `${infer K}.${infer R}`
  ? K extends keyof T
    ? At<T[K], R>
    : never
  : P extends keyof T
    ? T[P]
    : never;

/** The part of Config the table builds. */
export type ConfigBody = Pick<Config, 'proxy' | 'capture' | 'safety' | 'stateDir' | 'mtls'>;

/**
 * A command-line flag mirroring the field (`--proxy-outbound-port`); `showDefault` appends the schema's default.
 * `proxyOnly` flags set what only the running proxy reads: `meshctl proxy` offers them, the other commands do not.
 */
export interface FlagDoc {
  readonly name: string;
  readonly help: string;
  readonly showDefault?: boolean;
  readonly proxyOnly?: boolean;
}

/** A flag of `meshctl proxy` alone, its help ending in the schema's default. */
const proxyFlag = (name: string, help: string): FlagDoc => ({ name, help, showDefault: true, proxyOnly: true });

export interface FieldEntry<T = unknown, To extends string | null = string | null> {
  readonly kind: 'field';
  /** Where the file (or a flag) sets it. */
  readonly path: string;
  /** Where it lands in Config; null for an input a later step resolves (the proxy user, the SSH ports). */
  readonly to: To;
  readonly parser: Parser<T>;
  readonly flag: FlagDoc | null;
  /** For an input: its value in the file's form, read back from the resolved Config. */
  readonly renderFrom: ((config: Config, names: UserDb | null) => unknown) | null;
}

/** Config values that no single field gives: resolved by ./load.ts from inputs and host facts. */
export type DerivedPath = 'proxy.user' | 'safety.sshPorts' | 'safety.sshPortsSource' | 'safety.sshPeer';
export type DerivedValues = { readonly [P in DerivedPath]: At<Config, P> };

export interface DerivedEntry {
  readonly kind: 'derived';
  readonly to: DerivedPath;
}

export interface ConstantEntry<To extends string = string> {
  readonly kind: 'constant';
  readonly to: To;
  readonly value: unknown;
}

export type Entry = FieldEntry | DerivedEntry | ConstantEntry;

/** A file field that lands at Config path `to` (default: the same path); its parser must give that path's type. */
function field<const P extends string, const To extends string = P>(
  path: P,
  parser: Parser<At<Config, To>>,
  options: { readonly to?: To; readonly flag?: FlagDoc } = {},
): FieldEntry<At<Config, To>, To> {
  // With no `to`, To is P (the generic's default), so the path itself is the Config path.
  const to = (options.to ?? path) as To;
  return { kind: 'field', path, to, parser, flag: options.flag ?? null, renderFrom: null };
}

/** A file field read by a later step instead of landing in Config as is. */
function input<T>(
  path: string,
  parser: Parser<T>,
  renderFrom: (config: Config, names: UserDb | null) => unknown,
  flag?: FlagDoc,
): FieldEntry<T, null> {
  return { kind: 'field', path, to: null, parser, flag: flag ?? null, renderFrom };
}

function derived<const To extends DerivedPath>(to: To): DerivedEntry & { readonly to: To } {
  return { kind: 'derived', to };
}

function constant<const To extends string>(to: To, value: At<Config, To>): ConstantEntry<To> {
  return { kind: 'constant', to, value };
}

export const PROXY_USER = input('proxy.user', idRef, (c) => c.proxy.user.name ?? c.proxy.user.uid, {
  name: 'proxy-user',
  help: 'user the proxy runs as (name or uid; exempt from capture)',
});
export const PROXY_GROUP = input(
  'proxy.group',
  optional(idRef),
  (c, names) => idName('group', c.proxy.user.gid, names),
  { name: 'proxy-group', help: "group exempt from capture (default: the user's primary group)" },
);
export const SSH_PORTS = input('safety.sshPorts', optional(portNumbers), (c) => [...c.safety.sshPorts], {
  name: 'ssh-ports',
  help: 'SSH ports never captured (default: detected from sshd)',
});

export const FIELDS = [
  PROXY_USER,
  PROXY_GROUP,
  derived('proxy.user'),
  field('proxy.outboundPort', port, {
    flag: { name: 'proxy-outbound-port', help: 'outbound listener port', showDefault: true },
  }),
  field('proxy.inboundPort', port, {
    flag: { name: 'proxy-inbound-port', help: 'inbound listener port', showDefault: true },
  }),
  field('proxy.adminPort', port, {
    flag: { name: 'proxy-admin-port', help: 'admin port on 127.0.0.1', showDefault: true },
  }),
  constant('proxy.adminAddress', '127.0.0.1'),
  field('proxy.workers', workers, {
    flag: proxyFlag('proxy-workers', 'worker processes, or "auto" (1 with the native relay, else one per core)'),
  }),
  field('proxy.connectTimeout', duration, {
    to: 'proxy.connectTimeoutMs',
    flag: proxyFlag('proxy-connect-timeout', 'upstream connect timeout'),
  }),
  field('proxy.idleTimeout', durationOrOff, {
    to: 'proxy.idleTimeoutMs',
    flag: proxyFlag('proxy-idle-timeout', 'close connections idle this long, or "off"'),
  }),
  field('proxy.maxConnectionDuration', durationOrOff, {
    to: 'proxy.maxConnectionDurationMs',
    flag: proxyFlag('proxy-max-connection-duration', 'close connections older than this, or "off"'),
  }),
  field('proxy.halfCloseTimeout', duration, {
    to: 'proxy.halfCloseTimeoutMs',
    flag: proxyFlag('proxy-half-close-timeout', 'close connections half-closed this long'),
  }),
  field('proxy.drainTimeout', duration, {
    to: 'proxy.drainTimeoutMs',
    flag: proxyFlag('proxy-drain-timeout', 'how long open connections may finish on SIGTERM'),
  }),
  field('proxy.keepalive', durationOrOff, {
    to: 'proxy.keepaliveDelayMs',
    flag: proxyFlag('proxy-keepalive', 'TCP keepalive delay on both legs, or "off"'),
  }),
  field('proxy.relay', oneOf(RELAY_KINDS), {
    flag: proxyFlag('proxy-relay', 'what relays established connections: "native" (addon thread) or "node" (streams)'),
  }),
  field('proxy.relayThreads', workers, {
    flag: proxyFlag(
      'proxy-relay-threads',
      'relay threads per worker with --proxy-relay native, or "auto" (one per core)',
    ),
  }),
  field('proxy.accessLog.enabled', boolean),
  field('proxy.accessLog.path', textOrNull, {
    flag: proxyFlag('proxy-access-log-path', 'access log file, "-" for stdout'),
  }),
  field('proxy.accessLog.sampleRatio', number, {
    flag: proxyFlag('proxy-access-log-sample-ratio', 'share of successful connections logged (0..1)'),
  }),
  field('proxy.accessLog.periodicInterval', durationOrOff, {
    to: 'proxy.accessLog.periodicIntervalMs',
    flag: proxyFlag('proxy-access-log-periodic-interval', 'progress line for long-lived connections, or "off"'),
  }),
  constant('proxy.inboundPassthroughSource', { ipv4: '127.0.0.6', ipv6: '::6' }),
  field('capture.backend', oneOf(BACKEND_CHOICES), { flag: { name: 'backend', help: 'netfilter backend' } }),
  field('capture.ipv6', oneOf(IPV6_MODES), { flag: { name: 'ipv6', help: 'IPv6 handling' } }),
  field('capture.dropInvalid', boolean, { flag: { name: 'drop-invalid', help: 'drop conntrack-INVALID TCP packets' } }),
  field('capture.excludeInterfaces', texts, {
    flag: { name: 'exclude-interfaces', help: 'interfaces never captured' },
  }),
  field('capture.inbound.enabled', boolean),
  field('capture.inbound.mode', oneOf(INBOUND_MODES), { flag: { name: 'inbound-mode', help: 'inbound capture mode' } }),
  field('capture.inbound.includePorts', portSelection, {
    flag: { name: 'inbound-include-ports', help: '"*" or ports/ranges captured inbound (comma-separated)' },
  }),
  field('capture.inbound.excludePorts', ports, {
    flag: { name: 'inbound-exclude-ports', help: 'ports never captured inbound' },
  }),
  field('capture.inbound.tproxyMark', number),
  field('capture.inbound.tproxyRouteTable', number),
  field('capture.outbound.enabled', boolean),
  field('capture.outbound.includeCidrs', cidrSelection, {
    flag: { name: 'outbound-include-cidrs', help: '"*" or destination CIDRs captured' },
  }),
  field('capture.outbound.excludeCidrs', cidrs, {
    flag: { name: 'outbound-exclude-cidrs', help: 'destination CIDRs never captured' },
  }),
  field('capture.outbound.includePorts', portSelection, {
    flag: { name: 'outbound-include-ports', help: '"*" or destination ports captured' },
  }),
  field('capture.outbound.excludePorts', ports, {
    flag: { name: 'outbound-exclude-ports', help: 'destination ports never captured' },
  }),
  field('capture.outbound.excludeUids', userIds, {
    flag: { name: 'exclude-uids', help: 'users (names or uids) never captured' },
  }),
  field('capture.outbound.excludeGids', groupIds, { flag: { name: 'exclude-gids', help: 'groups never captured' } }),
  field('capture.outbound.includeGids', groupSelection, {
    flag: { name: 'include-gids', help: '"*" or the only groups captured' },
  }),
  field('capture.outbound.excludeUnits', units, {
    flag: { name: 'exclude-units', help: 'systemd units (app.service) never captured' },
  }),
  field('capture.outbound.includeUnits', unitSelection, {
    flag: { name: 'include-units', help: '"*" or the only systemd units captured' },
  }),
  field('capture.dns.enabled', boolean, {
    flag: { name: 'dns', help: 'capture DNS (UDP/TCP 53) to the proxy DNS port' },
  }),
  field('capture.dns.port', port, { flag: { name: 'dns-port', help: 'proxy DNS port', showDefault: true } }),
  field('capture.dns.servers', cidrSelection),
  SSH_PORTS,
  derived('safety.sshPorts'),
  derived('safety.sshPortsSource'),
  field('safety.unsafeCaptureSsh', boolean, {
    flag: { name: 'unsafe-capture-ssh', help: 'DANGER: allow inbound capture of the SSH ports (can lock you out)' },
  }),
  derived('safety.sshPeer'),
  field('safety.onProxyDown', oneOf(ON_PROXY_DOWN)),
  field('stateDir', text, { flag: { name: 'state-dir', help: 'ledger directory', showDefault: true } }),
  field('mtls.identity.certificate', textOrNull, {
    flag: proxyFlag('mtls-identity-certificate', "PEM file: this proxy's certificate chain (SPIFFE ID)"),
  }),
  field('mtls.identity.key', textOrNull, { flag: proxyFlag('mtls-identity-key', "PEM file: the certificate's key") }),
  field('mtls.identity.bundle', textOrNull, {
    flag: proxyFlag('mtls-identity-bundle', "PEM file: the trust domain's CA certificates"),
  }),
  field('mtls.inbound', oneOf(MTLS_INBOUND_MODES), {
    flag: { name: 'mtls-inbound', help: 'mTLS inbound mode (disable, permissive, strict)', showDefault: true },
  }),
  field('mtls.tunnelPort', port, {
    flag: { name: 'mtls-tunnel-port', help: 'mTLS tunnel listener port (never captured)', showDefault: true },
  }),
  field('mtls.peers', cidrs, { flag: proxyFlag('mtls-peers', 'addresses of hosts running meshctl (tunneled)') }),
  field('mtls.allowPlaintextFallback', boolean, {
    flag: proxyFlag('mtls-allow-plaintext-fallback', "connect in plaintext when a peer's tunnel port does not answer"),
  }),
] as const;

/** The table without its literal types, for code that walks it. */
export const FIELD_TABLE: readonly Entry[] = FIELDS;

// Every leaf of ConfigBody comes from exactly one entry. A Config property without one fails to compile here,
// naming the path.
type Leafy = string | number | boolean | null | undefined | readonly unknown[];
type LeafPaths<T, P extends string = ''> = {
  [K in keyof T & string]-?: [T[K]] extends [Leafy] ? `${P}${K}` : LeafPaths<NonNullable<T[K]>, `${P}${K}.`>;
}[keyof T & string];
type TableTo = Extract<(typeof FIELDS)[number]['to'], string>;
type Uncovered = Exclude<LeafPaths<ConfigBody>, TableTo | `${TableTo}.${string}`>;
const everyLeafHasAnEntry = <Missing extends never>(): Missing[] => [];
everyLeafHasAnEntry<Uncovered>();

export interface ReadContext {
  readonly userDb: UserDb;
  problem(path: string, message: string): void;
  readonly unitCgroup?: UnitCgroupResolver;
}

/** A field's typed value: the raw config's value at its path, else the schema's default, through its parser. */
export function readField<T>(entry: FieldEntry<T>, raw: unknown, context: ReadContext): T {
  const value = valueAt(raw, entry.path) ?? schemaDefault(entry.path);
  return entry.parser.parse(value, {
    path: entry.path,
    userDb: context.userDb,
    problem: (p, m) => context.problem(p, m),
    ...(context.unitCgroup ? { unitCgroup: context.unitCgroup } : {}),
  });
}

/** Builds the proxy, capture and safety sections and stateDir from a schema-valid raw config, entry by entry. */
export function resolveFields(raw: unknown, derivedValues: DerivedValues, context: ReadContext): ConfigBody {
  const body: Record<string, unknown> = {};
  for (const entry of FIELD_TABLE) {
    if (entry.kind === 'derived') setPath(body, entry.to, derivedValues[entry.to]);
    else if (entry.kind === 'constant') setPath(body, entry.to, structuredClone(entry.value));
    else if (entry.to !== null) setPath(body, entry.to, readField(entry, raw, context));
  }
  // Every ConfigBody leaf has an entry whose value has that leaf's type: checked at compile time above.
  return body as unknown as ConfigBody;
}
