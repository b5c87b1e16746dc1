// Flags that mirror config paths (--proxy-outbound-port ↔ proxy.outboundPort), shared by every command that
// loads the config. Flag values become typed overrides; validation happens in src/config with the flag named.
import { Option, type Command } from 'commander';
import type { FlagOverride } from '../config/load.js';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';

type Kind = 'string' | 'id' | 'port' | 'list' | 'true';

interface FlagSpec {
  readonly flag: string;
  readonly path: string;
  readonly kind: Kind;
  readonly help: string;
  readonly choices?: readonly string[];
}

export const CONFIG_FLAGS: readonly FlagSpec[] = [
  { flag: 'proxy-user', path: 'proxy.user', kind: 'id', help: 'user the proxy runs as (name or uid; exempt from capture)' },
  { flag: 'proxy-group', path: 'proxy.group', kind: 'id', help: 'group exempt from capture (default: the user\'s primary group)' },
  { flag: 'proxy-outbound-port', path: 'proxy.outboundPort', kind: 'port', help: 'outbound listener port (15001)' },
  { flag: 'proxy-inbound-port', path: 'proxy.inboundPort', kind: 'port', help: 'inbound listener port (15006)' },
  { flag: 'proxy-admin-port', path: 'proxy.adminPort', kind: 'port', help: 'admin port on 127.0.0.1 (15000)' },
  { flag: 'backend', path: 'capture.backend', kind: 'string', help: 'netfilter backend', choices: ['auto', 'iptables-legacy', 'iptables-nft', 'nftables'] },
  { flag: 'ipv6', path: 'capture.ipv6', kind: 'string', help: 'IPv6 handling', choices: ['intercept', 'block', 'off'] },
  { flag: 'drop-invalid', path: 'capture.dropInvalid', kind: 'true', help: 'drop conntrack-INVALID TCP packets' },
  { flag: 'inbound-mode', path: 'capture.inbound.mode', kind: 'string', help: 'inbound capture mode', choices: ['redirect', 'tproxy'] },
  { flag: 'inbound-include-ports', path: 'capture.inbound.includePorts', kind: 'list', help: '"*" or ports/ranges captured inbound (comma-separated)' },
  { flag: 'inbound-exclude-ports', path: 'capture.inbound.excludePorts', kind: 'list', help: 'ports never captured inbound' },
  { flag: 'outbound-include-cidrs', path: 'capture.outbound.includeCidrs', kind: 'list', help: '"*" or destination CIDRs captured' },
  { flag: 'outbound-exclude-cidrs', path: 'capture.outbound.excludeCidrs', kind: 'list', help: 'destination CIDRs never captured' },
  { flag: 'outbound-include-ports', path: 'capture.outbound.includePorts', kind: 'list', help: '"*" or destination ports captured' },
  { flag: 'outbound-exclude-ports', path: 'capture.outbound.excludePorts', kind: 'list', help: 'destination ports never captured' },
  { flag: 'exclude-uids', path: 'capture.outbound.excludeUids', kind: 'list', help: 'users (names or uids) never captured' },
  { flag: 'exclude-gids', path: 'capture.outbound.excludeGids', kind: 'list', help: 'groups never captured' },
  { flag: 'include-gids', path: 'capture.outbound.includeGids', kind: 'list', help: '"*" or the only groups captured' },
  { flag: 'exclude-interfaces', path: 'capture.excludeInterfaces', kind: 'list', help: 'interfaces never captured' },
  { flag: 'dns', path: 'capture.dns.enabled', kind: 'true', help: 'capture DNS (UDP/TCP 53) to the proxy DNS port' },
  { flag: 'dns-port', path: 'capture.dns.port', kind: 'port', help: 'proxy DNS port (15053)' },
  { flag: 'ssh-ports', path: 'safety.sshPorts', kind: 'list', help: 'SSH ports never captured (default: detected from sshd)' },
  { flag: 'unsafe-capture-ssh', path: 'safety.unsafeCaptureSsh', kind: 'true', help: 'DANGER: allow inbound capture of the SSH ports (can lock you out)' },
  { flag: 'state-dir', path: 'stateDir', kind: 'string', help: 'ledger directory (/var/lib/meshctl)' },
];

const camel = (flag: string): string => flag.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
const numeric = (text: string): string | number => (/^\d+$/.test(text) ? Number(text) : text);

/**
 * Adds --config and the config flags to a command: all of them, or those whose config path is in `only` (a command
 * lists only the flags whose values it reads; the file may still set every field).
 */
export function addConfigOptions(command: Command, select: { only?: readonly string[] } = {}): Command {
  const unknown = select.only?.filter((path) => !CONFIG_FLAGS.some((spec) => spec.path === path)) ?? [];
  if (unknown.length > 0) throw new Error(`addConfigOptions: no config flag for ${unknown.join(', ')}`);
  command.option('-c, --config <file>', 'config file (YAML or JSON; default /etc/meshctl/config.yaml if present)');
  for (const spec of CONFIG_FLAGS.filter((s) => select.only === undefined || select.only.includes(s.path))) {
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
        value = text.trim() === '*' ? '*' : text.split(',').map((s) => s.trim()).filter(Boolean).map(numeric);
        break;
      case 'string':
        value = text;
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
