/**
 * Stored federation relationships: which foreign trust domains this server
 * fetches bundles for, from which bundle endpoint and how the endpoint is
 * authenticated. The fetched bundle itself is an ordinary stored bundle
 * (`bundle.ts`), keyed by the same trust-domain name; deleting a relationship
 * deletes it too (FED-26).
 */

/** The bundle endpoint profiles (SPIFFE Federation §5). */
export const BUNDLE_ENDPOINT_PROFILES = ["https_web", "https_spiffe"] as const;

/** `https_web` (WebPKI server certificate) or `https_spiffe` (an X509-SVID of the endpoint's SPIFFE ID). */
export type BundleEndpointProfileName = (typeof BUNDLE_ENDPOINT_PROFILES)[number];

/** Where a relationship was defined: the admin API, or the config file (which wins, and is applied at every start). */
export type RelationshipSource = "api" | "config";

/** What a caller gives to store a relationship. */
export interface FederationRelationshipInput {
  /** Bare trust-domain name of the foreign trust domain. */
  readonly trustDomain: string;
  /** `https://…` URL of its bundle endpoint, without userinfo. */
  readonly bundleEndpointUrl: string;
  readonly profile: BundleEndpointProfileName;
  /** SPIFFE ID the endpoint serves with; required for `https_spiffe`, absent for `https_web`. */
  readonly endpointSpiffeId?: string;
  /** Default `api`. */
  readonly source?: RelationshipSource;
}

/** A stored relationship. */
export interface FederationRelationship {
  readonly trustDomain: string;
  readonly bundleEndpointUrl: string;
  readonly profile: BundleEndpointProfileName;
  /** Present exactly for `https_spiffe`. */
  readonly endpointSpiffeId?: string;
  readonly source: RelationshipSource;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/** Options of the relationship writes. */
export interface FederationRelationshipWriteOptions {
  /**
   * A bundle document for the trust domain, stored in the same transaction
   * (its `trustDomain` must be the relationship's). `onlyIfAbsent` stores it
   * only when no bundle is held yet (a config file's initial bundle is applied
   * at every start and must not roll a fetched bundle back).
   */
  readonly initialBundle?: { readonly document: string; readonly sequence: string | bigint; readonly onlyIfAbsent?: boolean };
}
