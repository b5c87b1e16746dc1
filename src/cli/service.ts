// `meshctl service install|uninstall|status` (systemd-managed operation) and `meshctl proxy-ready` (the proxy
// unit's ExecStartPost: the unit becomes "active" only once /ready answers, so capture never starts before it).
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { parseFlagDuration } from '../values/duration.js';
import { MeshctlError } from '../errors.js';
import {
  installService,
  uninstallService,
  type ServiceInstallResult,
  type ServiceUninstallResult,
} from '../service/install.js';
import { UNITS } from '../service/layout.js';
import { endpointText, fetchContract, fetchIdentity, waitReady, type AdminEndpoint } from '../service/readiness.js';
import { serviceStatus, type ServiceStatus } from '../service/status.js';
import type { UnitState } from '../service/systemctl.js';
import { cliLogger, logLevelOption } from './shared.js';
import { EXIT } from './output.js';

function durationFlag(flag: string, text: string): number {
  const ms = parseFlagDuration(text);
  if (typeof ms === 'string')
    throw new MeshctlError(
      'CONFIG_INVALID',
      `${flag} ${JSON.stringify(text)}: ${ms}`,
      'give a duration such as 500ms, 10s or 5m',
    );
  return ms;
}

function parseAdmin(text: string): AdminEndpoint {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+|localhost)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535)
    throw new MeshctlError(
      'CONFIG_INVALID',
      `--admin ${JSON.stringify(text)} is not host:port`,
      'for example --admin 127.0.0.1:15000',
    );
  return { address: m[1] ?? m[2]!, port };
}

function unitLine(u: UnitState): string {
  const state = u.loadState !== 'loaded' ? 'not installed' : `${u.activeState} (${u.subState})`;
  const extra = [
    u.unitFileState && u.loadState === 'loaded' ? u.unitFileState : '',
    u.mainPid ? `pid ${u.mainPid}` : '',
    u.restarts ? `${u.restarts} restarts` : '',
  ].filter(Boolean);
  return `  ${u.unit.padEnd(24)} ${state}${extra.length ? `, ${extra.join(', ')}` : ''}`;
}

function describeInstall(r: ServiceInstallResult): string {
  const lines = [
    `meshctl is running under systemd: proxy ready on ${r.admin}, capture active (onProxyDown=${r.onProxyDown})`,
  ];
  lines.push(`  proxy user: ${r.proxyUser.name ?? '?'} (uid ${r.proxyUser.uid}, gid ${r.proxyUser.gid})`);
  const cfg = {
    'created-default': 'created with the defaults',
    copied: `installed from ${r.config.source}`,
    kept: 'kept (it already existed)',
    'kept-differs': 'kept (it already existed; see warning)',
  }[r.config.action];
  lines.push(`  config: ${r.config.path} ${cfg}`);
  for (const f of r.files.filter((x) => x.action !== 'unchanged' && x.path !== r.config.path))
    lines.push(`  ${f.action}: ${f.path}`);
  for (const [unit, action] of Object.entries(r.actions)) lines.push(`  ${action}: ${unit}`);
  for (const u of r.units) lines.push(unitLine(u));
  if (r.confirmWithin)
    lines.push(`  confirm: run \`meshctl confirm\` within ${r.confirmWithin}, or the capture rules are removed again`);
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  lines.push('  check: meshctl service status');
  return `${lines.join('\n')}\n`;
}

function describeUninstall(r: ServiceUninstallResult): string {
  const lines = ['meshctl service removed: capture rules, proxy and units are gone'];
  if ('removed' in r.capture)
    lines.push(`  capture: ${r.capture.action} (${r.capture.removed.length} objects removed by meshctl uninstall)`);
  else lines.push(`  capture: removed when ${UNITS.capture} stopped (meshctl uninstall, exactly the ledger's rules)`);
  for (const unit of r.stopped) lines.push(`  stopped: ${unit}`);
  for (const f of r.files.filter((x) => x.action === 'removed')) lines.push(`  removed: ${f.path}`);
  if (r.keptConfig) lines.push(`  kept: ${r.keptConfig} (${r.purgeHint}) and the meshproxy user`);
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  return `${lines.join('\n')}\n`;
}

function describeStatus(s: ServiceStatus): string {
  const head = {
    protected: 'PROTECTED: every captured TCP flow goes through the ready proxy',
    'not-protected': 'NOT PROTECTED',
    'not-installed': 'NOT INSTALLED: meshctl does not run as a service here',
  }[s.verdict];
  const lines = [`meshctl service: ${head}`];
  for (const p of s.problems) lines.push(`  ! ${p}`);
  for (const n of s.notes) lines.push(`  note: ${n}`);
  for (const u of s.units) lines.push(unitLine(u));
  if (s.ready && s.admin) lines.push(`  proxy /ready on ${s.admin}: ${s.ready.ready ? 'ready' : s.ready.detail}`);
  if (s.capture?.installed) {
    lines.push(
      `  capture: install ${s.capture.installId}, ${s.capture.backend}, ${s.capture.inSync ? 'rules in sync' : 'rules DRIFTED'}${s.capture.confirm && !s.capture.confirm.confirmedAt ? `, UNCONFIRMED (reverted at ${s.capture.confirm.deadline})` : ''}`,
    );
  } else if (s.capture) {
    lines.push('  capture: no rules installed');
  }
  if (s.onProxyDown) {
    lines.push(
      `  if the proxy goes down: ${s.onProxyDown === 'closed' ? 'closed: capture stays and connections wait while systemd restarts it' : 'open: capture is removed and traffic flows direct'}`,
    );
  }
  lines.push(`  config: ${s.configFile}${s.configError ? ` (${s.configError})` : ''}`);
  return `${lines.join('\n')}\n`;
}

export function register(program: Command): void {
  const service = program
    .command('service')
    .description('run meshctl under systemd: units for the proxy, its sockets and capture');
  registerServiceInstall(service);
  registerServiceUninstall(service);
  registerServiceStatus(service);
  registerProxyReady(program);
}

/** `meshctl service install`. */
function registerServiceInstall(service: Command): void {
  service
    .command('install')
    .description(
      'install the units, sysusers and config (an existing config is kept), then start socket, proxy and capture and wait for ready',
    )
    .option('-c, --config <file>', 'config to install as /etc/meshctl/config.yaml when that does not exist yet')
    .option(
      '--confirm-within <duration>',
      'remove the capture rules again unless `meshctl confirm` arrives within this time (e.g. 60s)',
    )
    .option('--ready-timeout <duration>', 'how long to wait for the proxy to report ready', '20s')
    .option('--json', 'print the result as JSON')
    .addOption(logLevelOption())
    .action(async (options: Record<string, unknown>) => {
      const confirmWithin = options.confirmWithin as string | undefined;
      if (confirmWithin !== undefined) durationFlag('--confirm-within', confirmWithin);
      const result = await installService({
        ...(typeof options.config === 'string' ? { configFile: options.config } : {}),
        confirmWithin: confirmWithin ?? null,
        readyTimeoutMs: durationFlag('--ready-timeout', String(options.readyTimeout)),
        log: cliLogger(options),
      });
      process.stdout.write(options.json ? `${JSON.stringify(result, null, 2)}\n` : describeInstall(result));
    });
}

/** `meshctl service uninstall`. */
function registerServiceUninstall(service: Command): void {
  service
    .command('uninstall')
    .description('stop capture (removing exactly its rules), the proxy and its sockets; remove the units')
    .option('--purge', 'also remove /etc/meshctl/config.yaml and the state directory')
    .option('--json', 'print the result as JSON')
    .addOption(logLevelOption())
    .action(async (options: Record<string, unknown>) => {
      const result = await uninstallService({ purge: options.purge === true, log: cliLogger(options) });
      process.stdout.write(options.json ? `${JSON.stringify(result, null, 2)}\n` : describeUninstall(result));
    });
}

/** `meshctl service status`. */
function registerServiceStatus(service: Command): void {
  service
    .command('status')
    .description('one screen: is this host protected? (exit 0 protected, 1 not protected, 3 not installed)')
    .option('--json', 'print the report as JSON')
    .action(async (options: Record<string, unknown>) => {
      const status = await serviceStatus({ log: cliLogger(options) });
      process.stdout.write(options.json ? `${JSON.stringify(status, null, 2)}\n` : describeStatus(status));
      process.exitCode =
        status.verdict === 'protected' ? EXIT.ok : status.verdict === 'not-installed' ? EXIT.notInstalled : EXIT.error;
    });
}

/** `meshctl proxy-ready`: the proxy unit's ExecStartPost. */
function registerProxyReady(program: Command): void {
  program
    .command('proxy-ready')
    .description(
      "wait until the proxy admin port answers /ready (exit 0), or fail after --timeout (the proxy unit's ExecStartPost)",
    )
    .option(
      '-c, --config <file>',
      'config whose proxy.adminAddress / proxy.adminPort to probe (default /etc/meshctl/config.yaml if present)',
    )
    .option('--admin <host:port>', "probe this admin endpoint instead of the config's")
    .option('--timeout <duration>', 'how long to wait', '10s')
    .option('--json', 'print {"ready": …, "detail": …} and exit 0 either way')
    .option(
      '--contract',
      'with --json: also fetch the proxy\'s live contract (GET /contract) as "contract" and its mTLS identity (GET /stats) as "identity"',
    )
    .action(async (options: Record<string, unknown>) => {
      const timeoutMs = durationFlag('--timeout', String(options.timeout));
      let endpoint: AdminEndpoint;
      if (typeof options.admin === 'string') endpoint = parseAdmin(options.admin);
      else {
        const config = await loadConfig(typeof options.config === 'string' ? { file: options.config } : {});
        endpoint = { address: config.proxy.adminAddress, port: config.proxy.adminPort };
      }
      const probe = await waitReady(endpoint, { timeoutMs });
      if (options.json) {
        const contract =
          options.contract === true
            ? { contract: await fetchContract(endpoint), identity: await fetchIdentity(endpoint) }
            : {};
        process.stdout.write(`${JSON.stringify({ ...probe, admin: endpointText(endpoint), ...contract })}\n`);
        return;
      }
      if (!probe.ready) {
        throw new MeshctlError(
          'PROXY_NOT_READY',
          `the proxy on ${endpointText(endpoint)} did not report ready within ${options.timeout}: ${probe.detail}`,
          "see the proxy's log (`journalctl -u meshctl-proxy`)",
        );
      }
      process.stdout.write(`proxy ready on ${endpointText(endpoint)}\n`);
    });
}
