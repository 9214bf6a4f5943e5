/**
 * The contract between the agent's SVID cache (sync, rotation) and its
 * endpoints (Workload API, SDS): what a workload with some selectors may have,
 * and notifications when that changes.
 */
import type { KeyObject } from "node:crypto";
import type { Selector } from "../../common/selector.js";
import type { SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";

/** The registration entry fields the endpoints need. */
export interface CachedEntry {
  readonly id: string;
  readonly spiffeId: string;
  readonly selectors: readonly Selector[];
  /** Bare trust-domain names whose bundles the workload receives. */
  readonly federatesWith: readonly string[];
  readonly hint: string;
  /** Orders identities: the oldest entry first is the default SVID (WAPI-39). */
  readonly createdAt: Date;
  readonly revision: number;
  readonly jwtSvidTtlSeconds: number;
}

/** The current X509-SVID of one entry. */
export interface CachedX509Svid {
  /** DER certificates, leaf first, no root. */
  readonly chain: readonly Uint8Array[];
  /** The private key; exported as PKCS#8 DER only when sent to the workload. */
  readonly privateKey: KeyObject;
  /** PKCS#8 DER of `privateKey`, encoded once per rotation. */
  readonly privateKeyPkcs8: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/** One identity a workload may receive: an entry with its current SVID. */
export interface CachedIdentity {
  readonly entry: CachedEntry;
  readonly svid: CachedX509Svid;
}

/** The trust bundles the agent holds. */
export interface BundleSnapshot {
  readonly own: SpiffeBundle;
  /** Federated bundles keyed by bare trust-domain name. */
  readonly federated: ReadonlyMap<string, SpiffeBundle>;
}

/** A minted JWT-SVID. */
export interface CachedJwtSvid {
  readonly spiffeId: string;
  readonly token: string;
  readonly expiresAt: Date;
}

/** What the endpoints read from the cache. */
export interface WorkloadCache {
  /**
   * Identities whose entry selectors are all among `selectors`, with a valid
   * SVID issued under the entry's current revision, ordered oldest entry first
   * (then by entry ID). An entry that was just created or edited is left out
   * until its new SVID arrives (see {@link WorkloadCache.pendingFor}); an SVID
   * issued under an older revision is never returned. Hint de-duplication is
   * the endpoint's job.
   */
  identitiesFor(selectors: readonly Selector[]): CachedIdentity[];
  /**
   * Entries whose selectors are all among `selectors` but that have no valid
   * SVID for their current revision yet (just created or edited, or expired
   * before renewal), ordered as {@link WorkloadCache.identitiesFor}. While one
   * is pending the caller's view is incomplete: a stream waits for it rather
   * than sending a partial set, a unary call answers Unavailable rather than
   * PermissionDenied.
   */
  pendingFor?(selectors: readonly Selector[]): CachedEntry[];
  /** Current bundles; throws ERR_UNAVAILABLE before the first sync. */
  bundles(): BundleSnapshot;
  /** True once the cache holds the agent's bundle and has synced at least once. */
  ready(): boolean;
  /**
   * Calls `listener` after every change to SVIDs, entries or bundles (the
   * endpoint recomputes the workload's view and sends it if it differs).
   * Returns an unsubscribe function.
   */
  subscribe(listener: () => void): () => void;
  /**
   * A JWT-SVID for the entry and audience: from the cache while more than half
   * its lifetime remains, else freshly minted by the server. Only tokens minted
   * under the entry's current revision and naming its current SPIFFE ID are
   * returned; rejects with ERR_UNAVAILABLE when the entry changes meanwhile.
   */
  fetchJwtSvid(entryId: string, audience: readonly string[]): Promise<CachedJwtSvid>;
  /**
   * For "no identity issued" diagnostics: the entries sharing the most
   * selectors with `selectors` (at least one), best first, with the selectors
   * each is still missing.
   */
  closestEntries?(selectors: readonly Selector[], limit: number): { entry: CachedEntry; missing: string[] }[];
}
