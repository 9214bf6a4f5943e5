/**
 * X.509 bundle: the CA certificates that authenticate X509-SVIDs of one trust
 * domain, and the one-method source interface verification takes.
 */
import { X509Certificate } from "node:crypto";
import { SigilError } from "../errors.js";
import type { TrustDomain } from "../id.js";

/** The X.509 authorities (root CA certificates) of one trust domain. */
export class X509Bundle {
  readonly trustDomain: TrustDomain;
  /** DER of each authority, in order. */
  readonly authorityDers: readonly Uint8Array[];
  #parsed: readonly X509Certificate[] | undefined;

  constructor(trustDomain: TrustDomain, authorityDers: readonly Uint8Array[]) {
    this.trustDomain = trustDomain;
    this.authorityDers = Object.freeze(authorityDers.map((d) => new Uint8Array(d)));
  }

  /** Parsed authorities, parsed once and cached (parsing costs more than verifying). */
  get authorities(): readonly X509Certificate[] {
    if (this.#parsed === undefined) {
      this.#parsed = this.authorityDers.map((der, i) => {
        try {
          return new X509Certificate(der);
        } catch (e) {
          throw new SigilError(
            "ERR_BUNDLE_INVALID",
            `x509bundle: authority ${i} of ${this.trustDomain.name} is not a certificate`,
            { cause: e },
          );
        }
      });
    }
    return this.#parsed;
  }

  /** Concatenated DER of all authorities: the Workload API wire form. */
  toDer(): Uint8Array {
    return Buffer.concat(this.authorityDers.map((d) => Buffer.from(d.buffer, d.byteOffset, d.byteLength)));
  }

  /** True when the bundle holds no authorities (every SVID of the domain is then invalid). */
  isEmpty(): boolean {
    return this.authorityDers.length === 0;
  }
}

/** Where verification gets X.509 authorities from (a static bundle, a set, a live source). */
export interface X509BundleSource {
  /** The bundle for `td`, or undefined when the trust domain is not trusted. */
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined;
}
