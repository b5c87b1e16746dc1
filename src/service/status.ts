// `meshctl service status` as a library call: the three units, the proxy's /ready, the capture ledger against the
// kernel, and one verdict: is this host protected (every TCP flow the config captures goes through a ready proxy)?
import { existsSync } from 'node:fs';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { isMeshctlError } from '../errors.js';
import type { Logger } from '../log.js';
import { contractOf } from '../config/contract.js';
import { captureStatus, type StatusReport } from '../netfilter/status.js';
import { inspectProxy } from './proxy-contract.js';
import { DEFAULT_LAYOUT, UNITS, UNIT_ORDER, onHost, type ServiceLayout } from './layout.js';
import { endpointText, probeReady, type ReadyProbe } from './readiness.js';
import { createSystemd, type Systemd, type UnitState } from './systemctl.js';

export type Verdict = 'protected' | 'not-protected' | 'not-installed';

export interface ServiceStatus {
  readonly verdict: Verdict;
  /** Why not protected, one reason a line, most important first. */
  readonly problems: readonly string[];
  /** Worth knowing, but the host is still protected. */
  readonly notes: readonly string[];
  readonly units: readonly UnitState[];
  readonly configFile: string;
  readonly configError: string | null;
  readonly onProxyDown: Config['safety']['onProxyDown'] | null;
  readonly admin: string | null;
  readonly ready: ReadyProbe | null;
  readonly capture: StatusReport | null;
  readonly captureError: string | null;
}

/** `error` as a status line: `CODE: message` for a MeshctlError. */
function errorLine(error: unknown): string {
  return isMeshctlError(error) ? `${error.code}: ${error.message}` : String(error);
}

/** The host's config, or why it cannot be read (missing file, invalid config). */
async function readServiceConfig(configFile: string): Promise<{ config: Config | null; configError: string | null }> {
  if (!existsSync(configFile)) return { config: null, configError: `${configFile} does not exist` };
  try {
    return { config: await loadConfig({ file: configFile }), configError: null };
  } catch (error) {
    return { config: null, configError: errorLine(error) };
  }
}

/** The capture ledger against the kernel (under the config's stateDir when there is a config), or why not. */
async function readCaptureStatus(
  config: Config | null,
  log: Logger,
): Promise<{ capture: StatusReport | null; captureError: string | null }> {
  try {
    const capture = await captureStatus({ ...(config ? { stateDir: config.stateDir, config } : {}), log });
    return { capture, captureError: null };
  } catch (error) {
    return { capture: null, captureError: errorLine(error) };
  }
}

export async function serviceStatus(options: {
  layout?: ServiceLayout;
  systemd?: Systemd;
  log: Logger;
}): Promise<ServiceStatus> {
  const layout = options.layout ?? DEFAULT_LAYOUT;
  const systemd = options.systemd ?? createSystemd();
  const booted = existsSync('/run/systemd/system');
  const units = booted ? await Promise.all(UNIT_ORDER.map((k) => systemd.show(UNITS[k]))) : [];
  const configFile = onHost(layout, layout.configFile);
  const { config, configError } = await readServiceConfig(configFile);
  const admin = config ? { address: config.proxy.adminAddress, port: config.proxy.adminPort } : null;
  const ready = admin ? await probeReady(admin, 2000) : null;
  const { capture, captureError } = await readCaptureStatus(config, options.log);

  const problems: string[] = [];
  if (!booted) problems.push('systemd is not PID 1 here: the meshctl units cannot run');
  const installed = units.some((u) => u.loadState === 'loaded');
  for (const u of units) {
    if (u.loadState !== 'loaded') problems.push(`${u.unit} is not installed (run \`sudo meshctl service install\`)`);
    else if (u.activeState !== 'active')
      problems.push(
        `${u.unit} is ${u.activeState} (${u.subState}${u.result && u.result !== 'success' ? `, result ${u.result}` : ''})`,
      );
  }
  if (configError) problems.push(`config: ${configError}`);
  if (ready && !ready.ready) problems.push(`the proxy is not ready on ${endpointText(admin!)}: ${ready.detail}`);
  // The proxy must keep the contract of the rules that are installed (the ledger's config), not just answer.
  const installedConfig = capture?.installedConfig ?? null;
  if (ready?.ready && installedConfig) {
    const proxy = await inspectProxy(
      contractOf(installedConfig),
      { address: installedConfig.proxy.adminAddress, port: installedConfig.proxy.adminPort },
      { netns: null, timeoutMs: 2000 },
    );
    for (const m of proxy.mismatches)
      problems.push(`the proxy does not keep the installed rules' contract: ${m.message} (fix: ${m.fix})`);
  }
  if (captureError) problems.push(`capture: ${captureError}`);
  else if (capture && !capture.installed) problems.push('no capture rules are installed: traffic is not intercepted');
  else if (capture && !capture.inSync)
    problems.push(
      'the capture rules have DRIFTED from the installed plan (`systemctl reload meshctl-capture` repairs them)',
    );
  const notes: string[] = [];
  if (capture?.configChanged)
    notes.push(
      `the installed rules come from an older config than ${configFile} (\`systemctl reload meshctl-capture\` applies it)`,
    );
  const verdict: Verdict =
    !installed && !(capture?.installed ?? false)
      ? 'not-installed'
      : problems.length === 0
        ? 'protected'
        : 'not-protected';
  return {
    verdict,
    problems,
    notes,
    units,
    configFile,
    configError,
    onProxyDown: config?.safety.onProxyDown ?? null,
    admin: admin ? endpointText(admin) : null,
    ready,
    capture,
    captureError,
  };
}
