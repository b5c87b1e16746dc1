// `meshctl proxy`: runs the transparent proxy (the data plane the capture rules redirect to) until SIGTERM.
// Signals: SIGTERM/SIGINT drain and exit 0 (a second one stops at once, exit 1); SIGHUP reloads the config.
import type { Command } from 'commander';
import { loadConfig, type FlagOverride, type PolicyOverlay } from '../config/load.js';
import { schemaDefault } from '../config/schema.js';
import { createLogger } from '../log.js';
import { trimMalloc } from '../native/addon.js';
import { startIdleRelease } from '../proxy/idle-release.js';
import { ProxySupervisor } from '../proxy/lifecycle.js';
import { addConfigOptions, CONFIG_FLAGS, configOverrides } from './config-flags.js';
import { EXIT } from './output.js';
import { logLevelOption } from './shared.js';

/**
 * The config flags whose values the proxy reads: its user and ports, which families it listens on (capture.ipv6),
 * whether inbound connections arrive by TPROXY (capture.inbound.mode), and the DNS port, which is part of the
 * contract it publishes and holds across reloads (src/config/contract.ts). Every other capture flag only shapes
 * the rules, which `meshctl install` applies.
 */
export const PROXY_CONFIG_PATHS = [
  'proxy.user',
  'proxy.group',
  'proxy.outboundPort',
  'proxy.inboundPort',
  'proxy.adminPort',
  'capture.ipv6',
  'capture.inbound.mode',
  'capture.dns.enabled',
  'capture.dns.port',
] as const;

/** The proxy's own flags (marked proxyOnly in the field table; their help shows the schema's defaults). */
const PROXY_ONLY_PATHS = CONFIG_FLAGS.filter((spec) => spec.proxyOnly).map((spec) => spec.path);

function proxyOverrides(options: Record<string, unknown>): FlagOverride[] {
  const overrides = configOverrides(options);
  if (options.proxyAccessLog === false)
    overrides.push({ path: 'proxy.accessLog.enabled', value: false, flag: '--no-proxy-access-log' });
  return overrides;
}

const port = (name: string): string => String(schemaDefault(`proxy.${name}`));

export function register(program: Command): void {
  const command = program
    .command('proxy')
    .description(
      `run the transparent proxy: outbound :${port('outboundPort')}, inbound :${port('inboundPort')}, admin on 127.0.0.1:${port('adminPort')}`,
    );
  addConfigOptions(command, { only: [...PROXY_CONFIG_PATHS, ...PROXY_ONLY_PATHS] });
  command.option('--no-proxy-access-log', 'disable the access log').addOption(logLevelOption());
  command.action(async (options: Record<string, unknown>) => {
    const log = createLogger(options.logLevel !== undefined ? { level: String(options.logLevel) } : {});
    const file = options.config as string | undefined;
    const flags = proxyOverrides(options);
    const load = (overlay: PolicyOverlay | null = null) =>
      loadConfig({ ...(file !== undefined ? { file } : {}), flags, overlay });
    const supervisor = new ProxySupervisor({ config: await load(), reloadConfig: load, log });

    // The handlers come before start(): a signal in the moment after "proxy ready" (systemd stopping a unit it just
    // started, a test) would otherwise meet the default action and end the process without a drain. One that
    // arrives while starting is acted on once started.
    let started = false;
    let signals = 0;
    let stopSignal: NodeJS.Signals | null = null;
    let reloadPending = false;
    const onStop = (signal: NodeJS.Signals) => {
      signals++;
      if (!started) stopSignal ??= signal;
      else if (signals === 1) void supervisor.drain(signal, true);
      else supervisor.forceStop();
    };
    process.on('SIGTERM', onStop);
    process.on('SIGINT', onStop);
    process.on('SIGHUP', () => {
      if (started) void supervisor.reload('SIGHUP');
      else reloadPending = true;
    });
    await supervisor.start();
    started = true;
    // What starting allocated and freed again (module compiles, config parsing, V8's background jobs) goes back to
    // the kernel instead of staying resident in malloc's arenas for the proxy's whole life (src/native/memory.cc).
    trimMalloc();
    // And again every 10 s while it runs: connections that came and went leave their freed handles and buffers
    // resident in the arenas just the same (idle after 1,000 connections, 5 starts: 56.3 -> 55.1 MiB RSS, median).
    // malloc_trim over the unit's two arenas (MALLOC_ARENA_MAX) took 0.8-1.0 ms when it released that memory,
    // less when there is nothing to release; at worst a busy proxy faults its free chunks' pages back once a period.
    // Once a burst of work is over, the JavaScript heap's garbage goes too (src/proxy/idle-release.ts).
    const stopIdleRelease = startIdleRelease();
    if (signals > 1) supervisor.forceStop();
    else if (stopSignal !== null) void supervisor.drain(stopSignal, true);
    else if (reloadPending) void supervisor.reload('SIGHUP');

    const exit = await supervisor.exited;
    stopIdleRelease();
    log.info({ forced: exit.forced }, 'proxy stopped');
    log.flush();
    // Stragglers (a stuck upstream socket) must not keep a stopped proxy alive past its drain bound.
    setTimeout(() => process.exit(exit.forced ? EXIT.error : EXIT.ok), 50);
  });
}
