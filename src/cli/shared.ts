// What the capture commands share: the --netns / --state-dir / --config / --log-level options, the logger, the state
// directory's resolution, and the lines every command prints about recovery and the namespace.
import { existsSync } from 'node:fs';
import { Option, type Command } from 'commander';
import { DEFAULT_CONFIG_FILE, loadConfig } from '../config/load.js';
import { createLogger, type Logger } from '../log.js';
import type { Recovery } from '../netfilter/transaction/recovery.js';
import { DEFAULT_STATE_DIR } from '../netfilter/transaction/scope-defaults.js';

/** --netns and --log-level, shared by every capture command. */
/** --log-level: the operational log's level (JSON lines on stderr), the same choices for every command. */
export function logLevelOption(): Option {
  return new Option('--log-level <level>', 'operational log level (JSON on stderr)').choices([
    'trace',
    'debug',
    'info',
    'warn',
    'error',
    'fatal',
  ]);
}

export function addScopeOptions(command: Command, options: { stateDir: boolean; config: boolean }): Command {
  command.option('--netns <name>', 'run every kernel-facing command inside this network namespace (ip netns exec)');
  if (options.stateDir)
    command.option('--state-dir <dir>', `ledger directory (${DEFAULT_STATE_DIR}; or stateDir from the config)`);
  if (options.config)
    command.option('-c, --config <file>', `config file (default ${DEFAULT_CONFIG_FILE} if present), for its stateDir`);
  command.addOption(logLevelOption());
  return command;
}

export function cliLogger(options: Record<string, unknown>, fallback = 'warn'): Logger {
  return createLogger({ level: (options.logLevel as string | undefined) ?? process.env.MESHCTL_LOG_LEVEL ?? fallback });
}

/** --state-dir, else stateDir of --config (or of the default config file when it loads), else /var/lib/meshctl. */
export async function resolveStateDir(options: Record<string, unknown>): Promise<string> {
  if (typeof options.stateDir === 'string') return options.stateDir;
  if (typeof options.config === 'string') return (await loadConfig({ file: options.config })).stateDir;
  if (existsSync(DEFAULT_CONFIG_FILE)) {
    try {
      return (await loadConfig({})).stateDir;
    } catch {
      return DEFAULT_STATE_DIR;
    }
  }
  return DEFAULT_STATE_DIR;
}

export function recoveryLine(recovered: Recovery | null): string[] {
  if (!recovered) return [];
  return [
    `recovered: an interrupted ${recovered.operation} of install ${recovered.installId} was ${recovered.outcome === 'completed' ? 'completed' : 'rolled back'} first (${recovered.changed.join(', ') || 'no rule changes needed'})`,
  ];
}

export function where(netns: string | null): string {
  return netns ? ` in namespace ${netns}` : '';
}
