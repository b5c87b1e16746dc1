// `meshctl render`: prints exactly the text install would feed to iptables-restore (per family) or nft -f.
import type { Command } from 'commander';
import { Option } from 'commander';
import { planCapture } from '../capture/plan.js';
import { renderIptablesRestore } from '../capture/render-iptables.js';
import { renderNft } from '../capture/render-nft.js';
import type { CapturePlan } from '../capture/model.js';
import type { Config } from '../config/types.js';
import { addConfigOptions, loadConfigFromOptions } from './config-flags.js';

export type FamilyFilter = 'ipv4' | 'ipv6' | 'all';

/** The render output for a backend; `auto` renders iptables-restore input (iptables-legacy and -nft read the same). */
export function renderForBackend(config: Config, backend: Config['capture']['backend'], family: FamilyFilter): string {
  const full = planCapture(config);
  const plan: CapturePlan = { ...full, families: full.families.filter((f) => family === 'all' || f.family === family) };
  if (backend === 'nftables') return renderNft(plan);
  return plan.families.map((f) => renderIptablesRestore(f)).join('');
}

export function register(program: Command): void {
  addConfigOptions(
    program
      .command('render')
      .description('print the rules install would apply (iptables-restore input per family, or an nft script)')
      .addOption(
        new Option('--family <family>', 'which address family').choices(['ipv4', 'ipv6', 'all']).default('all'),
      ),
  ).action(async (options: Record<string, unknown>) => {
    const config = await loadConfigFromOptions(options);
    process.stdout.write(renderForBackend(config, config.capture.backend, options.family as FamilyFilter));
  });
}
