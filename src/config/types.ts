// Validated configuration: what every part of meshctl consumes after src/config has checked the input.
// Raw input (YAML/JSON + flags) has other types (RawConfig); nothing downstream re-parses strings.
import type { Cidr, Family } from '../values/ip.js';
import type { PortRange } from '../values/ports.js';
import type { PrincipalPattern } from '../values/spiffe-id.js';

export type Backend = 'iptables-legacy' | 'iptables-nft' | 'nftables';
export type BackendChoice = 'auto' | Backend;
export type Ipv6Mode = 'intercept' | 'block' | 'off';
export type InboundMode = 'redirect' | 'tproxy';
/** What moves the bytes of established connections: the addon's relay thread, or Node streams. */
export type RelayKind = 'native' | 'node';
export type OnProxyDown = 'closed' | 'open';
export type OutboundPolicy = 'passthrough' | 'registry-only';
// The values of each enum at run time; test/unit/config-fields.test.ts holds them equal to the schema's `enum`.
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'iptables-legacy', 'iptables-nft', 'nftables'];
export const IPV6_MODES: readonly Ipv6Mode[] = ['intercept', 'block', 'off'];
export const INBOUND_MODES: readonly InboundMode[] = ['redirect', 'tproxy'];
export const RELAY_KINDS: readonly RelayKind[] = ['native', 'node'];
export const ON_PROXY_DOWN: readonly OnProxyDown[] = ['closed', 'open'];
export const OUTBOUND_POLICIES: readonly OutboundPolicy[] = ['passthrough', 'registry-only'];
/** What the inbound side does with mTLS (Istio's PeerAuthentication modes). */
export type MtlsInboundMode = 'disable' | 'permissive' | 'strict';
export const MTLS_INBOUND_MODES: readonly MtlsInboundMode[] = ['disable', 'permissive', 'strict'];
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
  /** Worker processes; 'auto' = number of cores with relay node, 1 with relay native (src/proxy/lifecycle.ts). */
  readonly workers: number | 'auto';
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number | null;
  readonly maxConnectionDurationMs: number | null;
  readonly halfCloseTimeoutMs: number;
  readonly drainTimeoutMs: number;
  readonly keepaliveDelayMs: number | null;
  readonly relay: RelayKind;
  /** Relay threads per worker (proxy.relay native); 'auto' = os.availableParallelism(). */
  readonly relayThreads: number | 'auto';
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
  /** systemd units whose processes' sockets are never captured (matched by the unit's cgroup v2 path). */
  readonly excludeUnits: readonly SystemdUnit[];
  /** Capture only sockets of processes in these units ('all' = no restriction). */
  readonly includeUnits: 'all' | readonly SystemdUnit[];
}

/** A systemd unit named in the config and the cgroup v2 path its processes live in (src/config/unit-cgroups.ts). */
export interface SystemdUnit {
  readonly name: string;
  readonly cgroup: string;
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

/** The files of this proxy's X.509 identity (PEM); null while mTLS is not configured. */
export interface MtlsIdentityFiles {
  readonly certificate: string | null;
  readonly key: string | null;
  readonly bundle: string | null;
}

export interface MtlsConfig {
  readonly identity: MtlsIdentityFiles;
  /** disable: no tunnel listener; permissive: tunnel and plaintext; strict: captured plaintext is refused. */
  readonly inbound: MtlsInboundMode;
  /** The tunnel listener's port (HTTP/2 CONNECT over TLS 1.3), excluded from capture. */
  readonly tunnelPort: number;
  /** Hosts that run meshctl: connections to these addresses go through the tunnel. */
  readonly peers: readonly Cidr[];
  /** A mesh member whose tunnel port does not answer is connected in plaintext instead of failing. */
  readonly allowPlaintextFallback: boolean;
}

export type SshPortsSource = 'config' | 'sshd-listening' | 'sshd-config' | 'default';

export interface SafetyConfig {
  readonly sshPorts: readonly number[];
  readonly sshPortsSource: SshPortsSource;
  /** Loudly named opt-out: lets inbound capture include the SSH ports. */
  readonly unsafeCaptureSsh: boolean;
  /** The current SSH session's peer (from SSH_CONNECTION), exempted from inbound capture. */
  readonly sshPeer: {
    readonly address: string;
    readonly port: number;
    readonly localAddress: string;
    readonly localPort: number;
  } | null;
  readonly onProxyDown: OnProxyDown;
}

/** How a service's connections are spread over its endpoints. */
export type LoadBalancerPolicy = 'round-robin' | 'least-connections' | 'random' | 'source-hash';
export const LOAD_BALANCER_POLICIES: readonly LoadBalancerPolicy[] = [
  'round-robin',
  'least-connections',
  'random',
  'source-hash',
];

/** One virtual address of a service: what an app dials (its original destination). */
export type ServiceAddress =
  | { readonly kind: 'ip'; readonly address: string; readonly family: Family; readonly port: number }
  | { readonly kind: 'cidr'; readonly cidr: Cidr; readonly port: number }
  /** A hostname the proxy resolves (A/AAAA, re-resolved on TTL); its addresses join the exact table. */
  | { readonly kind: 'hostname'; readonly hostname: string; readonly port: number };

/** Where a service's endpoints come from. `subset` labels endpoints for weighted subsets (canary). */
export type EndpointSource =
  | {
      readonly kind: 'static';
      readonly address: string;
      readonly family: Family;
      readonly port: number;
      readonly subset: string | null;
    }
  /** A/AAAA records of `hostname`, each address an endpoint on `port`. */
  | { readonly kind: 'dns'; readonly hostname: string; readonly port: number; readonly subset: string | null }
  /** SRV records of `name`: each target's A/AAAA addresses on the record's port. */
  | { readonly kind: 'srv'; readonly name: string; readonly subset: string | null };

export interface RetryPolicy {
  /** Connect attempts in total (1 = no retry); each retry goes to a different endpoint when there is one. */
  readonly attempts: number;
  /** First backoff; doubles per retry (full jitter), capped at maxBackoffMs. */
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
}

export interface OutlierDetectionPolicy {
  readonly enabled: boolean;
  /** Eject an endpoint after this many connect failures in a row. */
  readonly consecutiveFailures: number;
  /** Ejection time = base × the number of times the endpoint was ejected (decays while it behaves). */
  readonly baseEjectionMs: number;
  /** Never eject more than this share of a service's endpoints (at least one may always be ejected). */
  readonly maxEjectionPercent: number;
}

export interface CircuitBreakerPolicy {
  /** Connections to the service open or opening at once; beyond it, new ones are refused at accept. */
  readonly maxConnections: number | null;
  /** Connections waiting for an upstream connect (including backoff and injected delay). */
  readonly maxPending: number | null;
}

export interface HealthCheckPolicy {
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly unhealthyThreshold: number;
  readonly healthyThreshold: number;
}

export interface FaultPolicy {
  readonly delay: { readonly percent: number; readonly durationMs: number } | null;
  readonly abort: { readonly percent: number } | null;
}

export interface ServiceConfig {
  readonly name: string;
  readonly addresses: readonly ServiceAddress[];
  readonly endpoints: readonly EndpointSource[];
  readonly loadBalancer: LoadBalancerPolicy;
  /** Weighted endpoint subsets in config order; empty = one implicit subset holding every endpoint. */
  readonly subsets: readonly { readonly name: string; readonly weight: number }[];
  /** Per-attempt connect timeout (default proxy.connectTimeout). */
  readonly connectTimeoutMs: number;
  readonly retries: RetryPolicy;
  readonly outlierDetection: OutlierDetectionPolicy;
  readonly circuitBreaker: CircuitBreakerPolicy;
  readonly healthCheck: HealthCheckPolicy | null;
  readonly faults: FaultPolicy;
  /** The endpoints run meshctl: connections go through the mTLS tunnel. */
  readonly mtls: boolean;
  /** SPIFFE IDs the endpoints may present; empty = any ID of this proxy's trust domain. */
  readonly identities: readonly PrincipalPattern[];
}

export interface ResolverConfig {
  /** DNS servers (`address` and port) the proxy asks; empty = the system's (/etc/resolv.conf). */
  readonly servers: readonly { readonly address: string; readonly port: number }[];
  readonly timeoutMs: number;
  /** Bounds on how long an answer is used before it is resolved again (its TTL, clamped). */
  readonly minTtlMs: number;
  readonly maxTtlMs: number;
}

export interface OutboundPolicyConfig {
  /** passthrough: unknown destinations are connected as dialled; registry-only: refused (counted, logged). */
  readonly policy: OutboundPolicy;
  readonly resolver: ResolverConfig;
}

export interface TokenBucketConfig {
  /** Tokens (connections) added per `perMs`. */
  readonly connections: number;
  readonly perMs: number;
  readonly burst: number;
}

export interface InboundPortPolicy {
  /** The local ports this entry covers ('all' = the catch-all entry). */
  readonly ports: 'all' | PortRange;
  readonly maxConnections: number | null;
  readonly rateLimit: TokenBucketConfig | null;
  readonly sourceRateLimit: TokenBucketConfig | null;
  /** Source addresses allowed ('all' = any); deny wins over allow. */
  readonly allow: CidrSelection;
  readonly deny: readonly Cidr[];
  /** Principals (peer SPIFFE IDs through the tunnel) allowed besides `allow`'s addresses, and refused. */
  readonly allowPrincipals: readonly PrincipalPattern[];
  readonly denyPrincipals: readonly PrincipalPattern[];
}

export interface InboundPolicyConfig {
  readonly ports: readonly InboundPortPolicy[];
}

export interface ControlPlaneConfig {
  readonly url: string;
  readonly pollIntervalMs: number;
  readonly timeoutMs: number;
  /** Extra CA certificates (PEM file) for an https URL; null = the system's. */
  readonly caFile: string | null;
}

export interface Config {
  /** Where the config came from: a file path, or null when built-in defaults were used. */
  readonly file: string | null;
  /** The command-line flags that overrode the file, as given (`--outbound-exclude-ports 9999`). */
  readonly flags: readonly string[];
  /** sha256 of the effective config (after flags and defaults), for the ledger and status. */
  readonly hash: string;
  readonly proxy: ProxyConfig;
  readonly capture: CaptureConfig;
  readonly safety: SafetyConfig;
  readonly stateDir: string;
  readonly mtls: MtlsConfig;
  /** The mesh's services (outbound policy); empty when none are configured. */
  readonly services: readonly ServiceConfig[];
  readonly outbound: OutboundPolicyConfig;
  readonly inbound: InboundPolicyConfig;
  /** Where the proxy polls for services/outbound/inbound (null = the file only). */
  readonly controlPlane: ControlPlaneConfig | null;
}
