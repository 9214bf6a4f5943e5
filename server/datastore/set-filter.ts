/**
 * Set filters used by list calls: compare an object's set of selectors (or
 * federated trust domains) with the set given in the filter.
 */
import type { Selector } from "../../common/selector.js";

/**
 * How a set filter compares an object's set S with the filter's set F:
 * `exact` S = F; `subset` S ⊆ F (a workload with selectors F gets the entry);
 * `superset` S ⊇ F; `any` S ∩ F ≠ ∅.
 */
export type SetMatch = "exact" | "subset" | "superset" | "any";

/** A set filter over selectors. */
export interface SelectorFilter {
  readonly selectors: readonly Selector[];
  readonly match: SetMatch;
}

/** A set filter over federated trust-domain names. */
export interface FederatesWithFilter {
  readonly trustDomains: readonly string[];
  readonly match: SetMatch;
}
