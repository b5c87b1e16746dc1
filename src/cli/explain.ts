// `meshctl explain`: what the rules do with one connection, and why. The rules are the kernel's when capture is
// installed (the scope's ledger names the backend; read-only), otherwise, or with --plan, the current config's plan.
import type { Command } from 'commander';
import { Option } from 'commander';
import { MeshctlError } from '../errors.js';
import { explainFlow, type Explanation, type Flow } from '../capture/explain.js';
import { parseIp } from '../values/ip.js';
import { systemUserDb } from '../config/host-facts.js';
import type { Config } from '../config/types.js';
import { DnsClient, resolveAddresses } from '../policy/dns-client.js';
import { explainProxy, type ProxyExplanation } from '../policy/explain.js';
import { parseSpiffeId } from '../values/spiffe-id.js';
import { readHostContext } from '../netfilter/host/host-context.js';
import { readExplainRules, type ExplainRules } from '../netfilter/host/live-plan.js';
import { explainDnsName, type DnsExplanation } from '../dns/explain.js';
import { UpstreamServers } from '../dns/resolv-conf.js';
import { addConfigOptions, loadConfigFromOptions } from './config-flags.js';
import { systemUnitCgroup } from '../config/unit-cgroups.js';
import { unitNameProblem } from '../values/systemd-unit.js';

/** Parses `1.2.3.4:80`, `[fd00::1]:80` (port required) or, with `portOptional`, a bare address. */
export function parseEndpoint(text: string, flag: string, portOptional = false): { address: string; port?: number } {
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  const plain = /^([^:]+)(?::(\d+))?$/.exec(text);
  const bare = parseIp(text) ? [text, text, undefined] : null;
  const m = bracketed ?? plain ?? bare;
  const address = m?.[1];
  const port = m?.[2] === undefined ? undefined : Number(m[2]);
  if (
    !address ||
    !parseIp(address) ||
    (port !== undefined && (port < 1 || port > 65535)) ||
    (!portOptional && port === undefined)
  ) {
    throw new MeshctlError(
      'EXPLAIN_INPUT',
      `${flag} "${text}" is not ${portOptional ? 'an address or ADDRESS:PORT' : 'ADDRESS:PORT'}`,
      'write IPv4 as 10.0.0.5:443 and IPv6 as [fd00::5]:443',
    );
  }
  return port === undefined ? { address } : { address, port };
}

/** A uid or gid given on the command line: a whole number the kernel can hold (0 to 2^32-2; -1 means "none"). */
function parseId(raw: unknown, flag: '--uid' | '--gid' | '--groups'): number {
  const text = String(raw);
  const id = /^\d{1,10}$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(id) || id > 0xfffffffe) {
    throw new MeshctlError(
      'EXPLAIN_INPUT',
      `${flag} "${text}" is not a ${flag === '--uid' ? 'uid' : 'gid'}`,
      'give a whole number from 0 to 4294967294 (or --user NAME)',
    );
  }
  return id;
}

/** `--groups a,b`: the socket owner's supplementary groups, by name or gid (what `--suppl-groups` rules also match). */
function parseGroups(raw: unknown): number[] {
  return String(raw)
    .split(',')
    .map((ref) => ref.trim())
    .filter((ref) => ref !== '')
    .map((ref) => {
      if (/^\d+$/.test(ref)) return parseId(ref, '--groups');
      const entry = systemUserDb.group(ref);
      if (!entry)
        throw new MeshctlError(
          'EXPLAIN_INPUT',
          `--groups: group "${ref}" does not exist`,
          'give existing group names or gids, comma-separated (e.g. --groups apps,2100)',
        );
      return entry.gid;
    });
}

function resolveOwner(options: Record<string, unknown>): { uid: number; gid: number; note: string | null } {
  const gid = options.gid !== undefined ? parseId(options.gid, '--gid') : undefined;
  if (options.user !== undefined) {
    const entry = systemUserDb.user(String(options.user));
    if (!entry)
      throw new MeshctlError(
        'EXPLAIN_INPUT',
        `--user "${String(options.user)}" does not exist`,
        'give an existing user name, or --uid N',
      );
    return { uid: entry.uid, gid: gid ?? entry.gid, note: null };
  }
  if (options.uid !== undefined) {
    const uid = parseId(options.uid, '--uid');
    const entry = systemUserDb.user(uid);
    return {
      uid,
      gid: gid ?? entry?.gid ?? uid,
      note: entry || gid !== undefined ? null : `gid ${uid} assumed (uid ${uid} has no passwd entry; pass --gid)`,
    };
  }
  const uid = process.getuid?.() ?? 0;
  const own = gid ?? process.getgid?.() ?? 0;
  return {
    uid,
    gid: own,
    note: `socket owner defaults to you (uid ${uid}, gid ${own}); pass --uid/--user for another`,
  };
}

const MARK = {
  redirected: 'INTERCEPTED',
  tproxied: 'INTERCEPTED',
  bypassed: 'NOT INTERCEPTED',
  rejected: 'REJECTED',
  dropped: 'DROPPED',
} as const;

/** Resolves the hostname service addresses of `config` (best effort, bounded), for explain's service match. */
async function resolveServiceHostnames(config: Config): Promise<{ resolved: Map<string, string[]>; notes: string[] }> {
  const names = [
    ...new Set(config.services.flatMap((s) => s.addresses.flatMap((a) => (a.kind === 'hostname' ? [a.hostname] : [])))),
  ];
  const resolved = new Map<string, string[]>();
  const notes: string[] = [];
  if (names.length === 0) return { resolved, notes };
  const client = new DnsClient(config.outbound.resolver.servers, Math.min(config.outbound.resolver.timeoutMs, 1000));
  await Promise.all(
    names.map(async (name) => {
      try {
        resolved.set(
          name,
          (await resolveAddresses(client, name)).addresses.map((a) => a.address),
        );
      } catch (error) {
        notes.push(`resolving ${name} failed (${(error as Error).message})`);
      }
    }),
  );
  return { resolved, notes };
}

const PROXY_MARK = {
  service: 'TO A SERVICE ENDPOINT',
  passthrough: 'AS DIALLED',
  refused: 'REFUSED',
  admitted: 'ADMITTED',
} as const;

function formatProxy(e: Explanation, p: ProxyExplanation): string[] {
  const lines = [
    `proxy:   ${e.intercepted ? '' : '(not intercepted, so the proxy never sees it; if it were) '}${PROXY_MARK[p.verdict]}: ${p.reason}`,
  ];
  for (const l of p.summary) lines.push(`         ${l}`);
  for (const a of p.assumptions) lines.push(`note:    ${a}`);
  return lines;
}

/** Where the rules came from, as printed and as the JSON fields `source`, `installId`, `backend`, `differences`. */
export type RulesSummary = Pick<ExplainRules, 'source' | 'installId' | 'backend' | 'netns' | 'differences'>;

/** At most this many lines per list of differences; the rest is counted. */
const MAX_DIFF_LINES = 6;

function capped(lines: readonly string[]): string[] {
  const shown = lines.slice(0, MAX_DIFF_LINES).map((l) => `         ${l}`);
  return lines.length > MAX_DIFF_LINES ? [...shown, `         … ${lines.length - MAX_DIFF_LINES} more`] : shown;
}

function formatRules(r: RulesSummary): string[] {
  if (r.source === 'config') return ["rules:   the current config's plan (not read from the kernel)"];
  const lines = [
    `rules:   the kernel's (install ${r.installId}, backend ${r.backend}${r.netns ? `, namespace ${r.netns}` : ''})`,
  ];
  const d = r.differences;
  if (d?.differs) {
    lines.push(
      'differs: the installed rules differ from the current config (`meshctl explain --plan` explains the config; `meshctl install` applies it):',
    );
    if (d.configFields.length > 0) {
      lines.push(...capped(d.configFields.map((f) => `${f.path}: installed ${f.installed}, config ${f.config}`)));
    } else {
      lines.push(
        ...capped([
          ...d.kernelOnly.map((l) => `installed, not in the config: ${l}`),
          ...d.configOnly.map((l) => `in the config, not installed: ${l}`),
        ]),
      );
    }
  }
  if (d && d.drift.kernelOnly.length + d.drift.recordedOnly.length > 0) {
    lines.push(
      `drift:   meshctl's rules in the kernel differ from what install ${r.installId} recorded (${d.drift.kernelOnly.length} not recorded, ${d.drift.recordedOnly.length} missing): \`meshctl status\` lists them, \`meshctl install\` repairs them`,
    );
  }
  return lines;
}

function traceLabel(t: Explanation['trace'][number]): string {
  if (t.owner === 'foreign') return `${'foreign'.padEnd(38)} ${t.rule}`;
  return `meshctl:${t.purpose.padEnd(30)} ${t.origin}`;
}

export function formatExplanation(
  flow: Flow,
  e: Explanation & { proxy?: ProxyExplanation; rules?: RulesSummary },
): string {
  const p = e.packet;
  const src = p.source ? `${p.source}${p.sourcePort ? `:${p.sourcePort}` : ''}` : '?';
  const who = `${p.uid !== null ? `  uid ${p.uid} gid ${p.gid}` : ''}${p.cgroup !== undefined ? `  cgroup ${p.cgroup}` : ''}`;
  const iface =
    flow.direction === 'outbound'
      ? p.outInterface
        ? `  out ${p.outInterface}`
        : ''
      : p.inInterface
        ? `  in ${p.inInterface}`
        : '';
  const lines = [
    `${flow.direction} ${flow.protocol} ${src} → ${p.destination.includes(':') ? `[${p.destination}]` : p.destination}:${p.destinationPort}${who}${iface}`,
    ...(e.rules ? formatRules(e.rules) : []),
    `verdict: ${MARK[e.verdict]}${e.toPort !== null ? ` → proxy port ${e.toPort}` : ''}`,
    `why:     ${e.reason}`,
  ];
  if (e.decidedBy) lines.push(`rule:    ${e.decidedBy.table} ${e.decidedBy.chain}: ${e.decidedBy.rule}`);
  if (e.proxy) lines.push(...formatProxy(e, e.proxy));
  if (e.trace.length > 0) {
    const unevaluated = e.trace.some((t) => t.evaluated === false);
    lines.push(`trace (✓ matched, · not matched${unevaluated ? ', ? not evaluated' : ''}):`);
    const width = Math.max(...e.trace.map((t) => `${t.table} ${t.chain}`.length));
    for (const t of e.trace)
      lines.push(
        `  ${t.evaluated === false ? '?' : t.matched ? '✓' : '·'} ${`${t.table} ${t.chain}`.padEnd(width)}  ${traceLabel(t)}`,
      );
  }
  for (const a of e.assumptions) lines.push(`note:    ${a}`);
  return `${lines.join('\n')}\n`;
}

function formatDnsExplanation(e: DnsExplanation): string {
  const lines = [
    `${e.name}: ${e.answeredBy === 'mesh' ? 'ANSWERED BY THE PROXY (mesh name)' : 'FORWARDED'}`,
    `  why: ${e.reason}`,
  ];
  if (e.answeredBy === 'mesh')
    lines.push(`  A:    ${e.ipv4.join(', ') || '(none)'}`, `  AAAA: ${e.ipv6.join(', ') || '(none)'}`);
  if (!e.served)
    lines.push(
      '  note: capture.dns.enabled is false in this config: the proxy serves no DNS and apps ask their resolvers directly',
    );
  return `${lines.join('\n')}\n`;
}

export function register(program: Command): void {
  addConfigOptions(
    program
      .command('explain')
      .description(
        "show whether a connection is intercepted by the rules in the kernel (the config's plan when nothing is installed, or with --plan), every rule it meets, the config field that decides, and what the proxy would do with it (service, endpoint choice, limits)",
      )
      .option('--out', 'an outbound connection made by a local process')
      .option('--in', 'an inbound connection arriving from a peer')
      .argument('[name]', "with --dns: a host name, to show how the proxy's DNS server would answer it")
      .option('--dst <address:port>', 'destination, e.g. 10.0.3.4:5432 or [fd00::4]:5432 (required unless --dns NAME)')
      .option('--src <address[:port]>', 'source: the peer (inbound) or the local address (outbound)')
      .option('--src-id <spiffe-id>', "inbound: the peer's SPIFFE ID, for a connection through the mTLS tunnel")
      .option('--uid <uid>', 'outbound socket owner uid (default: yours)')
      .option('--user <name>', 'outbound socket owner by name')
      .option('--gid <gid>', "outbound socket owner gid (default: the user's primary group)")
      .option(
        '--groups <list>',
        "outbound socket owner's supplementary groups, names or gids, comma-separated (default: none)",
      )
      .option('--iface <name>', 'interface: arrival (inbound) or egress (outbound); default from the routing table')
      .option('--unit <name>', 'outbound: the connection is made by a process of this systemd unit (its cgroup)')
      .addOption(new Option('--proto <protocol>', 'protocol').choices(['tcp', 'udp']).default('tcp'))
      .option('--netns <name>', 'read the installed rules, local addresses and routes inside this network namespace')
      .option(
        '--plan',
        "explain the current config's plan instead of the rules in the kernel (what the config would do)",
      )
      .option(
        '--json',
        'print { intercepted, toPort, verdict, trace, source, installId, backend, differences, ... } as JSON',
      ),
  ).action(explainAction);
}

type Endpoint = { address: string; port?: number };

/** `meshctl explain`: a host name with --dns, else a connection. */
async function explainAction(
  name: string | undefined,
  options: Record<string, unknown>,
  command: Command,
): Promise<void> {
  if (name !== undefined) await explainDns(name, options);
  else await explainConnection(options, command);
}

/** `--dns NAME`: how the proxy's DNS server would answer NAME. */
async function explainDns(name: string, options: Record<string, unknown>): Promise<void> {
  if (!options.dns)
    throw new MeshctlError(
      'EXPLAIN_INPUT',
      `unexpected argument "${name}": a host name goes with --dns`,
      'to explain how a name is resolved: `meshctl explain --dns NAME`; for a connection: --out or --in with --dst',
    );
  // `--dns NAME` asks about DNS; it does not switch DNS capture on in the config being explained.
  const config = await loadConfigFromOptions({ ...options, dns: undefined });
  const e = explainDnsName(config, name, new UpstreamServers(config.outbound.resolver.servers));
  process.stdout.write(options.json ? `${JSON.stringify(e, null, 2)}\n` : formatDnsExplanation(e));
}

/** The direction and endpoints --out/--in, --dst and --src name, checked. */
function connectionEndpoints(
  options: Record<string, unknown>,
  command: Command,
): { direction: 'outbound' | 'inbound'; dst: { address: string; port: number }; src: Endpoint | undefined } {
  if (options.dst === undefined) {
    const dst = command.options.find((o) => o.long === '--dst')!;
    (command as unknown as { missingMandatoryOptionValue(option: unknown): never }).missingMandatoryOptionValue(dst);
  }
  if (Boolean(options.out) === Boolean(options.in)) {
    throw new MeshctlError(
      'EXPLAIN_INPUT',
      'say which direction: exactly one of --out or --in',
      'e.g. `meshctl explain --in --dst 10.0.0.5:22`',
    );
  }
  const direction = options.out ? 'outbound' : 'inbound';
  const dst = parseEndpoint(String(options.dst), '--dst') as { address: string; port: number };
  const src = options.src !== undefined ? parseEndpoint(String(options.src), '--src', true) : undefined;
  if (src && parseIp(src.address)!.family !== parseIp(dst.address)!.family) {
    throw new MeshctlError(
      'EXPLAIN_INPUT',
      `--src ${String(options.src)} and --dst ${String(options.dst)} are of different address families`,
      'use two IPv4 or two IPv6 endpoints',
    );
  }
  return { direction, dst, src };
}

/** The flow explained: the endpoints plus --proto, the owner (outbound), --groups and --iface. */
function flowFromOptions(
  options: Record<string, unknown>,
  { direction, dst, src }: ReturnType<typeof connectionEndpoints>,
  owner: ReturnType<typeof resolveOwner> | null,
): Flow {
  return {
    direction,
    protocol: options.proto as 'tcp' | 'udp',
    destination: dst,
    ...(src ? { source: src } : {}),
    ...(owner
      ? {
          uid: owner.uid,
          gid: owner.gid,
          ...(options.groups !== undefined ? { groups: parseGroups(options.groups) } : {}),
        }
      : {}),
    ...(options.iface !== undefined
      ? direction === 'outbound'
        ? { outInterface: String(options.iface) }
        : { inInterface: String(options.iface) }
      : {}),
  };
}

/**
 * `--unit NAME`: the socket's cgroup is the unit's, as the config resolved it (a unit it names) or as systemd says.
 * Throws EXPLAIN_INPUT for a name outside the unit grammar or a unit with no cgroup, and for --unit with --in.
 */
function unitOfFlow(
  options: Record<string, unknown>,
  config: Config,
  direction: Flow['direction'],
): { cgroup?: string } {
  if (options.unit === undefined) return {};
  const name = String(options.unit);
  if (direction !== 'outbound')
    throw new MeshctlError('EXPLAIN_INPUT', `--unit ${name} with --in`, 'a unit owns local sockets: use it with --out');
  const problem = unitNameProblem(name);
  if (problem !== null)
    throw new MeshctlError(
      'EXPLAIN_INPUT',
      `--unit ${JSON.stringify(name)} ${problem}`,
      'give a unit name such as app.service (see `systemctl list-units`)',
    );
  const out = config.capture.outbound;
  const listed = [...out.excludeUnits, ...(out.includeUnits === 'all' ? [] : out.includeUnits)].find(
    (u) => u.name === name,
  );
  if (listed) return { cgroup: listed.cgroup };
  const found = systemUnitCgroup(name);
  if ('problem' in found)
    throw new MeshctlError(
      'EXPLAIN_INPUT',
      `--unit ${name}: ${found.problem}`,
      'check the name with `systemctl status`',
    );
  return { cgroup: found.cgroup };
}

/** `--src-id`: a SPIFFE ID, for --in only. Throws EXPLAIN_INPUT otherwise. */
function sourceIdOf(options: Record<string, unknown>, direction: Flow['direction']): string | undefined {
  if (options.srcId === undefined) return undefined;
  const text = String(options.srcId);
  if (direction !== 'inbound')
    throw new MeshctlError('EXPLAIN_INPUT', `--src-id ${text} with --out`, 'the peer identity is for --in');
  const id = parseSpiffeId(text);
  if (typeof id === 'string' || id.path === '')
    throw new MeshctlError(
      'EXPLAIN_INPUT',
      `--src-id ${JSON.stringify(text)}: ${typeof id === 'string' ? id : 'a trust domain, not a workload ID'}`,
      'give a SPIFFE ID such as spiffe://prod.example.com/web',
    );
  return id.text;
}

/** `--out` / `--in --dst …`: the rules the connection meets and what the proxy would do with it. */
async function explainConnection(options: Record<string, unknown>, command: Command): Promise<void> {
  const endpoints = connectionEndpoints(options, command);
  const { direction, dst, src } = endpoints;
  const owner = direction === 'outbound' ? resolveOwner(options) : null;
  const config = await loadConfigFromOptions(options);
  const flow = { ...flowFromOptions(options, endpoints, owner), ...unitOfFlow(options, config, direction) };
  const netns = options.netns as string | undefined;
  const rules = await readExplainRules({ config, netns: netns ?? null, from: options.plan ? 'config' : 'kernel' });
  const explanation = explainFlow(rules.plan, flow, readHostContext(netns));
  let proxy: ProxyExplanation | undefined;
  if (flow.protocol === 'tcp') {
    const { resolved, notes } = await resolveServiceHostnames(config);
    const sourceId = sourceIdOf(options, direction);
    const p = explainProxy(config, { direction, destination: dst, source: src, sourceId }, resolved);
    proxy = { ...p, assumptions: [...notes, ...p.assumptions] };
  }
  const notes = [...rules.notes, ...(owner?.note ? [owner.note] : [])];
  const summary: RulesSummary = {
    source: rules.source,
    installId: rules.installId,
    backend: rules.backend,
    netns: rules.netns,
    differences: rules.differences,
  };
  const withNote = {
    ...explanation,
    assumptions: [...notes, ...explanation.assumptions],
    ...(proxy ? { proxy } : {}),
  };
  process.stdout.write(
    options.json
      ? `${JSON.stringify({ ...withNote, ...summary }, null, 2)}\n`
      : formatExplanation(flow, { ...withNote, rules: summary }),
  );
}
