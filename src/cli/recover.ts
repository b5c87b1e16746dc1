// `meshctl recover`: finishes a transaction that was interrupted (meshctl killed, the host lost power) and does
// nothing else: an install or update is rolled back, an uninstall is completed. Every command that changes rules
// does this first anyway; `status`, which changes nothing, names this command when it finds one.
import type { Command } from 'commander';
import { recoverInterrupted } from '../netfilter/transaction/recovery.js';
import { openScope, withScopeLock } from '../netfilter/transaction/scope.js';
import { addScopeOptions, cliLogger, recoveryLine, resolveStateDir, where } from './shared.js';

export function register(program: Command): void {
  const command = program
    .command('recover')
    .description(
      'finish an interrupted install, update or uninstall (roll back or complete it) and change nothing else',
    );
  addScopeOptions(command, { stateDir: true, config: true }).option('--json', 'print the result as JSON');
  command.action(async (options: Record<string, unknown>) => {
    const netns = (options.netns as string | undefined) ?? null;
    const scope = openScope({ stateDir: await resolveStateDir(options), netns, log: cliLogger(options) });
    const recovered = await withScopeLock(scope, 'recover', () => recoverInterrupted(scope));
    if (options.json) {
      process.stdout.write(`${JSON.stringify({ recovered }, null, 2)}\n`);
      return;
    }
    const lines = recoveryLine(recovered);
    process.stdout.write(
      `${lines.length > 0 ? lines.join('\n') : `nothing to recover${where(netns)}: no interrupted transaction`}\n`,
    );
  });
}
