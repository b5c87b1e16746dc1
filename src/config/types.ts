// Validated configuration: what every part of meshctl consumes after src/config has checked the input.
// Raw input (YAML/JSON + flags) has other types (RawConfig); nothing downstream re-parses strings.
import type { Cidr, PortRange } from '../capture/model.js';

export type Backend = 'iptables-legacy' | 'iptables-nft' | 'nftables';
export type BackendChoice = 'auto' | Backend;
export type Ipv6Mode = 'intercept' | 'block' | 'off';
export type InboundMode = 'redirect' | 'tproxy';
/** `all` means no restriction; a list restricts to its members. */
export type PortSelection = 'all' | readonly PortRange[];
export type CidrSelection = 'all' | readonly Cidr[];

export interface ProxyUser {
  /** Name from the user database, or null when given as a uid with no passwd entry. */
  readonly name: string | null;
  readonly uid: number;
  /** The user's real primary gid (or proxy.group when set). Exempted together with the uid. */
  readonly gid: number;
}

export interface AccessLogConfig {
  readonly enabled: boolean;
  /** File to append JSON lines to; null means stdout. */
  readonly path: string | null;
  /** Fraction (0..1) of successful connections logged; errors are always logged. */
  readonly sampleRatio: number;
  /** Emit a progress line for connections open longer than this; null disables. */
  readonly periodicIntervalMs: number | null;
}

export interface ProxyConfig {
  readonly user: ProxyUser;
  readonly outboundPort: number;
  readonly inboundPort: number;
  readonly adminPort: number;
  /** Admin server bind address; always loopback (it is excluded from capture). */
  readonly adminAddress: string;
  /** Worker processes; 'auto' = number of cores. */
  readonly workers: number | 'auto';
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number | null;
  readonly maxConnectionDurationMs: number | null;
  readonly halfCloseTimeoutMs: number;
  readonly drainTimeoutMs: number;
  readonly keepaliveDelayMs: number | null;
  readonly accessLog: AccessLogConfig;
  /** Source address for inbound connections handed to local apps over lo (Istio's 127.0.0.6 / ::6). */
  readonly inboundPassthroughSource: { readonly ipv4: string; readonly ipv6: string };
}

export interface InboundCapture {
  readonly enabled: boolean;
  readonly mode: InboundMode;
  readonly includePorts: PortSelection;
  readonly excludePorts: readonly PortRange[];
  readonly tproxyMark: number;
  readonly tproxyRouteTable: number;
}

export interface OutboundCapture {
  readonly enabled: boolean;
  readonly includeCidrs: CidrSelection;
  readonly excludeCidrs: readonly Cidr[];
  readonly includePorts: PortSelection;
  readonly excludePorts: readonly PortRange[];
  readonly excludeUids: readonly number[];
  readonly excludeGids: readonly number[];
  /** Capture only sockets owned by these gids ('all' = no restriction). */
  readonly includeGids: 'all' | readonly number[];
}

export interface DnsCapture {
  readonly enabled: boolean;
  /** Port the proxy's DNS listener uses (UDP and TCP). */
  readonly port: number;
  /** Destinations whose port 53 is captured. */
  readonly servers: CidrSelection;
}

export interface CaptureConfig {
  readonly backend: BackendChoice;
  readonly ipv6: Ipv6Mode;
  readonly dropInvalid: boolean;
  readonly excludeInterfaces: readonly string[];
  readonly inbound: InboundCapture;
  readonly outbound: OutboundCapture;
  readonly dns: DnsCapture;
}

export type SshPortsSource = 'config' | 'sshd-listening' | 'sshd-config' | 'default';

export interface SafetyConfig {
  readonly sshPorts: readonly number[];
  readonly sshPortsSource: SshPortsSource;
  /** Loudly named opt-out: lets inbound capture include the SSH ports. */
  readonly unsafeCaptureSsh: boolean;
  /** The current SSH session's peer (from SSH_CONNECTION), exempted from inbound capture. */
  readonly sshPeer: { readonly address: string; readonly port: number; readonly localAddress: string; readonly localPort: number } | null;
  readonly onProxyDown: 'closed' | 'open';
}

export interface Config {
  /** Where the config came from: a file path, or null when built-in defaults were used. */
  readonly file: string | null;
  /** sha256 of the effective config (after flags and defaults), for the ledger and status. */
  readonly hash: string;
  readonly proxy: ProxyConfig;
  readonly capture: CaptureConfig;
  readonly safety: SafetyConfig;
  readonly stateDir: string;
}
