// `meshctl demo` (`npm run demo`): a guided run of the real proxy and capture rules in a throwaway namespace lab,
// with a report of what happened to each connection. Ctrl-C (or SIGTERM) tears the lab down before exiting.
import { Option, type Command } from 'commander';
import { MeshctlError } from '../errors.js';
import type { DemoLab } from '../demo/lab.js';
import { runDemo } from '../demo/run.js';
import { EXIT } from './output.js';

export function register(program: Command): void {
  program
    .command('demo')
    .description(
      'show meshctl at work in a throwaway namespace lab (two meshctl hosts talking mTLS, and a plain peer) (needs root; leaves nothing behind)',
    )
    .option('--proxy-user <name>', 'non-root user the lab proxy runs as', 'nobody')
    .option('--quiet', 'print only the report, not each setup step')
    .addOption(new Option('--prefix <name>', 'namespace name prefix').default('mdemo').hideHelp())
    .addOption(new Option('--subnet <n>', 'lab subnet 10.<n>.77.0/24').default('250').hideHelp())
    .action(async (options: { proxyUser: string; quiet?: boolean; prefix: string; subnet: string }) => {
      if (!/^[a-z][a-z0-9-]{0,9}$/.test(options.prefix))
        throw new MeshctlError(
          'CONFIG_INVALID',
          `--prefix ${options.prefix}: use 1 to 10 lowercase letters, digits or -`,
          'for example --prefix mdemo',
        );
      const subnet = Number(options.subnet);
      if (!Number.isInteger(subnet) || subnet < 0 || subnet > 255)
        throw new MeshctlError(
          'CONFIG_INVALID',
          `--subnet ${options.subnet}: must be 0 to 255`,
          'for example --subnet 250',
        );
      let lab: DemoLab | null = null;
      let interrupted = false;
      const onSignal = (signal: NodeJS.Signals) => {
        if (interrupted) return;
        interrupted = true;
        process.stderr.write(`\n${signal}: tearing the demo lab down...\n`);
        void (lab?.teardown() ?? Promise.resolve([])).then((left) => {
          process.stderr.write(
            left.length === 0 ? 'demo lab removed; nothing left behind\n' : `could not remove: ${left.join('; ')}\n`,
          );
          process.exit(130);
        });
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      process.on('SIGHUP', onSignal);
      const progress = options.quiet ? () => {} : (line: string) => process.stderr.write(`  · ${line}\n`);
      const notice = (line: string) => process.stderr.write(`  · ${line}\n`);
      const result = await runDemo({
        prefix: options.prefix,
        subnet,
        proxyUser: options.proxyUser,
        progress,
        notice,
        onLab: (l) => (lab = l),
      });
      process.stdout.write(result.report);
      process.stdout.write(
        result.leftovers.length === 0
          ? 'Lab torn down: capture removed, proxy stopped, namespaces deleted. Nothing was left behind.\n'
          : `Teardown could not undo: ${result.leftovers.join('; ')}\n`,
      );
      if (!result.ok || result.leftovers.length > 0) process.exitCode = EXIT.error;
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.off('SIGHUP', onSignal);
    });
}
