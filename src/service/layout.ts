// Where `meshctl service install` puts things, and the drop-ins it derives from the config. Pure: paths and text only.
// The shipped unit files in systemd/ carry the defaults; the drop-ins carry what the config changes (ports, IPv6,
// drain bound, fail-open coupling), so the units never disagree with the config the proxy and capture load.
// Two layouts: a tree installed from source or npm, where `service install` writes the units, sysusers file and
// launcher link itself (DEFAULT_LAYOUT), and the Debian package, whose build renders the same files from here into
// /usr (PACKAGED_LAYOUT; packaging/deb/render-files.mjs) so that `service install` only adds the drop-ins.
import { isAbsolute, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config/types.js';
import { loadCredentialSetting } from '../mtls/identity.js';

export const UNITS = {
  socket: 'meshctl-proxy.socket',
  proxy: 'meshctl-proxy.service',
  capture: 'meshctl-capture.service',
} as const;
export type UnitKey = keyof typeof UNITS;
/** Start order; stop order is the reverse. */
export const UNIT_ORDER: readonly UnitKey[] = ['socket', 'proxy', 'capture'];

/** The package's own root (where bin/, dist/ and systemd/ are): same relative path from src/service and dist/service. */
export const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const SHIPPED_UNIT_DIR = join(PACKAGE_ROOT, 'systemd');
export const SHIPPED_SYSUSERS = join(SHIPPED_UNIT_DIR, 'meshctl.sysusers.conf');

/** Absolute paths on the target system (inside `root`). */
export interface ServiceLayout {
  /** `/` for the running system; another directory for an offline install into an image (`--root`). */
  readonly root: string;
  /**
   * Who owns the units, the sysusers file and the launcher: `meshctl` (`service install` writes them and
   * `service uninstall` removes them) or `package` (dpkg placed them; meshctl checks they are there and leaves them).
   */
  readonly owner: 'meshctl' | 'package';
  readonly unitDir: string;
  /** Where the drop-ins go (`<dir>/<unit>.d/10-meshctl-config.conf`); the unit directory when absent. */
  readonly dropInDir?: string;
  readonly sysusersFile: string;
  readonly configFile: string;
  /** The `meshctl` the units run (ExecStart=/usr/local/bin/meshctl). */
  readonly binLink: string;
  /** Extra `meshctl install` arguments for the next capture start only (--confirm-within); under /run, so not kept across reboots. */
  readonly captureEnvFile: string;
}

export const DEFAULT_LAYOUT: ServiceLayout = {
  root: '/',
  owner: 'meshctl',
  unitDir: '/etc/systemd/system',
  sysusersFile: '/etc/sysusers.d/meshctl.conf',
  configFile: '/etc/meshctl/config.yaml',
  binLink: '/usr/local/bin/meshctl',
  captureEnvFile: '/run/meshctl/capture.env',
};

/**
 * The Debian package's layout: units and sysusers.d in the vendor directories under /usr/lib, the launcher in
 * /usr/bin, the config a conffile. The drop-ins are the admin's (derived from the config), so they go to /etc.
 */
export const PACKAGED_LAYOUT: ServiceLayout = {
  root: '/',
  owner: 'package',
  unitDir: '/usr/lib/systemd/system',
  dropInDir: '/etc/systemd/system',
  sysusersFile: '/usr/lib/sysusers.d/meshctl.conf',
  configFile: '/etc/meshctl/config.yaml',
  binLink: '/usr/bin/meshctl',
  captureEnvFile: '/run/meshctl/capture.env',
};

/** Present in a tree the Debian package installed (it holds the package format, "deb"): PACKAGED_LAYOUT applies. */
export const PACKAGED_MARKER = join(PACKAGE_ROOT, 'packaged-by');

/** The layout of a tree: PACKAGED_LAYOUT when the package build left its marker (`packagedBy`), else DEFAULT_LAYOUT. */
export function layoutFor(packagedBy: string | null): ServiceLayout {
  return packagedBy === null ? DEFAULT_LAYOUT : PACKAGED_LAYOUT;
}

/**
 * A file shipped in systemd/ (or the default config) as installed in `layout`: the shipped text names the default
 * layout's launcher and sysusers paths, which become the layout's. Everything else stays as written.
 */
export function renderShipped(text: string, layout: Pick<ServiceLayout, 'binLink' | 'sysusersFile'>): string {
  return text
    .replaceAll(DEFAULT_LAYOUT.binLink, layout.binLink)
    .replaceAll(DEFAULT_LAYOUT.sysusersFile, layout.sysusersFile);
}

/** A path of the layout as seen from this process (prefixed by root). */
export function onHost(layout: ServiceLayout, path: string): string {
  return layout.root === '/' ? path : join(layout.root, path);
}

export const DROP_IN_NAME = '10-meshctl-config.conf';

export interface DropIn {
  readonly unit: string;
  /** Path on the target system: <unitDir>/<unit>.d/10-meshctl-config.conf */
  readonly path: string;
  readonly text: string;
}

const HEADER =
  '# Written by `meshctl service install` from the config; it is rewritten on every install. Edit the config, not this file.\n';

/** Directories that ProtectHome=yes hides; a tree there needs ProtectHome=read-only to stay readable. */
function underHome(dir: string): boolean {
  return ['/home', '/root', '/run/user'].some((h) => {
    const rel = relative(h, dir);
    return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
  });
}

/** Seconds systemd waits for a stop: the proxy's drain bound plus 5 s to close, flush logs and exit. */
export function stopTimeoutSeconds(config: Pick<Config, 'proxy'>): number {
  return Math.ceil(config.proxy.drainTimeoutMs / 1000) + 5;
}

/** The listening sockets, in the order `meshctl proxy` reads LISTEN_FDS positionally (outbound, inbound, outbound6, inbound6). */
export function listenStreams(config: Pick<Config, 'proxy' | 'capture'>): string[] {
  const { outboundPort, inboundPort } = config.proxy;
  const streams = [`127.0.0.1:${outboundPort}`, `0.0.0.0:${inboundPort}`];
  if (config.capture.ipv6 === 'intercept') streams.push(`[::1]:${outboundPort}`, `[::]:${inboundPort}`);
  return streams;
}

/**
 * The mTLS tunnel listener's sockets (while mtls.inbound is not disable), after the listen streams: all addresses,
 * per captured family, as `meshctl proxy` reads them (src/proxy/listeners.ts splitActivatedFds).
 */
export function tunnelListenStreams(config: Pick<Config, 'capture' | 'mtls'>): string[] {
  if (config.mtls.inbound === 'disable') return [];
  const port = config.mtls.tunnelPort;
  return config.capture.ipv6 === 'intercept' ? [`0.0.0.0:${port}`, `[::]:${port}`] : [`0.0.0.0:${port}`];
}

/**
 * The DNS server's sockets (capture.dns.enabled), after the tunnel's: per family a stream, then a datagram
 * socket, as `meshctl proxy` reads them (src/dns/server.ts activatedDnsListeners).
 */
export function dnsListeners(
  config: Pick<Config, 'capture'>,
): { readonly kind: 'ListenStream' | 'ListenDatagram'; readonly address: string }[] {
  if (!config.capture.dns.enabled) return [];
  const { port } = config.capture.dns;
  const hosts = config.capture.ipv6 === 'intercept' ? ['127.0.0.1', '[::1]'] : ['127.0.0.1'];
  return hosts.flatMap((h) => [
    { kind: 'ListenStream' as const, address: `${h}:${port}` },
    { kind: 'ListenDatagram' as const, address: `${h}:${port}` },
  ]);
}

/** The state directory the capture unit's StateDirectory= makes writable under ProtectSystem=strict. */
export const UNIT_STATE_DIR = '/var/lib/meshctl';

type DropInConfig = Pick<Config, 'proxy' | 'capture' | 'safety' | 'stateDir' | 'mtls'>;

/** The drop-ins for `config` with meshctl's tree at `packageRoot`. */
export function renderDropIns(
  config: DropInConfig,
  layout: ServiceLayout,
  packageRoot: string = PACKAGE_ROOT,
): DropIn[] {
  const at = (unit: string): string => join(layout.dropInDir ?? layout.unitDir, `${unit}.d`, DROP_IN_NAME);
  const text = (lines: readonly string[]): string => `${lines.join('\n')}\n`;
  return [
    { unit: UNITS.socket, path: at(UNITS.socket), text: text(socketDropIn(config)) },
    { unit: UNITS.proxy, path: at(UNITS.proxy), text: text(proxyDropIn(config, packageRoot)) },
    { unit: UNITS.capture, path: at(UNITS.capture), text: text(captureDropIn(config, packageRoot)) },
  ];
}

function isTproxy(config: DropInConfig): boolean {
  return config.capture.inbound.enabled && config.capture.inbound.mode === 'tproxy';
}

/** The socket unit's listeners: the proxy's ports, the tunnel port, TPROXY's transparency, the DNS server. */
function socketDropIn(config: DropInConfig): string[] {
  const socket = [
    HEADER,
    '[Socket]',
    '# proxy.outboundPort, proxy.inboundPort, capture.ipv6',
    'ListenStream=',
    ...listenStreams(config).map((s) => `ListenStream=${s}`),
  ];
  const tunnel = tunnelListenStreams(config);
  if (tunnel.length > 0)
    socket.push(
      `# mtls.inbound = ${config.mtls.inbound}, mtls.tunnelPort: the mTLS tunnel listener (peers' connections queue here while the proxy restarts)`,
      ...tunnel.map((s) => `ListenStream=${s}`),
    );
  if (isTproxy(config))
    socket.push('# capture.inbound.mode = tproxy: TPROXY delivers only to IP_TRANSPARENT sockets', 'Transparent=yes');
  const dns = dnsListeners(config);
  if (dns.length > 0)
    socket.push(
      '# capture.dns.enabled, capture.dns.port: the DNS server (TCP, then UDP, per family)',
      ...dns.map((l) => `${l.kind}=${l.address}`),
    );
  return socket;
}

/** The proxy's stop timeout, and what it needs beyond the shipped sandbox (home, TPROXY's capability, the key). */
function proxyDropIn(config: DropInConfig, packageRoot: string): string[] {
  const proxy = [
    HEADER,
    '[Service]',
    `# proxy.drainTimeout = ${config.proxy.drainTimeoutMs} ms: stop = drain, then 5 s to exit`,
    `TimeoutStopSec=${stopTimeoutSeconds(config)}s`,
  ];
  if (underHome(packageRoot)) {
    proxy.push(`# meshctl runs from ${packageRoot}, which ProtectHome=yes would hide`, 'ProtectHome=read-only');
  }
  if (isTproxy(config)) {
    // The only capability the proxy ever gets, and only in this mode. A private user namespace would confine it
    // there: the host's network namespace would still refuse IP_TRANSPARENT. (The leg's port check, sock_diag, is
    // netlink: the shipped unit allows AF_NETLINK in every mode.)
    proxy.push(
      "# capture.inbound.mode = tproxy: each connection to the app leaves from the peer's address (IP_TRANSPARENT, SO_MARK)",
      'CapabilityBoundingSet=CAP_NET_ADMIN',
      'AmbientCapabilities=CAP_NET_ADMIN',
      'PrivateUsers=no',
    );
  }
  const credential = loadCredentialSetting(config.mtls.identity.key);
  if (credential !== null)
    proxy.push(
      `# mtls.identity.key = ${config.mtls.identity.key}: systemd hands the proxy the key in $CREDENTIALS_DIRECTORY, so its user needs no access to the key file`,
      credential,
    );
  return proxy;
}

/** Capture's tie to the proxy (safety.onProxyDown) and the paths its sandbox must let it write. */
function captureDropIn(config: DropInConfig, packageRoot: string): string[] {
  const capture = [HEADER];
  if (config.safety.onProxyDown === 'open') {
    capture.push(
      '[Unit]',
      '# safety.onProxyDown = open: remove capture when the proxy is stopped or fails for good, so traffic flows direct',
      `BindsTo=${UNITS.proxy}`,
    );
  } else {
    capture.push(
      '# safety.onProxyDown = closed: capture stays while systemd restarts the proxy (connections wait in the socket backlog)',
    );
  }
  const captureService: string[] = [];
  if (underHome(packageRoot))
    captureService.push(
      `# meshctl runs from ${packageRoot}, which ProtectHome=yes would hide`,
      'ProtectHome=read-only',
    );
  const stateDir = config.stateDir.replace(/(.)\/+$/, '$1');
  if (stateDir !== UNIT_STATE_DIR) {
    // ReadWritePaths= needs the directory to exist when the unit starts (else the start fails with 226/NAMESPACE).
    captureService.push(
      `# stateDir = ${stateDir}: writable under ProtectSystem=strict (the unit's StateDirectory= is ${UNIT_STATE_DIR})`,
      `ReadWritePaths=${stateDir}`,
    );
  }
  if (captureService.length > 0) capture.push('[Service]', ...captureService);
  return capture;
}

/** The config written when none exists and none was given: the defaults, spelled out where a newcomer looks first. */
export const DEFAULT_CONFIG_TEXT = `# meshctl config (YAML or JSON). \`meshctl config schema\` prints every field; \`meshctl config show\` the effective values.
# After editing: \`sudo meshctl service install\` applies it (proxy reload, capture updated in one transaction).
proxy:
  user: meshproxy        # created by /etc/sysusers.d/meshctl.conf; its uid/gid are exempt from capture
  outboundPort: 15001
  inboundPort: 15006
  adminPort: 15000
capture:
  ipv6: intercept
safety:
  onProxyDown: closed    # closed: capture stays while the proxy restarts; open: traffic flows direct when it is down
`;

/** Arguments for the capture unit's next start (EnvironmentFile MESHCTL_INSTALL_ARGS). */
export function captureEnvText(confirmWithin: string | null): string {
  return `# Written by \`meshctl service install\`; read once by ${UNITS.capture} (under /run: gone after a reboot).\nMESHCTL_INSTALL_ARGS=${confirmWithin ? `--confirm-within ${confirmWithin}` : ''}\n`;
}
