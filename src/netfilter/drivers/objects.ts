// What meshctl owns in the kernel as the drivers read it back (per family and table for iptables, the `table inet
// meshctl` listing for nftables) and the snapshot of the tables before the first install. The ledger records both.
import type { Table } from '../../capture/model.js';
import type { SavedRule } from '../../capture/parse-save.js';
import type { Family } from '../../values/ip.js';

/** A SavedRule as the ledger records it: chain and text are enough to find, compare and delete the rule again. */
export type RuleLine = Pick<SavedRule, 'chain' | 'raw'>;

/** Our objects in one table: MESHCTL_ chains (name order as saved) and every rule we own, in save order. */
export interface TableObjects {
  readonly table: Table;
  readonly chains: readonly string[];
  readonly rules: readonly RuleLine[];
}

export interface FamilyObjects {
  readonly family: Family;
  readonly tables: readonly TableObjects[];
}

/** What meshctl owns on the host: per family and table for iptables, or the `table inet meshctl` listing. */
export type OwnedObjects =
  | { readonly kind: 'xtables'; readonly families: readonly FamilyObjects[] }
  | { readonly kind: 'nftables'; readonly listing: string };

/** The tables as they were before the first install: iptables-save text per family and table, or the nft ruleset. */
export type Snapshot =
  | {
      readonly kind: 'xtables';
      readonly families: readonly {
        readonly family: Family;
        readonly tables: readonly { readonly table: string; readonly text: string }[];
      }[];
      /** iptables-nft only: the nftables tables and base chains (`ip nat`, `ip nat OUTPUT`) that existed (nft-tidy.ts). */
      readonly nftInventory?: readonly string[] | null;
    }
  | { readonly kind: 'nftables'; readonly ruleset: string };
