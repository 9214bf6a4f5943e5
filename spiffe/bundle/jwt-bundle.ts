/**
 * JWT bundle: the JWT-SVID signing keys of one trust domain, keyed by `kid`, and
 * the one-method source interface validation takes.
 */
import type { KeyObject } from "node:crypto";
import type { TrustDomain } from "../id.js";

/** The JWT authorities of one trust domain, keyed by key ID. */
export class JwtBundle {
  readonly trustDomain: TrustDomain;
  readonly authorities: ReadonlyMap<string, KeyObject>;

  constructor(trustDomain: TrustDomain, authorities: ReadonlyMap<string, KeyObject> | Iterable<[string, KeyObject]>) {
    this.trustDomain = trustDomain;
    this.authorities = new Map(authorities);
  }

  /** The public key with this `kid`, if any. */
  findAuthority(kid: string): KeyObject | undefined {
    return this.authorities.get(kid);
  }

  isEmpty(): boolean {
    return this.authorities.size === 0;
  }
}

/** Where JWT validation gets keys from. */
export interface JwtBundleSource {
  /** The bundle for `td`, or undefined when the trust domain is not trusted. */
  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined;
}
