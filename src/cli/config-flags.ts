// Flags that mirror config paths (--proxy-outbound-port ↔ proxy.outboundPort), shared by every command that
// loads the config; generated from the config's field table. Flag values become raw overrides; validation happens
// in src/config with the flag named.
import { Option, type Command } from 'commander';
import { FIELD_TABLE, type FlagDoc } from '../config/fields.js';
import type { FlagOverride } from '../config/load.js';
import { loadConfig } from '../config/load.js';
import type { FlagKind } from '../config/parsers.js';
import { schemaDefault } from '../config/schema.js';
import type { Config } from '../config/types.js';

interface FlagSpec {
  readonly flag: string;
  readonly path: string;
  readonly kind: FlagKind;
  readonly help: string;
  readonly choices?: readonly string[];
  /** Offered by `meshctl proxy` only. */
  readonly proxyOnly: boolean;
}

/** The help text, with the schema's default when the flag shows it (null, for a path, is stdout: "-"). */
function helpOf(path: string, flag: FlagDoc): string {
  if (!flag.showDefault) return flag.help;
  const value = schemaDefault(path);
  return `${flag.help} (${value === null ? '-' : String(value)})`;
}

/** The flags of the field table (src/config/fields.ts), in its order; choices and shown defaults from the schema. */
export const CONFIG_FLAGS: readonly FlagSpec[] = FIELD_TABLE.flatMap((entry) =>
  entry.kind === 'field' && entry.flag !== null
    ? [
        {
          flag: entry.flag.name,
          path: entry.path,
          kind: entry.parser.flag,
          help: helpOf(entry.path, entry.flag),
          proxyOnly: entry.flag.proxyOnly === true,
          ...(entry.parser.choices ? { choices: entry.parser.choices } : {}),
        },
      ]
    : [],
);

const camel = (flag: string): string => flag.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
const numeric = (text: string): string | number => (/^\d+(\.\d+)?$/.test(text) ? Number(text) : text);

/**
 * Adds --config and the config flags to a command: all of them but the proxy's own, or those whose config path is
 * in `only` (a command lists only the flags whose values it reads; the file may still set every field).
 */
export function addConfigOptions(command: Command, select: { only?: readonly string[] } = {}): Command {
  const unknown = select.only?.filter((path) => !CONFIG_FLAGS.some((spec) => spec.path === path)) ?? [];
  if (unknown.length > 0) throw new Error(`addConfigOptions: no config flag for ${unknown.join(', ')}`);
  command.option('-c, --config <file>', 'config file (YAML or JSON; default /etc/meshctl/config.yaml if present)');
  for (const spec of CONFIG_FLAGS.filter((s) =>
    select.only === undefined ? !s.proxyOnly : select.only.includes(s.path),
  )) {
    const option = new Option(spec.kind === 'true' ? `--${spec.flag}` : `--${spec.flag} <value>`, spec.help);
    if (spec.choices) option.choices(spec.choices);
    command.addOption(option);
  }
  return command;
}

/** Turns parsed commander options into overrides at config paths. */
export function configOverrides(options: Record<string, unknown>): FlagOverride[] {
  const overrides: FlagOverride[] = [];
  for (const spec of CONFIG_FLAGS) {
    const raw = options[camel(spec.flag)];
    if (raw === undefined) continue;
    const flag = `--${spec.flag}`;
    const text = String(raw);
    let value: unknown;
    switch (spec.kind) {
      case 'true':
        value = true;
        break;
      case 'port':
      case 'id':
        value = numeric(text);
        break;
      case 'list':
        value =
          text.trim() === '*'
            ? '*'
            : text
                .split(',')
                .map((s) => s.trim())
                .filter(Boolean)
                .map(numeric);
        break;
      case 'string':
        value = text;
        break;
      case 'nullable':
        value = text === '-' ? null : text;
        break;
    }
    overrides.push({ path: spec.path, value, flag });
  }
  return overrides;
}

/**
 * Loads the config named by --config (or the default) with the command's flag overrides applied; with --netns,
 * the SSH ports are detected inside that namespace, where the rules go.
 */
export function loadConfigFromOptions(options: Record<string, unknown>): Promise<Config> {
  const file = options.config as string | undefined;
  const netns = typeof options.netns === 'string' ? options.netns : null;
  return loadConfig({ ...(file !== undefined ? { file } : {}), flags: configOverrides(options), netns });
}
