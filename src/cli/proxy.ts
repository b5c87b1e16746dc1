// `meshctl proxy`: runs the transparent proxy (the data plane the capture rules redirect to) until SIGTERM.
// Signals: SIGTERM/SIGINT drain and exit 0 (a second one stops at once, exit 1); SIGHUP reloads the config.
import { Option, type Command } from 'commander';
import { loadConfig, type FlagOverride, type PolicyOverlay } from '../config/load.js';
import { createLogger } from '../log.js';
import { ProxySupervisor } from '../proxy/lifecycle.js';
import { addConfigOptions, configOverrides } from './config-flags.js';
import { EXIT } from './output.js';

interface ProxyFlag {
  readonly flag: string;
  readonly key: string;
  readonly path: string;
  readonly help: string;
  readonly parse: (text: string) => unknown;
}

const asNumber = (text: string): unknown => (/^\d+(\.\d+)?$/.test(text) ? Number(text) : text);

/** Proxy-only flags; each mirrors a config path (validated by the config loader, which names the flag). */
const PROXY_FLAGS: readonly ProxyFlag[] = [
  { flag: 'proxy-workers', key: 'proxyWorkers', path: 'proxy.workers', help: 'worker processes, or "auto" (one per core)', parse: asNumber },
  { flag: 'proxy-connect-timeout', key: 'proxyConnectTimeout', path: 'proxy.connectTimeout', help: 'upstream connect timeout ("10s")', parse: String },
  { flag: 'proxy-idle-timeout', key: 'proxyIdleTimeout', path: 'proxy.idleTimeout', help: 'close connections idle this long ("off")', parse: String },
  { flag: 'proxy-max-connection-duration', key: 'proxyMaxConnectionDuration', path: 'proxy.maxConnectionDuration', help: 'close connections older than this ("off")', parse: String },
  { flag: 'proxy-half-close-timeout', key: 'proxyHalfCloseTimeout', path: 'proxy.halfCloseTimeout', help: 'close connections half-closed this long ("60s")', parse: String },
  { flag: 'proxy-drain-timeout', key: 'proxyDrainTimeout', path: 'proxy.drainTimeout', help: 'how long open connections may finish on SIGTERM ("20s")', parse: String },
  { flag: 'proxy-keepalive', key: 'proxyKeepalive', path: 'proxy.keepalive', help: 'TCP keepalive delay on both legs, or "off" ("30s")', parse: String },
  { flag: 'proxy-relay', key: 'proxyRelay', path: 'proxy.relay', help: 'what relays established connections: "native" (addon thread) or "node" (streams)', parse: String },
  { flag: 'proxy-access-log-path', key: 'proxyAccessLogPath', path: 'proxy.accessLog.path', help: 'access log file ("-" = stdout)', parse: (t) => (t === '-' ? null : t) },
  { flag: 'proxy-access-log-sample-ratio', key: 'proxyAccessLogSampleRatio', path: 'proxy.accessLog.sampleRatio', help: 'share of successful connections logged (0..1)', parse: asNumber },
  { flag: 'proxy-access-log-periodic-interval', key: 'proxyAccessLogPeriodicInterval', path: 'proxy.accessLog.periodicInterval', help: 'progress line for long-lived connections ("off")', parse: String },
];

/**
 * The config flags whose values the proxy reads: its user and ports, which families it listens on (capture.ipv6),
 * whether inbound connections arrive by TPROXY (capture.inbound.mode), and the DNS port, which is part of the
 * contract it publishes and holds across reloads (src/config/contract.ts). Every other capture flag only shapes
 * the rules, which `meshctl install` applies.
 */
export const PROXY_CONFIG_PATHS = [
  'proxy.user', 'proxy.group', 'proxy.outboundPort', 'proxy.inboundPort', 'proxy.adminPort', 'capture.ipv6', 'capture.inbound.mode',
  'capture.dns.enabled', 'capture.dns.port',
] as const;

function proxyOverrides(options: Record<string, unknown>): FlagOverride[] {
  const overrides = configOverrides(options);
  for (const f of PROXY_FLAGS) {
    const raw = options[f.key];
    if (raw !== undefined) overrides.push({ path: f.path, value: f.parse(String(raw)), flag: `--${f.flag}` });
  }
  if (options.proxyAccessLog === false) overrides.push({ path: 'proxy.accessLog.enabled', value: false, flag: '--no-proxy-access-log' });
  return overrides;
}

export function register(program: Command): void {
  const command = program
    .command('proxy')
    .description('run the transparent proxy: outbound :15001, inbound :15006, admin on 127.0.0.1:15000');
  addConfigOptions(command, { only: PROXY_CONFIG_PATHS });
  for (const f of PROXY_FLAGS) command.addOption(new Option(`--${f.flag} <value>`, f.help));
  command
    .option('--no-proxy-access-log', 'disable the access log')
    .addOption(new Option('--log-level <level>', 'operational log level (JSON on stderr)').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']));
  command.action(async (options: Record<string, unknown>) => {
    const log = createLogger(options.logLevel !== undefined ? { level: String(options.logLevel) } : {});
    const file = options.config as string | undefined;
    const flags = proxyOverrides(options);
    const load = (overlay: PolicyOverlay | null = null) => loadConfig({ ...(file !== undefined ? { file } : {}), flags, overlay });
    const supervisor = new ProxySupervisor({ config: await load(), reloadConfig: load, log });
    await supervisor.start();

    let signals = 0;
    const onStop = (signal: NodeJS.Signals) => {
      if (++signals === 1) void supervisor.drain(signal, true);
      else supervisor.forceStop();
    };
    process.on('SIGTERM', onStop);
    process.on('SIGINT', onStop);
    process.on('SIGHUP', () => void supervisor.reload('SIGHUP'));

    const exit = await supervisor.exited;
    log.info({ forced: exit.forced }, 'proxy stopped');
    log.flush();
    // Stragglers (a stuck upstream socket) must not keep a stopped proxy alive past its drain bound.
    setTimeout(() => process.exit(exit.forced ? EXIT.error : EXIT.ok), 50);
  });
}
