// `meshctl confirm`: keeps an install made with --confirm-within by disarming its pending revert.
import type { Command } from 'commander';
import { confirmInstall } from '../netfilter/confirm.js';
import { openScope } from '../netfilter/transaction/scope.js';
import { addScopeOptions, cliLogger, recoveryLine, resolveStateDir, where } from './shared.js';

export function register(program: Command): void {
  const command = program
    .command('confirm')
    .description('keep the rules of an install made with --confirm-within (disarms the revert)');
  addScopeOptions(command, { stateDir: true, config: true }).option('--json', 'print the result as JSON');
  command.action(async (options: Record<string, unknown>) => {
    const netns = (options.netns as string | undefined) ?? null;
    const scope = openScope({ stateDir: await resolveStateDir(options), netns, log: cliLogger(options) });
    const result = await confirmInstall(scope);
    if (options.json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      return;
    }
    const lines = recoveryLine(result.recovered);
    const failed = result.revertFailed;
    if (failed) lines.push(`REVERT FAILED at ${failed.at} after ${failed.attempts} attempts: ${failed.error}`);
    if (result.action === 'confirmed')
      lines.push(
        `confirmed install ${result.installId}${where(netns)}: the revert due at ${result.deadline} is disarmed; the rules stay`,
      );
    else if (result.action === 'already-confirmed')
      lines.push(`install ${result.installId}${where(netns)} was already confirmed`);
    else
      lines.push(
        `install ${result.installId}${where(netns)} has no pending revert (it was installed without --confirm-within)`,
      );
    process.stdout.write(`${lines.join('\n')}\n`);
  });
}
