// CLI entry: builds the commander program from one module per command. Only src/cli prints or exits.
import { Command } from 'commander';
import { runMain } from './output.js';

const program = new Command('meshctl')
  .description('Transparent TCP interception for Linux hosts: netfilter capture plus a local sidecar proxy')
  .option('--debug', 'show stack traces on errors')
  .showHelpAfterError();

// One line per command module; each exports `register(program)`.
const modules = await Promise.all([
  import('./render.js'),
  import('./explain.js'),
  import('./config.js'),
  import('./proxy.js'),
  import('./install.js'),
  import('./uninstall.js'),
  import('./confirm.js'),
  import('./status.js'),
  import('./doctor.js'),
  import('./verify.js'),
  import('./service.js'),
  import('./demo.js'),
]);
for (const mod of modules) mod.register(program);

await runMain(program);
