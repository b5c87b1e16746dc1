// CLI entry: builds the commander program from one module per command. Only src/cli prints or exits.
// First: for `meshctl proxy` it sets the proxy's V8 flags as it loads, before the other imports allocate.
import '../proxy/heap-flags.js';
import { Command } from 'commander';
import { assertNetnsExists } from '../values/netns.js';
import { toolVersion } from '../netfilter/transaction/scope-defaults.js';
import { runMain } from './output.js';
import { assertMayRun } from './privileges.js';

const program = new Command('meshctl')
  .description('Transparent TCP interception for Linux hosts: netfilter capture plus a local sidecar proxy')
  .version(toolVersion(), '-V, --version', 'print the meshctl version')
  .option('--debug', 'show stack traces on errors')
  .showHelpAfterError();

// Before any action has read or changed anything: a command that changes rules or state refuses a non-root user
// (NOT_ROOT), and every command that takes a namespace (--netns, verify's --peer-netns) checks it here: a malformed
// name is CONFIG_INVALID, a missing namespace NETNS_NOT_FOUND.
program.hook('preAction', (_program, command) => {
  assertMayRun(command);
  const options = command.opts<{ netns?: unknown; peerNetns?: unknown }>();
  if (typeof options.netns === 'string') assertNetnsExists(options.netns, '--netns');
  if (typeof options.peerNetns === 'string') assertNetnsExists(options.peerNetns, '--peer-netns');
});

// One line per command module (each exports `register(program)`), keyed by the top-level commands it registers.
type CommandModule = { register(program: Command): void };
const MODULES: ReadonlyArray<readonly [readonly string[], () => Promise<CommandModule>]> = [
  [['render'], () => import('./render.js')],
  [['explain'], () => import('./explain.js')],
  [['config'], () => import('./config.js')],
  [['proxy'], () => import('./proxy.js')],
  [['install'], () => import('./install.js')],
  [['uninstall'], () => import('./uninstall.js')],
  [['confirm'], () => import('./confirm.js')],
  [['recover'], () => import('./recover.js')],
  [['status'], () => import('./status.js')],
  [['doctor'], () => import('./doctor.js')],
  [['verify'], () => import('./verify.js')],
  [['service', 'proxy-ready'], () => import('./service.js')],
  [['demo'], () => import('./demo.js')],
  [['units'], () => import('./units.js')],
  [['ca'], () => import('./ca.js')],
];

/** The command argv names (its first argument that is no option), if any. */
function commandName(argv: readonly string[]): string | undefined {
  return argv.slice(2).find((arg) => !arg.startsWith('-'));
}

/**
 * The modules to load for this invocation: only the named command's when argv names one (a command's whole import
 * graph, e.g. the proxy's or the CA's X.509 library, costs every other command ~0.3 s of start-up, and the tests and
 * systemd's ExecStartPost= run many short commands), every module for help, --version or an unknown command
 * (commander then lists them all, or suggests the nearest).
 */
function modulesFor(argv: readonly string[]): Array<() => Promise<CommandModule>> {
  const name = commandName(argv);
  const named = MODULES.find(([names]) => name !== undefined && names.includes(name));
  return named ? [named[1]] : MODULES.map(([, load]) => load);
}

for (const mod of await Promise.all(modulesFor(process.argv).map((load) => load()))) mod.register(program);

await runMain(program);
