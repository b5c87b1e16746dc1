// The rule model shared by the planner, both renderers, the iptables-save parser, explain and drift checks.
// It names exactly the netfilter features meshctl uses; a rule outside it cannot be planned by mistake.
import type { Cidr, Family } from '../values/ip.js';
import type { PortRange } from '../values/ports.js';

/** Tables in the order iptables-save prints them; also the order we apply them. */
export type Table = 'raw' | 'mangle' | 'nat' | 'filter';
export const TABLES: readonly Table[] = ['raw', 'mangle', 'nat', 'filter'];

export type CtState = 'INVALID' | 'NEW' | 'ESTABLISHED' | 'RELATED' | 'UNTRACKED';

export type Match =
  | { readonly kind: 'protocol'; readonly protocol: 'tcp' | 'udp'; readonly negate?: boolean }
  | { readonly kind: 'source'; readonly cidr: Cidr; readonly negate?: boolean }
  | { readonly kind: 'destination'; readonly cidr: Cidr; readonly negate?: boolean }
  | { readonly kind: 'inInterface'; readonly name: string; readonly negate?: boolean }
  | { readonly kind: 'outInterface'; readonly name: string; readonly negate?: boolean }
  /** Needs a `protocol` match in the same rule. More than one range renders as `-m multiport`. */
  | { readonly kind: 'destinationPort'; readonly ports: readonly PortRange[]; readonly negate?: boolean }
  | { readonly kind: 'sourcePort'; readonly ports: readonly PortRange[]; readonly negate?: boolean }
  | { readonly kind: 'uidOwner'; readonly uid: number; readonly negate?: boolean }
  /**
   * `suppl`: also the socket's supplementary groups (`--suppl-groups`). iptables only: nft's `meta skgid` sees the
   * primary group alone, so render-nft refuses such a match rather than render one that means something else.
   */
  | { readonly kind: 'gidOwner'; readonly gid: number; readonly negate?: boolean; readonly suppl?: boolean }
  | { readonly kind: 'ctState'; readonly states: readonly CtState[]; readonly negate?: boolean }
  /** `-m socket --transparent`: an established transparent socket exists for the packet. */
  | { readonly kind: 'socketTransparent' }
  /** `--syn` (`--tcp-flags FIN,SYN,RST,ACK SYN`): the packet opens a TCP connection. Needs `protocol: tcp`. */
  | { readonly kind: 'tcpSyn'; readonly negate?: boolean }
  /**
   * The socket was created by a process in this cgroup v2 (or below it): `-m cgroup --path`, nft `socket cgroupv2
   * level N`. Both backends resolve the path to a cgroup when the rule is loaded, so a unit that restarts (a new
   * cgroup at the same path) needs the rule loaded again (src/netfilter/host/unit-cgroups.ts). `path` keeps the
   * leading slash; `unit` names the systemd unit it came from. `id` only in a rule read back from an nft listing
   * that shows a cgroup id instead of a path (the cgroup no longer exists, or nft could not see the hierarchy).
   */
  | {
      readonly kind: 'cgroup';
      readonly path: string;
      readonly unit?: string;
      readonly id?: number;
      readonly negate?: boolean;
    }
  | { readonly kind: 'mark'; readonly value: number; readonly mask: number; readonly negate?: boolean }
  /** `-m connmark --mark V/M` (nft `ct mark`): the mark of the packet's conntrack entry. */
  | { readonly kind: 'connmark'; readonly value: number; readonly mask: number; readonly negate?: boolean };

export type Target =
  | { readonly kind: 'jump'; readonly chain: string }
  | { readonly kind: 'return' }
  | { readonly kind: 'accept' }
  | { readonly kind: 'drop' }
  | { readonly kind: 'reject'; readonly with: 'tcp-reset' }
  | { readonly kind: 'redirect'; readonly toPort: number }
  | { readonly kind: 'tproxy'; readonly toPort: number; readonly mark: number; readonly mask: number }
  | { readonly kind: 'setMark'; readonly value: number; readonly mask: number }
  /** `-j CONNMARK --set-xmark V/M` (nft `ct mark set`): marks the packet's conntrack entry, (ctmark & ~M) ^ V. */
  | { readonly kind: 'setConnmark'; readonly value: number; readonly mask: number }
  | { readonly kind: 'ctZone'; readonly zone: number };

export interface Rule {
  readonly table: Table;
  readonly chain: string;
  readonly matches: readonly Match[];
  readonly target: Target;
  /** Rendered as the comment `meshctl:<purpose>`; the ownership marker and the name explain prints. */
  readonly purpose: string;
  /** The config field that produced the rule (`capture.outbound.excludeCidrs[1]`), or `built-in`. */
  readonly origin: string;
}

/** A chain meshctl creates and owns (always prefixed MESHCTL_). */
export interface ChainDecl {
  readonly table: Table;
  readonly name: string;
}

/** Everything planned for one address family: owned chains, and rules in order (per chain). */
export interface FamilyPlan {
  readonly family: Family;
  readonly chains: readonly ChainDecl[];
  readonly rules: readonly Rule[];
}

/**
 * Policy routing that TPROXY needs: `ip rule add fwmark M/MASK lookup T` + `ip route add local default dev lo table T`.
 * It carries both the peer's packets to the proxy's transparent listener and the app's replies to the proxy's
 * transparent inbound leg (marked by MESHCTL_TPROXY_REPLY).
 */
export interface PolicyRoute {
  readonly family: Family;
  readonly mark: number;
  readonly mask: number;
  readonly table: number;
  readonly priority: number;
}

/** An address the proxy must be able to bind on `lo` (IPv6 has only ::1 there; the passthrough source ::6 is added). */
export interface LoopbackAddress {
  readonly family: Family;
  readonly cidr: Cidr;
}

export interface CapturePlan {
  /** Only the families that get rules (ipv6: off leaves IPv6 out). */
  readonly families: readonly FamilyPlan[];
  readonly routes: readonly PolicyRoute[];
  readonly loopbackAddresses: readonly LoopbackAddress[];
}

const CHAIN_PREFIX = 'MESHCTL_';
export const COMMENT_PREFIX = 'meshctl:';

/** The built-in chains of each table (the ones a rule of ours may jump from). */
export const BUILTIN_CHAINS: Readonly<Record<Table, readonly string[]>> = {
  raw: ['PREROUTING', 'OUTPUT'],
  mangle: ['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'],
  nat: ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'],
  filter: ['INPUT', 'FORWARD', 'OUTPUT'],
};

export function isOwnedChain(name: string): boolean {
  return name.startsWith(CHAIN_PREFIX);
}
