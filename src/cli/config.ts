// `meshctl config validate|schema`: check a config without touching the host; print the JSON Schema.
import type { Command } from 'commander';
import { systemUserDb } from '../config/host-facts.js';
import { renderConfig } from '../config/render.js';
import { configSchema } from '../config/schema.js';
import { addConfigOptions, loadConfigFromOptions } from './config-flags.js';

export function register(program: Command): void {
  const config = program.command('config').description('validate the config or print its schema');
  addConfigOptions(
    config
      .command('validate')
      .description("load and check the config (file + flags); print the effective config in the file's form"),
  ).action(async (options: Record<string, unknown>) => {
    const loaded = await loadConfigFromOptions(options);
    process.stdout.write(`config ok: ${loaded.file ?? 'built-in defaults'} (sha256 ${loaded.hash.slice(0, 12)})\n`);
    // The effective config as the file accepts it: it can be copied back (JSON is YAML too).
    process.stdout.write(`${JSON.stringify(renderConfig(loaded, systemUserDb), null, 2)}\n`);
    const { sshPorts, sshPortsSource } = loaded.safety;
    if (sshPortsSource !== 'config') {
      process.stderr.write(
        `note: safety.sshPorts [${sshPorts.join(', ')}] was detected (${sshPortsSource}), not configured; a copy of the output pins it\n`,
      );
    }
  });
  config
    .command('schema')
    .description('print the JSON Schema of the config file')
    .action(() => {
      process.stdout.write(`${JSON.stringify(configSchema, null, 2)}\n`);
    });
}
