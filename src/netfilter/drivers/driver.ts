// What a netfilter backend must offer the transaction: read the kernel, plan the steps from what we own now to a
// target, check and apply a step, and compare with a plan. Two implementations: xtables (iptables-legacy and
// iptables-nft, one restore per family) and nftables (one `nft -f` for `table inet meshctl`).
import type { CapturePlan } from '../../capture/model.js';
import type { Family } from '../../values/ip.js';
import type { Backend } from '../../config/types.js';
import type { OwnedObjects, Snapshot } from './objects.js';

/** One atomic kernel update: an iptables-restore --noflush input for one family, or one nft script. */
export interface ApplyStep {
  /** `ipv4`, `ipv6` or `inet` (nftables, both families). */
  readonly label: string;
  readonly family: Family | null;
  readonly text: string;
}

/** Where a transition goes: the rules of a plan, objects recorded in the ledger, or nothing of ours at all. */
export type TransitionTarget =
  | { readonly kind: 'plan'; readonly plan: CapturePlan }
  | { readonly kind: 'objects'; readonly objects: OwnedObjects }
  | { readonly kind: 'none' };

/**
 * Drift of one family (or of `table inet meshctl`) against a plan, as display text. Not a FamilyDiff (capture/diff.ts):
 * this form is shared by both backends; xtables renders its FamilyDiff into it, nftables builds it from a listing diff.
 */
export interface DriftReport {
  readonly label: string;
  readonly inSync: boolean;
  readonly missingChains: readonly string[];
  readonly extraChains: readonly string[];
  /** Planned rules not in the kernel (`TABLE CHAIN rule`). */
  readonly missing: readonly string[];
  /** Our rules in the kernel that the plan does not have. */
  readonly extra: readonly string[];
  /** Chains whose rules are all there but in another order. */
  readonly outOfOrder: readonly string[];
}

/** A read of the kernel state this backend manages. Opaque outside the driver except for the raw texts. */
export interface KernelState {
  readonly backend: Backend;
  /** Raw save/list output per label, for logs and the snapshot. */
  readonly texts: ReadonlyMap<string, string>;
}

export interface BackendDriver {
  readonly backend: Backend;
  read(): Promise<KernelState>;
  /** Steps replacing everything of ours now in the kernel (by markers) with `target`; unchanged labels are left out. */
  stepsTo(state: KernelState, target: TransitionTarget): ApplyStep[];
  /** Steps removing exactly `objects` (as far as they still exist), for uninstall. Throws NOT_OWNED. */
  stepsRemoving(state: KernelState, objects: OwnedObjects): ApplyStep[];
  check(step: ApplyStep): Promise<void>;
  apply(step: ApplyStep): Promise<void>;
  /** Everything carrying our markers right now. */
  owned(state: KernelState): OwnedObjects;
  /** Whether any of `objects` is still in the kernel (after uninstall: must be none). */
  remaining(state: KernelState, objects: OwnedObjects): string[];
  drift(state: KernelState, plan: CapturePlan): DriftReport[];
  /** The kernel state minus our objects, normalised (counters, handles, comments dropped): what uninstall must keep. */
  foreign(state: KernelState): string;
  snapshot(state: KernelState): Promise<Snapshot>;
  /** After everything of ours is gone: removes empty leftovers the backend created behind our back (nft-tidy.ts). */
  tidy(snapshot: Snapshot): Promise<string[]>;
  /** The foreign view of a pre-install snapshot, to compare with `foreign(read())`. */
  foreignOfSnapshot(snapshot: Snapshot): string;
  /** Our objects inside a snapshot (normally none): what rolling back a first install restores. */
  ownedInSnapshot(snapshot: Snapshot): OwnedObjects;
}

/** A drift report with nothing in it. */
export function inSyncReport(label: string): DriftReport {
  return { label, inSync: true, missingChains: [], extraChains: [], missing: [], extra: [], outOfOrder: [] };
}
