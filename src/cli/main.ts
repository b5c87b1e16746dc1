// CLI entry: builds the commander program from one module per command. Only src/cli prints or exits.
import { Command } from 'commander';
import { assertNetnsExists } from '../values/netns.js';
import { toolVersion } from '../netfilter/transaction/scope.js';
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

// One line per command module; each exports `register(program)`.
const modules = await Promise.all([
  import('./render.js'),
  import('./explain.js'),
  import('./config.js'),
  import('./proxy.js'),
  import('./install.js'),
  import('./uninstall.js'),
  import('./confirm.js'),
  import('./recover.js'),
  import('./status.js'),
  import('./doctor.js'),
  import('./verify.js'),
  import('./service.js'),
  import('./demo.js'),
  import('./units.js'),
  import('./ca.js'),
]);
for (const mod of modules) mod.register(program);

await runMain(program);
