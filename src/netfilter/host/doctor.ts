// `meshctl doctor`: everything that decides whether install will work and be safe here, each finding with a fix:
// privileges, which backends exist and which already hold rules (mixing legacy and nft), the kernel features the
// plan needs, IPv6, other rule owners (Docker, Kubernetes, firewalld, ufw, other meshes), the SSH ports, and the
// ledger. Read-only: it never adds a probe rule; a check that cannot run becomes a finding, not a crash.
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { planCapture } from '../../capture/plan.js';
import type { Config } from '../../config/types.js';
import { isMeshctlError } from '../../errors.js';
import { systemdAvailable } from '../transaction/revert.js';
import { chooseBackend, inspectBackends, type BackendInventory } from './detect.js';
import { readLedger, type Ledger } from '../transaction/ledger.js';
import type { NetfilterRunner } from '../drivers/runner.js';
import { openScope, type ScopeOptions } from '../transaction/scope.js';
import { refuseNftUnits } from './unit-cgroups.js';

export type Severity = 'ok' | 'info' | 'warn' | 'error';

export interface Finding {
  /** Stable id for scripts and tests: `privileges`, `backend-mix`, `kernel-owner`, `ipv6`, `owner-docker`, … */
  readonly id: string;
  readonly severity: Severity;
  readonly message: string;
  /** What to do about it; null for findings that need nothing. */
  readonly fix: string | null;
}

export interface DoctorReport {
  readonly netns: string | null;
  /** False when any finding is an error: install would fail or be unsafe. */
  readonly ok: boolean;
  readonly findings: readonly Finding[];
}

export interface DoctorOptions extends ScopeOptions {
  /** The config install would use; null when it could not be loaded (its error is passed as configError). */
  readonly config: Config | null;
  readonly configError?: unknown;
}

const CAP_NET_ADMIN = 12;
const CAP_SYS_ADMIN = 21;

function effectiveCaps(): bigint | null {
  try {
    const line = readFileSync('/proc/self/status', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('CapEff:'));
    return line ? BigInt(`0x${line.split(/\s+/)[1]}`) : null;
  } catch {
    return null;
  }
}

function hasCap(caps: bigint | null, bit: number): boolean {
  return caps !== null && (caps & (1n << BigInt(bit))) !== 0n;
}

/** A kernel feature: its xtables name in /proc/net/ip*_tables_{matches,targets,names} and the module providing it. */
interface Feature {
  readonly name: string;
  readonly kind: 'matches' | 'targets' | 'names';
  readonly xt: string;
  readonly module: string;
  readonly family: 'ip' | 'ip6';
}

const FEATURES: readonly Feature[] = [
  { name: 'nat table', kind: 'names', xt: 'nat', module: 'iptable_nat', family: 'ip' },
  { name: 'ip6 nat table', kind: 'names', xt: 'nat', module: 'ip6table_nat', family: 'ip6' },
  { name: 'owner match', kind: 'matches', xt: 'owner', module: 'xt_owner', family: 'ip' },
  { name: 'conntrack match', kind: 'matches', xt: 'conntrack', module: 'xt_conntrack', family: 'ip' },
  { name: 'comment match', kind: 'matches', xt: 'comment', module: 'xt_comment', family: 'ip' },
  { name: 'multiport match', kind: 'matches', xt: 'multiport', module: 'xt_multiport', family: 'ip' },
  { name: 'REDIRECT target', kind: 'targets', xt: 'REDIRECT', module: 'xt_REDIRECT', family: 'ip' },
  { name: 'TPROXY target', kind: 'targets', xt: 'TPROXY', module: 'xt_TPROXY', family: 'ip' },
  { name: 'socket match', kind: 'matches', xt: 'socket', module: 'xt_socket', family: 'ip' },
  { name: 'MARK target', kind: 'targets', xt: 'MARK', module: 'xt_mark', family: 'ip' },
  { name: 'CT target', kind: 'targets', xt: 'CT', module: 'xt_CT', family: 'ip' },
  { name: 'mark match', kind: 'matches', xt: 'mark', module: 'xt_mark', family: 'ip' },
  { name: 'connmark match', kind: 'matches', xt: 'connmark', module: 'xt_connmark', family: 'ip' },
  { name: 'CONNMARK target', kind: 'targets', xt: 'CONNMARK', module: 'xt_connmark', family: 'ip' },
];

/** Which features a config's plan uses (by the targets and matches it renders). */
function neededFeatures(config: Config | null): Set<string> {
  const needed = new Set(['nat table', 'owner match', 'comment match', 'multiport match', 'REDIRECT target']);
  if (!config) return needed;
  const plan = planCapture(config);
  if (plan.families.some((f) => f.family === 'ipv6' && f.rules.some((r) => r.table === 'nat')))
    needed.add('ip6 nat table');
  for (const rule of plan.families.flatMap((f) => f.rules)) {
    if (rule.target.kind === 'tproxy') needed.add('TPROXY target');
    if (rule.target.kind === 'setMark') needed.add('MARK target');
    if (rule.target.kind === 'ctZone') needed.add('CT target');
    if (rule.target.kind === 'setConnmark') needed.add('CONNMARK target');
    if (rule.matches.some((m) => m.kind === 'mark')) needed.add('mark match');
    if (rule.matches.some((m) => m.kind === 'connmark')) needed.add('connmark match');
    if (rule.matches.some((m) => m.kind === 'ctState')) needed.add('conntrack match');
    if (rule.matches.some((m) => m.kind === 'socketTransparent')) needed.add('socket match');
  }
  return needed;
}

function moduleIndex(): { builtin: string; dep: string } | null {
  const dir = `/lib/modules/${release()}`;
  try {
    return {
      builtin: existsSync(`${dir}/modules.builtin`) ? readFileSync(`${dir}/modules.builtin`, 'utf8') : '',
      dep: readFileSync(`${dir}/modules.dep`, 'utf8'),
    };
  } catch {
    return null;
  }
}

async function kernelFindings(runner: NetfilterRunner, config: Config | null): Promise<Finding[]> {
  const needed = neededFeatures(config);
  const lists = new Map<string, string[]>();
  for (const family of ['ip', 'ip6'] as const) {
    for (const kind of ['matches', 'targets', 'names'] as const) {
      const result = await runner.exec('cat', [`/proc/net/${family}_tables_${kind}`]);
      lists.set(`${family}-${kind}`, result.exitCode === 0 ? result.stdout.split('\n').map((l) => l.trim()) : []);
    }
  }
  const loadedModules = existsSync('/proc/modules') ? readFileSync('/proc/modules', 'utf8') : '';
  const modules = moduleIndex();
  // A table is registered per namespace only once used; a built-in table shows its init function in kallsyms.
  let kallsyms = '';
  try {
    kallsyms = readFileSync('/proc/kallsyms', 'utf8');
  } catch {
    // not readable: rely on the other sources
  }
  const findings: Finding[] = [];
  for (const feature of FEATURES) {
    const listed = lists.get(`${feature.family}-${feature.kind}`)?.includes(feature.xt) ?? false;
    const asModule = new RegExp(`(^|/)${feature.module}\\.ko`, 'm');
    const builtinTable = feature.kind === 'names' && new RegExp(` ${feature.module}_table_init$`, 'm').test(kallsyms);
    const loaded = new RegExp(`^${feature.module}\\s`, 'm').test(loadedModules);
    const available =
      listed ||
      builtinTable ||
      loaded ||
      (modules !== null && (asModule.test(modules.builtin) || asModule.test(modules.dep)));
    const isNeeded = needed.has(feature.name);
    const how = listed
      ? 'registered in the kernel'
      : builtinTable
        ? 'built into the kernel (created on first use)'
        : loaded
          ? `module ${feature.module} loaded`
          : available
            ? `available as module ${feature.module} (loaded on first use)`
            : null;
    if (how) {
      findings.push({
        id: `kernel-${feature.xt.toLowerCase()}${feature.family === 'ip6' ? '6' : ''}`,
        severity: 'ok',
        message: `${feature.name}: ${how}${isNeeded ? '' : ' (not needed by this config)'}`,
        fix: null,
      });
    } else {
      findings.push({
        id: `kernel-${feature.xt.toLowerCase()}${feature.family === 'ip6' ? '6' : ''}`,
        severity: isNeeded && modules === null ? 'warn' : isNeeded ? 'error' : 'info',
        message: `${feature.name}: not registered in the kernel${modules === null ? ' and no module index to check (/lib/modules missing)' : ` and no ${feature.module} module found`}${isNeeded ? '; the plan needs it' : ' (not needed by this config)'}`,
        fix: isNeeded
          ? `load it (modprobe ${feature.module}) or use a kernel with CONFIG_${feature.kind === 'names' ? 'IP_NF_NAT' : feature.kind === 'matches' ? 'NETFILTER_XT_MATCH_' + feature.xt.toUpperCase() : 'NETFILTER_XT_TARGET_' + feature.xt.toUpperCase()}`
          : null,
      });
    }
  }
  return findings;
}

/** Chain or table name patterns of other rule owners, with what meshctl does about them. */
const OWNERS: readonly { id: string; name: string; pattern: RegExp; severity: Severity; fix: string }[] = [
  {
    id: 'owner-docker',
    name: 'Docker',
    pattern: /^(DOCKER|DOCKER-USER|DOCKER-ISOLATION.*)$/,
    severity: 'info',
    fix: 'nothing: meshctl never touches these rules; container traffic leaves through docker0 (add it to capture.excludeInterfaces to keep it out of capture)',
  },
  {
    id: 'owner-kubernetes',
    name: 'Kubernetes (kube-proxy)',
    pattern: /^KUBE-/,
    severity: 'info',
    fix: 'nothing: meshctl never touches these rules; exclude the cluster CIDRs with capture.outbound.excludeCidrs if pods run here',
  },
  {
    id: 'owner-firewalld',
    name: 'firewalld',
    pattern: /^(firewalld|INPUT_direct|OUTPUT_direct|IN_public.*|FWDI_.*)$/,
    severity: 'info',
    fix: 'nothing: meshctl never touches these rules; a firewalld reload keeps them (meshctl uses its own chains)',
  },
  {
    id: 'owner-ufw',
    name: 'ufw',
    pattern: /^ufw6?-/,
    severity: 'info',
    fix: "nothing: meshctl never touches these rules; allow the proxy's inbound port if ufw filters INPUT",
  },
  {
    id: 'owner-istio',
    name: 'another mesh (Istio)',
    pattern: /^ISTIO_/,
    severity: 'warn',
    fix: "two meshes capturing the same traffic redirect it in a loop: remove Istio's capture here, or do not install meshctl on this host",
  },
  {
    id: 'owner-linkerd',
    name: 'another mesh (Linkerd)',
    pattern: /^PROXY_INIT_/,
    severity: 'warn',
    fix: "two meshes capturing the same traffic redirect it in a loop: remove Linkerd's capture here",
  },
  {
    id: 'owner-kuma',
    name: 'another mesh (Kuma/Consul)',
    pattern: /^(KUMA_|MESH_|CONSUL_)/,
    severity: 'warn',
    fix: "two meshes capturing the same traffic redirect it in a loop: remove the other mesh's capture here",
  },
];

function chainsIn(save: string): string[] {
  return save
    .split('\n')
    .filter((l) => l.startsWith(':'))
    .map((l) => l.slice(1).split(/\s/)[0]!);
}

/** Which backend meshctl would use here, and the rules on the others that would run beside its capture. */
function backendChoiceFindings(
  inventory: BackendInventory,
  config: Config | null,
  ledger: Ledger | null,
  { legacy, nft }: { legacy: number; nft: number },
): Finding[] {
  const findings: Finding[] = [];
  try {
    const decision = chooseBackend(inventory, config?.capture.backend ?? 'auto', ledger?.backend ?? null);
    findings.push({
      id: 'backend-choice',
      severity: 'ok',
      message: decision.reasons[decision.reasons.length - 1] ?? `chose ${decision.backend}`,
      fix: null,
    });
    const other = decision.backend === 'iptables-legacy' ? nft : decision.backend === 'iptables-nft' ? legacy : 0;
    const otherName = decision.backend === 'iptables-legacy' ? 'iptables-nft' : 'iptables-legacy';
    if (other > 0 && decision.backend !== 'nftables') {
      findings.push({
        id: 'backend-other-rules',
        severity: 'warn',
        message: `meshctl will use ${decision.backend}, but ${otherName} holds ${other} rules; those run too and may catch traffic before or after meshctl's capture`,
        fix: `check them with \`${otherName}-save\`; move them to ${decision.backend}, or install with --backend ${otherName}`,
      });
    }
    if (decision.backend === 'nftables') findings.push(groupsFinding(config));
    if (decision.backend === 'nftables') findings.push(...unitsFindings(config));
    if (decision.backend === 'nftables' && legacy + nft > 0) {
      findings.push({
        id: 'backend-other-rules',
        severity: 'warn',
        message: `meshctl will use native nftables, but iptables holds ${legacy + nft} rules that also run on every packet`,
        fix: 'check that none of them redirects or drops what meshctl captures; or install with --backend iptables-nft',
      });
    }
  } catch (error) {
    findings.push({
      id: 'backend-choice',
      severity: 'error',
      message: isMeshctlError(error) ? error.message : String(error),
      fix: isMeshctlError(error) ? (error.hint ?? null) : null,
    });
  }
  return findings;
}

/** Other owners of netfilter rules (kube-proxy, docker, …), from chain names in every readable save and the native nft tables. */
async function ownerFindings(runner: NetfilterRunner, inventory: BackendInventory): Promise<Finding[]> {
  const findings: Finding[] = [];
  const names = new Set<string>();
  for (const backend of ['iptables-legacy', 'iptables-nft'] as const) {
    if (!inventory.available[backend]) continue;
    for (const family of ['ipv4', 'ipv6'] as const) {
      try {
        for (const chain of chainsIn(await runner.save(backend, family))) names.add(chain);
      } catch {
        // counted as unreadable above
      }
    }
  }
  for (const table of inventory.nativeTables ?? []) names.add(table.split(' ')[1] ?? table);
  for (const owner of OWNERS) {
    const hits = [...names].filter((n) => owner.pattern.test(n));
    if (hits.length > 0)
      findings.push({
        id: owner.id,
        severity: owner.severity,
        message: `${owner.name} rules present (${hits.slice(0, 5).join(', ')}${hits.length > 5 ? ', …' : ''})`,
        fix: owner.fix,
      });
  }
  return findings;
}

async function backendFindings(
  runner: NetfilterRunner,
  env: NodeJS.ProcessEnv,
  config: Config | null,
  ledger: Ledger | null,
): Promise<{ findings: Finding[]; inventory: BackendInventory | null }> {
  const findings: Finding[] = [];
  let inventory: BackendInventory;
  try {
    inventory = await inspectBackends(runner, env);
  } catch (error) {
    return {
      findings: [
        {
          id: 'backends',
          severity: 'error',
          message: `could not inspect the netfilter backends: ${(error as Error).message}`,
          fix: 'run as root; see the privileges finding',
        },
      ],
      inventory: null,
    };
  }
  for (const backend of ['iptables-legacy', 'iptables-nft', 'nftables'] as const) {
    findings.push(
      inventory.available[backend]
        ? { id: `backend-${backend}`, severity: 'ok', message: `${backend}: installed`, fix: null }
        : {
            id: `backend-${backend}`,
            severity: 'info',
            message: `${backend}: not installed (missing ${inventory.missingBinaries[backend].join(', ')})`,
            fix: null,
          },
    );
  }
  const legacy =
    (inventory.ruleCounts['iptables-legacy'].ipv4 ?? 0) + (inventory.ruleCounts['iptables-legacy'].ipv6 ?? 0);
  const nft = (inventory.ruleCounts['iptables-nft'].ipv4 ?? 0) + (inventory.ruleCounts['iptables-nft'].ipv6 ?? 0);
  findings.push({
    id: 'backend-rules',
    severity: 'info',
    message: `rules held: iptables-legacy ${legacy}, iptables-nft ${nft}; native nftables tables: ${inventory.nativeTables === null ? 'unknown' : inventory.nativeTables.join(', ') || 'none'}`,
    fix: null,
  });
  if (legacy > 0 && nft > 0) {
    findings.push({
      id: 'backend-mix',
      severity: 'warn',
      message: `both iptables-legacy (${legacy} rules) and iptables-nft (${nft} rules) hold rules: packets pass both rule sets and neither \`iptables\` shows the other's`,
      fix: 'move every rule to one backend (iptables-legacy-save | iptables-nft-restore, then flush legacy) and let meshctl use that one',
    });
  }
  findings.push(...backendChoiceFindings(inventory, config, ledger, { legacy, nft }));
  findings.push(...(await ownerFindings(runner, inventory)));
  return { findings, inventory };
}

/** nftables' `meta skgid` sees a socket's primary group only: group lists would mean less there, so they are refused. */
function groupsFinding(config: Config | null): Finding {
  const out = config?.capture.outbound;
  const lists = out
    ? [
        ...(out.excludeGids.length > 0 ? ['capture.outbound.excludeGids'] : []),
        ...(out.includeGids !== 'all' ? ['capture.outbound.includeGids'] : []),
      ]
    : [];
  if (lists.length > 0) {
    return {
      id: 'backend-groups',
      severity: 'error',
      message: `the nftables backend matches a socket's primary group only (meta skgid), not its supplementary groups: install refuses ${lists.join(' and ')} there`,
      fix: 'install with --backend iptables-nft (or iptables-legacy), which match supplementary groups, or remove the group lists',
    };
  }
  return {
    id: 'backend-groups',
    severity: 'info',
    message:
      "the nftables backend matches a socket's primary group only (meta skgid): group lists (capture.outbound.includeGids / excludeGids) are refused on it",
    fix: null,
  };
}

/**
 * Unit lists on nftables: includeUnits never (a negated `socket cgroupv2` misses sockets above the unit's level),
 * excludeUnits only where nft sees the cgroup v2 hierarchy at /sys/fs/cgroup (./unit-cgroups.ts refuseNftUnits).
 */
function unitsFindings(config: Config | null): Finding[] {
  const out = config?.capture.outbound;
  if (!config || !out || (out.excludeUnits.length === 0 && out.includeUnits === 'all')) return [];
  if (out.includeUnits !== 'all')
    return [
      {
        id: 'backend-units',
        severity: 'error',
        message:
          "the nftables backend cannot match a socket outside a unit when its cgroup lies above the unit's level (socket cgroupv2): install refuses capture.outbound.includeUnits there",
        fix: 'install with --backend iptables-nft (or iptables-legacy), or list the units to leave alone in excludeUnits instead',
      },
    ];
  try {
    refuseNftUnits(config, null);
  } catch (error) {
    if (!isMeshctlError(error)) throw error;
    return [{ id: 'backend-units', severity: 'error', message: error.message, fix: error.hint ?? null }];
  }
  return [
    {
      id: 'backend-units',
      severity: 'info',
      message:
        'nft looks capture.outbound.excludeUnits up under /sys/fs/cgroup itself: install works in the host namespace, and refuses unit lists in a --netns scope',
      fix: null,
    },
  ];
}

async function ipv6Finding(runner: NetfilterRunner, config: Config | null): Promise<Finding> {
  const all = await runner.exec('cat', ['/proc/sys/net/ipv6/conf/all/disable_ipv6']);
  const mode = config?.capture.ipv6 ?? 'intercept';
  if (all.exitCode !== 0) {
    return {
      id: 'ipv6',
      severity: mode === 'off' ? 'info' : 'warn',
      message: 'IPv6 is not available in this kernel (no /proc/sys/net/ipv6)',
      fix: mode === 'off' ? null : 'set capture.ipv6: off (there is no IPv6 traffic to capture)',
    };
  }
  if (all.stdout.trim() === '1') {
    return {
      id: 'ipv6',
      severity: mode === 'off' ? 'info' : 'warn',
      message: `IPv6 is disabled here (net.ipv6.conf.all.disable_ipv6=1) but capture.ipv6 is "${mode}": IPv6 rules would be installed for traffic that cannot exist, and the proxy's ::6 passthrough address cannot be added`,
      fix:
        mode === 'off'
          ? null
          : 'set capture.ipv6: off, or enable IPv6 (sysctl -w net.ipv6.conf.all.disable_ipv6=0) if it is meant to be used',
    };
  }
  return { id: 'ipv6', severity: 'ok', message: `IPv6 is enabled; capture.ipv6 is "${mode}"`, fix: null };
}

/** Whether this process may read and change netfilter rules (and enter `netns`). */
function privilegesFinding(netns: string | null): Finding {
  const caps = effectiveCaps();
  const uid = process.getuid?.() ?? -1;
  const missing = [
    hasCap(caps, CAP_NET_ADMIN) ? null : 'CAP_NET_ADMIN',
    netns && !hasCap(caps, CAP_SYS_ADMIN) ? 'CAP_SYS_ADMIN (to enter the namespace)' : null,
  ].filter((c): c is string => c !== null);
  return missing.length === 0
    ? {
        id: 'privileges',
        severity: 'ok',
        message: `running as uid ${uid} with CAP_NET_ADMIN${netns ? ' and CAP_SYS_ADMIN' : ''}`,
        fix: null,
      }
    : {
        id: 'privileges',
        severity: 'error',
        message: `missing privileges: uid ${uid} lacks ${missing.join(' and ')} (effective capabilities 0x${caps?.toString(16) ?? '?'}); install, uninstall and status cannot read or change netfilter rules`,
        fix: 'run meshctl as root (sudo meshctl …), or give it CAP_NET_ADMIN (systemd: AmbientCapabilities=CAP_NET_ADMIN)',
      };
}

/** The ledger in `dir` (null when absent or unreadable) and what it says about this host. */
function readLedgerFinding(dir: string): { ledger: Ledger | null; finding: Finding } {
  try {
    const ledger = readLedger(dir);
    const finding: Finding =
      ledger === null
        ? { id: 'ledger', severity: 'info', message: `not installed here (no ledger in ${dir})`, fix: null }
        : ledger.state === 'in-progress'
          ? {
              id: 'ledger',
              severity: 'warn',
              message: `an interrupted ${ledger.operation} of install ${ledger.installId} is recorded (${ledger.updatedAt})`,
              fix: 'run `meshctl status`: it finishes the interrupted transaction first',
            }
          : {
              id: 'ledger',
              severity: 'ok',
              message: `installed: ${ledger.installId} with ${ledger.backend} since ${ledger.createdAt}`,
              fix: null,
            };
    return { ledger, finding };
  } catch (error) {
    return {
      ledger: null,
      finding: {
        id: 'ledger',
        severity: 'warn',
        message: `cannot read the ledger in ${dir}: ${(error as Error).message}`,
        fix: isMeshctlError(error) ? (error.hint ?? null) : null,
      },
    };
  }
}

/** Which SSH ports and session are kept out of capture. */
function sshFindings(safety: NonNullable<Config['safety']>, netns: string | null): Finding[] {
  const findings: Finding[] = [];
  findings.push(
    safety.sshPortsSource === 'default'
      ? {
          id: 'ssh-ports',
          severity: 'warn',
          message: `no listening sshd found${netns ? ` in namespace ${netns}` : ''}; assuming SSH on port ${safety.sshPorts.join(', ')} (never captured inbound)`,
          fix: 'if sshd listens elsewhere, set safety.sshPorts (or --ssh-ports) before installing',
        }
      : {
          id: 'ssh-ports',
          severity: 'ok',
          message: `SSH ports ${safety.sshPorts.join(', ')} (from ${safety.sshPortsSource}${safety.sshPortsSource === 'sshd-listening' && netns ? ` in namespace ${netns}` : ''}) are never captured inbound${safety.unsafeCaptureSsh ? ' — EXCEPT: safety.unsafeCaptureSsh is set' : ''}`,
          fix: safety.unsafeCaptureSsh ? 'unset safety.unsafeCaptureSsh unless you have console access' : null,
        },
  );
  if (safety.sshPeer)
    findings.push({
      id: 'ssh-session',
      severity: 'ok',
      message: `this SSH session (${safety.sshPeer.address}:${safety.sshPeer.port}) is exempt from capture`,
      fix: null,
    });
  return findings;
}

/** Runs every check. Never throws for a failing check (it becomes a finding); throws NETNS_NOT_FOUND. */
export async function runDoctor(options: DoctorOptions): Promise<DoctorReport> {
  const scope = openScope({ ...options, stateDir: options.config?.stateDir ?? options.stateDir });
  const findings: Finding[] = [];
  findings.push(privilegesFinding(scope.netns));

  if (options.config === null) {
    findings.push({
      id: 'config',
      severity: 'error',
      message: `the config cannot be loaded: ${isMeshctlError(options.configError) ? `${options.configError.code}: ${options.configError.message}` : String(options.configError)}`,
      fix: isMeshctlError(options.configError) ? (options.configError.hint ?? 'fix the config') : 'fix the config',
    });
  }
  const { ledger, finding: ledgerFinding } = readLedgerFinding(scope.dir);
  findings.push(ledgerFinding);

  const probe = await scope.runner.exec('true', []);
  if (probe.exitCode !== 0) {
    findings.push({
      id: 'namespace',
      severity: 'error',
      message: `cannot run commands${scope.netns ? ` in namespace ${scope.netns}` : ''}: ${probe.stderr.trim() || `exit ${probe.exitCode}`}`,
      fix: 'run as root',
    });
  } else {
    findings.push(...(await backendFindings(scope.runner, scope.env, options.config, ledger)).findings);
    findings.push(...(await kernelFindings(scope.runner, options.config)));
    findings.push(await ipv6Finding(scope.runner, options.config));
  }

  const safety = options.config?.safety;
  if (safety) findings.push(...sshFindings(safety, scope.netns));
  findings.push(
    systemdAvailable(scope.env)
      ? {
          id: 'confirm-mechanism',
          severity: 'ok',
          message: '--confirm-within uses a transient systemd timer',
          fix: null,
        }
      : {
          id: 'confirm-mechanism',
          severity: 'info',
          message:
            '--confirm-within uses a detached process (systemd is not PID 1 here); it survives the session but not a reboot',
          fix: null,
        },
  );
  return { netns: scope.netns, ok: findings.every((f) => f.severity !== 'error'), findings };
}
