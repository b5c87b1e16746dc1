// `meshctl config validate|schema`: check a config without touching the host; print the JSON Schema.
import type { Command } from 'commander';
import { configSchema } from '../config/schema.js';
import { addConfigOptions, loadConfigFromOptions } from './config-flags.js';

export function register(program: Command): void {
  const config = program.command('config').description('validate the config or print its schema');
  addConfigOptions(config.command('validate').description('load and check the config (file + flags); print the effective values')).action(
    async (options: Record<string, unknown>) => {
      const loaded = await loadConfigFromOptions(options);
      process.stdout.write(`config ok: ${loaded.file ?? 'built-in defaults'} (sha256 ${loaded.hash.slice(0, 12)})\n`);
      process.stdout.write(`${JSON.stringify(loaded, null, 2)}\n`);
    },
  );
  config
    .command('schema')
    .description('print the JSON Schema of the config file')
    .action(() => {
      process.stdout.write(`${JSON.stringify(configSchema, null, 2)}\n`);
    });
}
