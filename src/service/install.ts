// `meshctl service install` / `uninstall` as library calls: put the units, sysusers file, drop-ins and config in
// place, then let systemd run socket → proxy (active once /ready answers) → capture; and the exact reverse.
// In a tree the Debian package installed, the package already placed the units, the sysusers file, the launcher
// and the config (PACKAGED_LAYOUT): only the drop-ins are written and removed here, never a second copy in /etc.
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  rmdirSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { MeshctlError, isMeshctlError } from '../errors.js';
import type { Logger } from '../log.js';
import { captureStatus } from '../netfilter/status.js';
import { uninstallCapture, type UninstallResult } from '../netfilter/uninstall.js';
import {
  DEFAULT_CONFIG_TEXT,
  DROP_IN_NAME,
  PACKAGED_LAYOUT,
  PACKAGED_MARKER,
  PACKAGE_ROOT,
  SHIPPED_SYSUSERS,
  SHIPPED_UNIT_DIR,
  UNITS,
  UNIT_ORDER,
  captureEnvText,
  layoutFor,
  onHost,
  renderDropIns,
  renderShipped,
  type ServiceLayout,
} from './layout.js';
import { probeReady, waitReady, endpointText, type AdminEndpoint, type ReadyProbe } from './readiness.js';
import { createSystemd, type Systemd, type UnitState } from './systemctl.js';
import { removeUnitDropins, syncUnitDropins } from './unit-dropins.js';
import { MESHCTL_BIN } from '../netfilter/transaction/revert.js';

export type FileAction = 'created' | 'updated' | 'unchanged' | 'removed' | 'absent' | 'kept';

export interface FileChange {
  readonly path: string;
  readonly action: FileAction;
}

export interface ServiceInstallOptions {
  /** --config: the config to install when none exists at /etc/meshctl/config.yaml (an existing one is kept). */
  readonly configFile?: string;
  /** --confirm-within, as given ("60s"): the first capture start arms a revert unless `meshctl confirm` arrives. */
  readonly confirmWithin?: string | null;
  /** How long to wait for the proxy's /ready after its unit started (the unit's own ExecStartPost waits too). */
  readonly readyTimeoutMs?: number;
  readonly layout?: ServiceLayout;
  readonly systemd?: Systemd;
  readonly log: Logger;
}

export interface ServiceInstallResult {
  readonly files: readonly FileChange[];
  readonly config: {
    readonly path: string;
    readonly action: 'created-default' | 'copied' | 'kept' | 'kept-differs';
    readonly source: string | null;
  };
  readonly proxyUser: Config['proxy']['user'];
  readonly onProxyDown: Config['safety']['onProxyDown'];
  /** What was done to each unit: started, restarted (its files changed), reloaded (config re-read), already active. */
  readonly actions: Readonly<Record<string, 'started' | 'restarted' | 'reloaded'>>;
  readonly units: readonly UnitState[];
  readonly ready: ReadyProbe;
  readonly admin: string;
  readonly confirmWithin: string | null;
  readonly warnings: readonly string[];
}

function requireRoot(what: string): void {
  if (process.getuid?.() !== 0) {
    throw new MeshctlError(
      'NOT_ROOT',
      `meshctl ${what} writes to /etc/systemd/system and runs systemctl, which needs root (running as uid ${process.getuid?.()})`,
      `run it with sudo: sudo meshctl ${what}`,
    );
  }
}

function requireSystemd(what: string): void {
  if (!existsSync('/run/systemd/system')) {
    throw new MeshctlError(
      'COMMAND_FAILED',
      `meshctl ${what} needs systemd as PID 1, and this system was not booted with systemd (/run/systemd/system is missing)`,
      'run the proxy and capture by hand instead: `meshctl proxy --config F` and `meshctl install --config F`',
    );
  }
}

/** Writes `text` to `path` unless it already holds exactly that. */
function writeIfChanged(path: string, text: string, mode = 0o644): FileAction {
  let before: string | null = null;
  try {
    before = readFileSync(path, 'utf8');
  } catch {
    // absent
  }
  if (before === text) return 'unchanged';
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  writeFileSync(path, text, { mode });
  return before === null ? 'created' : 'updated';
}

/** The layout of this meshctl tree: the Debian package's when its build left the marker, else the default. */
function installedLayout(): ServiceLayout {
  let packagedBy: string | null = null;
  try {
    packagedBy = readFileSync(PACKAGED_MARKER, 'utf8').trim();
  } catch {
    // not installed by a package
  }
  return layoutFor(packagedBy);
}

/** A file from systemd/, as installed in `layout` (its launcher and sysusers paths). */
function readShipped(path: string, layout: ServiceLayout): string {
  try {
    return renderShipped(readFileSync(path, 'utf8'), layout);
  } catch (error) {
    throw new MeshctlError(
      'INTERNAL',
      `the shipped unit file ${path} is missing from the meshctl package at ${PACKAGE_ROOT}`,
      'reinstall meshctl (the systemd/ folder ships with it)',
      { cause: error },
    );
  }
}

/** A file the package placed (a unit, the sysusers file): it must be there; meshctl never writes it. */
function requirePackaged(path: string): FileChange {
  if (!existsSync(path)) {
    throw new MeshctlError(
      'INTERNAL',
      `${path} is missing, but the meshctl package installs it (this meshctl runs from ${PACKAGE_ROOT})`,
      'reinstall the package: sudo apt-get install --reinstall meshctl',
    );
  }
  return { path, action: 'unchanged' };
}

/** A symlink at `path` that points into this package. */
function ownLink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink() && resolve(dirname(path), readlinkSync(path)).startsWith(PACKAGE_ROOT);
  } catch {
    return false;
  }
}

/**
 * Installs and starts meshctl under systemd. Throws NOT_ROOT, CONFIG_* (the config is validated before any unit
 * is written), COMMAND_FAILED (systemctl, with the unit's journal tail), PROXY_NOT_READY.
 */
export async function installService(options: ServiceInstallOptions): Promise<ServiceInstallResult> {
  requireRoot('service install');
  requireSystemd('service install');
  const layout = options.layout ?? installedLayout();
  const ownFiles = layout.owner === 'meshctl';
  const systemd = options.systemd ?? createSystemd();
  const log = options.log.child({ component: 'service' });
  const files: FileChange[] = [];
  const warnings: string[] = [];

  // The proxy user first: the config names it, and validating the config resolves it.
  const sysusers = onHost(layout, layout.sysusersFile);
  files.push(
    ownFiles
      ? { path: sysusers, action: writeIfChanged(sysusers, readShipped(SHIPPED_SYSUSERS, layout)) }
      : requirePackaged(sysusers),
  );
  await systemd.sysusers(sysusers);

  const { config, configPath, configAction } = await installConfig(layout, options, warnings);
  files.push({
    path: configPath,
    action: configAction === 'kept' || configAction === 'kept-differs' ? 'kept' : 'created',
  });
  const unitFilesChanged = installUnitFiles(layout, config, files, warnings);
  installBinLink(layout, files, warnings);
  installUnitsDropins(layout, config, files);

  const envFile = onHost(layout, layout.captureEnvFile);
  writeIfChanged(envFile, captureEnvText(options.confirmWithin ?? null));

  await systemd.systemctl(['daemon-reload']);
  await systemd.systemctl(['enable', ...UNIT_ORDER.map((k) => UNITS[k])]);
  log.info({ units: UNIT_ORDER.map((k) => UNITS[k]), changed: [...unitFilesChanged] }, 'units installed and enabled');

  const actions = await startUnits(systemd, unitFilesChanged, log);
  // The deadline applied to this start only; later restarts (a reboot, BindsTo in open mode) install without it.
  writeIfChanged(envFile, captureEnvText(null));

  const { admin, ready, units } = await checkStarted(systemd, config, options);
  return {
    files,
    config: { path: configPath, action: configAction, source: options.configFile ?? null },
    proxyUser: config.proxy.user,
    onProxyDown: config.safety.onProxyDown,
    actions,
    units,
    ready,
    admin: endpointText(admin),
    confirmWithin: options.confirmWithin ?? null,
    warnings,
  };
}

/** The config at layout.configFile: kept when there is one, else copied from --config, else the default; validated. */
async function installConfig(
  layout: ServiceLayout,
  options: ServiceInstallOptions,
  warnings: string[],
): Promise<{ config: Config; configPath: string; configAction: ServiceInstallResult['config']['action'] }> {
  const configPath = onHost(layout, layout.configFile);
  let configAction: ServiceInstallResult['config']['action'];
  let config: Config;
  if (existsSync(configPath)) {
    config = await loadConfig({ file: configPath });
    configAction = 'kept';
    if (options.configFile !== undefined && resolve(options.configFile) !== configPath) {
      const given = readFileSync(options.configFile, 'utf8');
      if (given !== readFileSync(configPath, 'utf8')) {
        configAction = 'kept-differs';
        warnings.push(
          `kept the existing ${configPath}; it differs from ${options.configFile}, which was NOT installed (edit ${configPath}, or remove it and run this again)`,
        );
      }
    }
  } else if (options.configFile !== undefined) {
    await loadConfig({ file: options.configFile }); // refuse an invalid config before anything is started
    const text = readFileSync(options.configFile, 'utf8');
    writeIfChanged(configPath, text);
    config = await loadConfig({ file: configPath });
    configAction = 'copied';
  } else {
    writeIfChanged(configPath, DEFAULT_CONFIG_TEXT);
    config = await loadConfig({ file: configPath });
    configAction = 'created-default';
  }
  return { config, configPath, configAction };
}

/**
 * The drop-ins that keep the units of excludeUnits/includeUnits in step (src/service/unit-dropins.ts), written here
 * because the capture unit's sandbox keeps /etc read-only: its `meshctl install` then finds them in place.
 */
function installUnitsDropins(layout: ServiceLayout, config: Config, files: FileChange[]): void {
  const out = config.capture.outbound;
  const units = [...out.excludeUnits, ...(out.includeUnits === 'all' ? [] : out.includeUnits)].map((u) => u.name);
  const root = onHost(layout, layout.dropInDir ?? layout.unitDir);
  const change = syncUnitDropins(units, {
    stateDir: config.stateDir,
    netns: null,
    command: [process.execPath, MESHCTL_BIN],
    root,
  });
  for (const path of change.written) files.push({ path, action: 'created' });
  for (const path of change.removed) files.push({ path, action: 'removed' });
}

/** Removes the units' drop-ins (service uninstall); returns what it removed. */
function uninstallUnitsDropins(layout: ServiceLayout): FileChange[] {
  const root = onHost(layout, layout.dropInDir ?? layout.unitDir);
  return removeUnitDropins({ netns: null, root }).removed.map((path) => ({ path, action: 'removed' as const }));
}

/** The units (ours, or the package's checked in place) and the drop-ins for `config`; returns the units whose files changed. */
function installUnitFiles(layout: ServiceLayout, config: Config, files: FileChange[], warnings: string[]): Set<string> {
  const ownFiles = layout.owner === 'meshctl';
  const unitFilesChanged = new Set<string>();
  for (const key of UNIT_ORDER) {
    const unit = UNITS[key];
    const path = join(onHost(layout, layout.unitDir), unit);
    if (!ownFiles) {
      files.push(requirePackaged(path)); // the package's postinst restarts what an upgrade changed
      continue;
    }
    const action = writeIfChanged(path, readShipped(join(SHIPPED_UNIT_DIR, unit), layout));
    files.push({ path, action });
    if (action !== 'unchanged') unitFilesChanged.add(unit);
    const packaged = onHost(layout, join(PACKAGED_LAYOUT.unitDir, unit));
    if (existsSync(packaged))
      warnings.push(
        `${path} now overrides the meshctl package's ${packaged}: these units run ${layout.binLink}, not the package's meshctl`,
      );
  }
  for (const dropIn of renderDropIns(config, layout)) {
    const path = onHost(layout, dropIn.path);
    const action = writeIfChanged(path, dropIn.text);
    files.push({ path, action });
    if (action !== 'unchanged') unitFilesChanged.add(dropIn.unit);
  }
  return unitFilesChanged;
}

/** The launcher the units run: a link into this package (created when absent), or the package's own. */
function installBinLink(layout: ServiceLayout, files: FileChange[], warnings: string[]): void {
  const bin = onHost(layout, layout.binLink);
  if (layout.owner !== 'meshctl') {
    files.push(requirePackaged(bin));
  } else if (!existsSync(bin) && !(lstatSync(bin, { throwIfNoEntry: false })?.isSymbolicLink() ?? false)) {
    mkdirSync(dirname(bin), { recursive: true });
    symlinkSync(join(PACKAGE_ROOT, 'bin', 'meshctl'), bin);
    files.push({ path: bin, action: 'created' });
  } else if (ownLink(bin)) {
    files.push({ path: bin, action: 'unchanged' });
  } else {
    files.push({ path: bin, action: 'kept' });
    warnings.push(`${bin} exists and is not a link into ${PACKAGE_ROOT}: the units run that meshctl`);
  }
}

/**
 * socket and proxy: a restart when their files changed (the socket keeps queueing while the proxy restarts);
 * otherwise a reload (SIGHUP: the proxy re-reads the config, open connections stay).
 */
async function startUnits(
  systemd: Systemd,
  unitFilesChanged: ReadonlySet<string>,
  log: Logger,
): Promise<Record<string, 'started' | 'restarted' | 'reloaded'>> {
  const actions: Record<string, 'started' | 'restarted' | 'reloaded'> = {};
  for (const key of UNIT_ORDER) {
    const unit = UNITS[key];
    const before = await systemd.show(unit);
    const active = before.activeState === 'active';
    let verb: 'start' | 'restart' | 'reload';
    if (!active) verb = 'start';
    else if (key === 'socket') verb = unitFilesChanged.has(unit) ? 'restart' : 'start';
    else if (key === 'proxy')
      verb = unitFilesChanged.has(unit) || unitFilesChanged.has(UNITS.socket) ? 'restart' : 'reload';
    else verb = 'reload'; // capture: reload = `meshctl install` again, an atomic update (never a window without rules)
    if (key === 'socket' && verb === 'restart') {
      // Restarting a socket whose service runs fails ("Socket service already active"); restart them together.
      await systemd.systemctl(['restart', UNITS.socket, UNITS.proxy], { units: [UNITS.socket, UNITS.proxy] });
      actions[UNITS.socket] = 'restarted';
      actions[UNITS.proxy] = 'restarted';
      continue;
    }
    if (key === 'proxy' && actions[UNITS.proxy] === 'restarted') continue;
    await systemd.systemctl([verb, unit], { units: [unit] });
    actions[unit] = verb === 'start' ? 'started' : verb === 'restart' ? 'restarted' : 'reloaded';
    log.info({ unit, action: actions[unit] }, 'unit up');
  }
  return actions;
}

/** After starting: the proxy's /ready answers and every unit is active. Throws PROXY_NOT_READY, COMMAND_FAILED. */
async function checkStarted(
  systemd: Systemd,
  config: Config,
  options: ServiceInstallOptions,
): Promise<{ admin: AdminEndpoint; ready: ReadyProbe; units: UnitState[] }> {
  const admin = { address: config.proxy.adminAddress, port: config.proxy.adminPort };
  const ready = await waitReady(admin, { timeoutMs: options.readyTimeoutMs ?? 20_000 });
  if (!ready.ready) {
    throw new MeshctlError(
      'PROXY_NOT_READY',
      `${UNITS.proxy} is running, but the proxy admin port ${endpointText(admin)} does not report ready: ${ready.detail}`,
      `see \`journalctl -u ${UNITS.proxy}\``,
      { details: (await systemd.journalTail(UNITS.proxy, 12)).map((l) => `journal: ${l}`) },
    );
  }
  const units = await Promise.all(UNIT_ORDER.map((k) => systemd.show(UNITS[k])));
  const down = units.filter((u) => u.activeState !== 'active');
  if (down.length > 0) {
    throw new MeshctlError(
      'COMMAND_FAILED',
      `after starting, ${down.map((u) => `${u.unit} is ${u.activeState} (${u.subState})`).join(', ')}`,
      `see \`systemctl status ${down.map((u) => u.unit).join(' ')}\``,
    );
  }
  return { admin, ready, units };
}

export interface ServiceUninstallOptions {
  /** Also remove /etc/meshctl/config.yaml (unless the package owns it) and the state directory. */
  readonly purge?: boolean;
  readonly layout?: ServiceLayout;
  readonly systemd?: Systemd;
  readonly log: Logger;
}

export interface ServiceUninstallResult {
  readonly files: readonly FileChange[];
  /** What stopping the capture unit (or, when it was not running, meshctl uninstall) removed. */
  readonly capture: UninstallResult | { readonly action: 'stopped-unit' };
  readonly stopped: readonly string[];
  readonly keptConfig: string | null;
  /** What removes the kept config: `--purge` for files meshctl placed, the package manager for the package's conffile. */
  readonly purgeHint: string;
  readonly warnings: readonly string[];
}

/** The config the units use, or null when it is missing or invalid (uninstall must work anyway). */
async function tryLoadInstalledConfig(path: string, warnings: string[]): Promise<Config | null> {
  if (!existsSync(path)) return null;
  try {
    return await loadConfig({ file: path });
  } catch (error) {
    warnings.push(
      `could not load ${path} (${isMeshctlError(error) ? error.code : 'error'}: ${(error as Error).message}); used the default state directory`,
    );
    return null;
  }
}

/**
 * Stops capture (removing exactly the rules it installed), the proxy and its sockets; disables the units and
 * removes the drop-ins, and (unless the package owns them) the units, sysusers file and the /usr/local/bin link.
 * The proxy user stays (files may belong to it); the config stays unless `purge`. The package's prerm runs this
 * on removal. Throws NOT_ROOT, COMMAND_FAILED, and capture uninstall errors (rules left in place).
 */
export async function uninstallService(options: ServiceUninstallOptions): Promise<ServiceUninstallResult> {
  requireRoot('service uninstall');
  const layout = options.layout ?? installedLayout();
  const ownFiles = layout.owner === 'meshctl';
  const booted = existsSync('/run/systemd/system');
  const systemd = options.systemd ?? createSystemd();
  const log = options.log.child({ component: 'service' });
  const warnings: string[] = [];
  const configPath = onHost(layout, layout.configFile);
  const config = await tryLoadInstalledConfig(configPath, warnings);
  const stateDir = config?.stateDir;

  const stopped: string[] = [];
  if (booted) {
    for (const key of [...UNIT_ORDER].reverse()) {
      const unit = UNITS[key];
      const state = await systemd.show(unit);
      if (state.loadState === 'not-found') continue;
      if (state.activeState !== 'inactive' || key === 'capture') {
        await systemd.systemctl(['stop', unit], { units: [unit] });
        stopped.push(unit);
      }
    }
  }
  // Whatever the capture unit did (or if it was never started by systemd), the ledger decides what is left.
  const left = await captureStatus({ ...(stateDir ? { stateDir } : {}), log });
  let capture: ServiceUninstallResult['capture'] = { action: 'stopped-unit' };
  if (left.installed) {
    log.warn(
      { installId: left.installId },
      'capture still installed after stopping its unit; uninstalling it directly',
    );
    capture = await uninstallCapture({ ...(stateDir ? { stateDir } : {}), log });
  }

  const files: FileChange[] = [];
  if (booted) {
    const present = [];
    for (const key of UNIT_ORDER)
      if ((await systemd.show(UNITS[key])).loadState !== 'not-found') present.push(UNITS[key]);
    if (present.length > 0) await systemd.systemctl(['disable', ...present]);
  }
  const remove = (path: string, recursive = false): void => {
    const exists = existsSync(path) || (lstatSync(path, { throwIfNoEntry: false })?.isSymbolicLink() ?? false);
    if (exists) rmSync(path, { recursive, force: true });
    files.push({ path, action: exists ? 'removed' : 'absent' });
  };
  for (const key of UNIT_ORDER) {
    const unit = UNITS[key];
    if (ownFiles) remove(join(onHost(layout, layout.unitDir), unit));
    const dropInDir = join(onHost(layout, layout.dropInDir ?? layout.unitDir), `${unit}.d`);
    remove(join(dropInDir, DROP_IN_NAME));
    try {
      rmdirSync(dropInDir); // only when empty: an admin's own drop-ins stay
    } catch {
      // not empty or absent
    }
  }
  // The units' drop-ins (excludeUnits/includeUnits): the capture unit's sandbox could not remove them.
  files.push(...uninstallUnitsDropins(layout));
  if (ownFiles) remove(onHost(layout, layout.sysusersFile));
  remove(onHost(layout, layout.captureEnvFile));
  const bin = onHost(layout, layout.binLink);
  if (!ownFiles) {
    // The units, sysusers file and launcher belong to the package: `apt-get remove meshctl` removes them.
  } else if (ownLink(bin)) remove(bin);
  else if (existsSync(bin)) warnings.push(`kept ${bin}: it is not a link into ${PACKAGE_ROOT}`);
  if (options.purge) {
    if (ownFiles) remove(configPath);
    else
      warnings.push(`kept ${configPath}: it is the meshctl package's conffile (\`apt-get purge meshctl\` removes it)`);
    if (stateDir) remove(stateDir, true);
  }
  if (booted) {
    await systemd.systemctl(['daemon-reload']);
    await systemd.systemctl(['reset-failed', ...UNIT_ORDER.map((k) => UNITS[k])]).catch(() => undefined); // fails when none is failed
  }
  const purgeHint = ownFiles ? '--purge removes it' : '`apt-get purge meshctl` removes it';
  return { files, capture, stopped, keptConfig: existsSync(configPath) ? configPath : null, purgeHint, warnings };
}

export { probeReady };
