// Printing errors and choosing exit codes: the single place that turns a MeshctlError into what a user sees.
import type { Command } from 'commander';
import { CommanderError } from 'commander';
import { isMeshctlError } from '../errors.js';

/** Exit statuses shared by all commands; documented in README.md. */
export const EXIT = { ok: 0, error: 1, usage: 2, notInstalled: 3, drifted: 4, proxyNotReady: 5 } as const;

function formatError(error: unknown, debug: boolean): string {
  if (isMeshctlError(error)) {
    const lines = [`meshctl: ${error.code}: ${error.message}`];
    for (const detail of error.details) lines.push(`  ${detail}`);
    if (error.hint) lines.push(`  hint:    ${error.hint}`);
    if (debug && error.stack) lines.push(error.stack);
    if (debug && error.cause instanceof Error && error.cause.stack) lines.push(`cause: ${error.cause.stack}`);
    return lines.join('\n');
  }
  if (error instanceof Error) {
    return debug && error.stack
      ? `meshctl: INTERNAL: ${error.stack}`
      : `meshctl: INTERNAL: ${error.message}\n  hint:    re-run with --debug and report this as a bug`;
  }
  return `meshctl: INTERNAL: ${String(error)}`;
}

/** Makes commander throw instead of exiting, on `command` and every subcommand (they do not inherit it once made). */
function overrideExits(command: Command): void {
  command.exitOverride();
  for (const sub of command.commands) overrideExits(sub);
}

/**
 * Parses argv and runs the command. Usage errors (unknown command or option, missing required option, bad choice)
 * exit 2 after commander's message; --help and --version exit 0; a thrown error is printed by formatError, exit 1.
 */
export async function runMain(program: Command): Promise<void> {
  overrideExits(program);
  try {
    await program.parseAsync(process.argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      process.exitCode = error.exitCode === 0 ? 0 : EXIT.usage;
      return;
    }
    const debug = program.opts<{ debug?: boolean }>().debug === true || process.argv.includes('--debug');
    process.stderr.write(`${formatError(error, debug)}\n`);
    if (process.exitCode === undefined || process.exitCode === 0) process.exitCode = EXIT.error;
  }
}
