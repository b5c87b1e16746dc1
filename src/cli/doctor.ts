// `meshctl doctor`: prints every finding with its fix; exit 1 when any finding is an error (install would fail or
// be unsafe here), else 0.
import type { Command } from 'commander';
import type { Config } from '../config/types.js';
import { runDoctor, type DoctorReport } from '../netfilter/host/doctor.js';
import { addConfigOptions, loadConfigFromOptions } from './config-flags.js';
import { cliLogger, where } from './shared.js';
import { EXIT } from './output.js';

const MARK = { ok: 'ok   ', info: 'info ', warn: 'WARN ', error: 'ERROR' } as const;

function describe(report: DoctorReport): string {
  const lines = [
    `meshctl doctor${where(report.netns)}: ${report.ok ? 'no blocking problems' : 'problems found that block a safe install'}`,
  ];
  for (const f of report.findings) {
    lines.push(`${MARK[f.severity]} ${f.message}`);
    if (f.fix) lines.push(`      fix: ${f.fix}`);
  }
  return `${lines.join('\n')}\n`;
}

export function register(program: Command): void {
  const command = program
    .command('doctor')
    .description(
      'check privileges, backends, kernel features, IPv6, other rule owners and SSH safety; each finding with a fix',
    );
  addConfigOptions(command);
  command
    .option('--netns <name>', 'check inside this network namespace (ip netns exec)')
    .option('--json', 'print the findings as JSON');
  command.action(async (options: Record<string, unknown>) => {
    let config: Config | null = null;
    let configError: unknown;
    try {
      config = await loadConfigFromOptions(options);
    } catch (error) {
      configError = error;
    }
    const report = await runDoctor({
      config,
      configError,
      netns: (options.netns as string | undefined) ?? null,
      ...(typeof options.stateDir === 'string' ? { stateDir: options.stateDir } : {}),
      log: cliLogger(options),
    });
    process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : describe(report));
    process.exitCode = report.ok ? EXIT.ok : EXIT.error;
  });
}
