/**
 * A fixed set of X.509 bundles as an {@link X509BundleSource}: for tests,
 * CLIs and verifiers configured from files rather than the Workload API.
 */
import type { X509Bundle, X509BundleSource } from "../bundle/x509-bundle.js";
import { SigilError } from "../errors.js";
import type { TrustDomain } from "../id.js";

/** An immutable X.509 bundle source over the given bundles, one per trust domain. */
export class StaticX509BundleSource implements X509BundleSource {
  readonly #bundles: ReadonlyMap<string, X509Bundle>;

  /** @throws SigilError `ERR_BUNDLE_INVALID` when two bundles share a trust domain. */
  constructor(bundles: readonly X509Bundle[]) {
    const map = new Map<string, X509Bundle>();
    for (const b of bundles) {
      if (map.has(b.trustDomain.name)) {
        throw new SigilError("ERR_BUNDLE_INVALID", `x509bundle: two bundles for trust domain ${b.trustDomain.name}`);
      }
      map.set(b.trustDomain.name, b);
    }
    this.#bundles = map;
  }

  /** The bundle of `td`, or undefined when `td` is not trusted. */
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    return this.#bundles.get(td.name);
  }
}
