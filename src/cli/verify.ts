// `meshctl verify`: live probes through the installed rules (no proxy needed); exit 0 when every probe behaves as the
// installed plan says, 1 (VERIFY_FAILED, naming each failed probe and the drift behind it) otherwise.
import type { Command } from 'commander';
import { assertVerified, verifyCapture, type VerifyReport } from '../probes/verify.js';
import { addScopeOptions, cliLogger, resolveStateDir, where } from './shared.js';

const MARK = { pass: 'pass', fail: 'FAIL', skip: 'skip' } as const;

function describe(report: VerifyReport): string {
  const lines = [
    `verify${where(report.netns)} (install ${report.installId}, ${report.backend}): ${report.ok ? 'every probe behaved as planned' : 'PROBES FAILED'}`,
  ];
  for (const p of report.probes) {
    lines.push(`${MARK[p.status]} ${p.family} ${p.name}${p.flow !== '-' ? `: ${p.flow}` : ''}`);
    if (p.expected !== '-') lines.push(`       plan: ${p.expected}`);
    lines.push(`       seen: ${p.detail}`);
  }
  for (const d of report.drift) lines.push(`drift: ${d}`);
  return `${lines.join('\n')}\n`;
}

export function register(program: Command): void {
  const command = program
    .command('verify')
    .description(
      'probe the installed rules live: outbound capture with the right original destination, bypasses, inbound from a peer',
    );
  addScopeOptions(command, { stateDir: true, config: true })
    .option('--peer-netns <name>', 'a namespace that can reach this one, to probe inbound capture from a peer')
    .option(
      '--peer-target <address>',
      'the address the peer connects to (default: the first global address of each family)',
    )
    .option('--json', 'print the report as JSON');
  command.action(async (options: Record<string, unknown>) => {
    const report = await verifyCapture({
      stateDir: await resolveStateDir(options),
      netns: (options.netns as string | undefined) ?? null,
      peerNetns: (options.peerNetns as string | undefined) ?? null,
      peerTarget: (options.peerTarget as string | undefined) ?? null,
      log: cliLogger(options),
    });
    process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : describe(report));
    assertVerified(report);
  });
}
