/**
 * Stored trust bundles, the server's own and federated ones, keyed by
 * trust-domain name. The datastore keeps the SPIFFE bundle document as text;
 * parsing and verifying it is the bundle layer's job.
 */

/** A stored bundle. */
export interface StoredBundle {
  /** Bare trust-domain name, e.g. `example.org`. */
  readonly trustDomain: string;
  /** The SPIFFE bundle (a JWK Set) as JSON text, stored byte for byte. */
  readonly document: string;
  /** `spiffe_sequence` as a decimal string, so every 64-bit value survives exactly. */
  readonly sequence: string;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/** What a caller gives to store a bundle. */
export interface BundleInput {
  readonly trustDomain: string;
  readonly document: string;
  /** Unsigned 64-bit integer, as decimal text or a bigint. */
  readonly sequence: string | bigint;
}

/** Options of `Datastore.setBundle`. */
export interface SetBundleOptions {
  /**
   * Compare-and-set: the write happens only when the stored sequence equals
   * this (`null`: only when no bundle is stored yet). Omitted: unconditional.
   */
  readonly expectedSequence?: string | bigint | null;
  /**
   * The write happens only while the federation relationship with the trust
   * domain exists and was last changed at this time (the relationship the
   * bundle was fetched for); one deleted or edited meanwhile, also through
   * another server, refuses it with `ERR_FAILED_PRECONDITION`, so a fetch in
   * flight cannot bring back the bundle of a deleted relationship.
   */
  readonly relationshipUpdatedAt?: Date;
}

/**
 * What `Datastore.deleteBundle` does when entries still federate with the
 * trust domain: `restrict` refuses; `dissociate` removes the trust domain from
 * those entries (an update of each, with revision and change event) first.
 */
export type BundleDeleteMode = "restrict" | "dissociate";
