/**
 * An immutable set of bundles keyed by trust domain. It is both an X.509 and a
 * JWT bundle source, and it never merges trust domains (BUNDLE-2, FED-6): a
 * lookup for `td` sees only `td`'s own authorities. Changes make a new set, so a
 * holder replaces its reference in one assignment and readers always see a
 * complete snapshot (BUNDLE-17).
 */
import { SigilError } from "../errors.js";
import type { TrustDomain } from "../id.js";
import type { JwtBundle, JwtBundleSource } from "./jwt-bundle.js";
import { toJwtBundle, toX509Bundle, type SpiffeBundle } from "./spiffe-bundle.js";
import type { X509Bundle, X509BundleSource } from "./x509-bundle.js";

/** Bundles of several trust domains, one per domain. */
export class BundleSet implements X509BundleSource, JwtBundleSource, Iterable<SpiffeBundle> {
  readonly #bundles: ReadonlyMap<string, SpiffeBundle>;
  // Conversions are made on first use and kept: the set never changes.
  readonly #x509 = new Map<string, X509Bundle>();
  readonly #jwt = new Map<string, JwtBundle>();

  /**
   * @throws SigilError `ERR_BUNDLE_INVALID` when two bundles name the same trust
   *   domain: they are never merged, and picking one silently would hide the mistake.
   */
  constructor(bundles: Iterable<SpiffeBundle> = []) {
    const map = new Map<string, SpiffeBundle>();
    for (const b of bundles) {
      const name = b.trustDomain.name;
      if (map.has(name)) throw new SigilError("ERR_BUNDLE_INVALID", `bundle: duplicate trust domain "${name}" in bundle set`);
      map.set(name, b);
    }
    this.#bundles = map;
  }

  /** Number of trust domains. */
  get size(): number {
    return this.#bundles.size;
  }

  /** The bundle of `td`, if the set has one. */
  get(td: TrustDomain): SpiffeBundle | undefined {
    return this.#bundles.get(td.name);
  }

  /** True when the set has a bundle for `td`. */
  has(td: TrustDomain): boolean {
    return this.#bundles.has(td.name);
  }

  /** The trust domains in the set, in insertion order. */
  trustDomains(): TrustDomain[] {
    return [...this.#bundles.values()].map((b) => b.trustDomain);
  }

  /** The bundles in insertion order. */
  [Symbol.iterator](): Iterator<SpiffeBundle> {
    return this.#bundles.values();
  }

  /** The X.509 authorities of `td` (possibly empty: then no X509-SVID of `td` is valid), or undefined. */
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    const b = this.#bundles.get(td.name);
    if (b === undefined) return undefined;
    let x = this.#x509.get(td.name);
    if (x === undefined) {
      x = toX509Bundle(b);
      this.#x509.set(td.name, x);
    }
    return x;
  }

  /** The JWT authorities of `td` (possibly empty: then no JWT-SVID of `td` is valid), or undefined. */
  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
    const b = this.#bundles.get(td.name);
    if (b === undefined) return undefined;
    let j = this.#jwt.get(td.name);
    if (j === undefined) {
      j = toJwtBundle(b);
      this.#jwt.set(td.name, j);
    }
    return j;
  }

  /** A new set in which `bundle` replaces (or adds) its trust domain's bundle. This set is unchanged. */
  with(bundle: SpiffeBundle): BundleSet {
    const next = new Map(this.#bundles);
    next.set(bundle.trustDomain.name, bundle);
    return new BundleSet(next.values());
  }

  /** A new set without `td`. This set is unchanged. */
  without(td: TrustDomain): BundleSet {
    const next = new Map(this.#bundles);
    next.delete(td.name);
    return new BundleSet(next.values());
  }
}
