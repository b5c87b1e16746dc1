// The systemd side of `meshctl service`: systemctl, systemd-sysusers and journalctl through execa, with failures
// turned into COMMAND_FAILED errors that carry the unit's last journal lines.
import { execa } from 'execa';
import { MeshctlError } from '../errors.js';

export interface UnitState {
  readonly unit: string;
  /** active, inactive, failed, activating, deactivating, reloading. */
  readonly activeState: string;
  /** running, exited, listening, dead, auto-restart, … */
  readonly subState: string;
  /** enabled, disabled, static, or '' when the unit file does not exist. */
  readonly unitFileState: string;
  readonly loadState: string;
  readonly mainPid: number;
  readonly since: string;
  readonly restarts: number;
  readonly result: string;
}

export interface Systemd {
  /** Runs systemctl with `args`; throws COMMAND_FAILED naming the command, with stderr and the units' journal tail. */
  systemctl(args: readonly string[], context?: { units?: readonly string[] }): Promise<string>;
  show(unit: string): Promise<UnitState>;
  sysusers(file: string): Promise<void>;
  journalTail(unit: string, lines: number): Promise<string[]>;
}

/** True when systemd is PID 1 here (sd_booted(): /run/systemd/system exists). */
export { systemdAvailable } from '../netfilter/transaction/revert.js';

/** The properties `show` asks `systemctl show` for. */
const SHOWN_PROPERTIES = [
  'ActiveState',
  'SubState',
  'UnitFileState',
  'LoadState',
  'MainPID',
  'ActiveEnterTimestamp',
  'NRestarts',
  'Result',
];

/** The unit's state from `systemctl show`'s KEY=VALUE lines (a property it did not print gets its "unknown" value). */
function parseUnitState(unit: string, stdout: string): UnitState {
  const map = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) map.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return {
    unit,
    activeState: map.get('ActiveState') ?? 'unknown',
    subState: map.get('SubState') ?? 'unknown',
    unitFileState: map.get('UnitFileState') ?? '',
    loadState: map.get('LoadState') ?? 'unknown',
    mainPid: Number(map.get('MainPID') ?? 0) || 0,
    since: map.get('ActiveEnterTimestamp') ?? '',
    restarts: Number(map.get('NRestarts') ?? 0) || 0,
    result: map.get('Result') ?? '',
  };
}

/** systemctl and friends for the running system, or with `root` for an offline image (`systemctl --root`). */
export function createSystemd(options: { root?: string; env?: NodeJS.ProcessEnv } = {}): Systemd {
  const offline = options.root !== undefined && options.root !== '/';
  const rootArgs = offline ? [`--root=${options.root}`] : [];
  const env = options.env ?? process.env;

  const journalTail = async (unit: string, lines: number): Promise<string[]> => {
    if (offline) return [];
    const result = await execa('journalctl', ['--no-pager', '-q', '-o', 'cat', '-n', String(lines), '-u', unit], {
      reject: false,
      env,
      timeout: 10_000,
    });
    return result.stdout.split('\n').filter((l) => l.trim() !== '');
  };

  return {
    async systemctl(args, context = {}) {
      const full = [...rootArgs, ...args];
      const result = await execa('systemctl', full, { reject: false, env, timeout: 180_000 });
      if (result.exitCode === 0) return result.stdout;
      const journal: string[] = [];
      for (const unit of context.units ?? []) {
        const tail = await journalTail(unit, 12);
        if (tail.length > 0)
          journal.push(`journal of ${unit} (last ${tail.length} lines):`, ...tail.map((l) => `  ${l}`));
      }
      throw new MeshctlError(
        'COMMAND_FAILED',
        `systemctl ${full.join(' ')} failed (exit ${result.exitCode ?? result.signal ?? 'none'})`,
        context.units?.length
          ? `see \`systemctl status ${context.units.join(' ')}\` and \`journalctl -u ${context.units[0]}\``
          : 'see the stderr above',
        {
          cause: result,
          details: [
            ...(result.stderr.trim() ? [`stderr:  ${result.stderr.trim().split('\n').join('\n         ')}`] : []),
            ...journal,
          ],
        },
      );
    },
    async show(unit) {
      const result = await execa(
        'systemctl',
        [...rootArgs, 'show', unit, ...SHOWN_PROPERTIES.map((p) => `--property=${p}`)],
        { reject: false, env, timeout: 15_000 },
      );
      return parseUnitState(unit, result.stdout);
    },
    async sysusers(file) {
      const args = [...rootArgs, file];
      const result = await execa('systemd-sysusers', args, { reject: false, env, timeout: 30_000 });
      if (result.exitCode !== 0) {
        throw new MeshctlError(
          'COMMAND_FAILED',
          `systemd-sysusers ${args.join(' ')} failed (exit ${result.exitCode ?? 'none'}): the proxy user was not created`,
          'check /etc/passwd and /etc/group are writable, or create the user by hand',
          { cause: result, details: result.stderr.trim() ? [`stderr:  ${result.stderr.trim()}`] : [] },
        );
      }
    },
    journalTail,
  };
}
