/**
 * What the TLS option builders read their material from: the current
 * X509-SVID and the X.509 bundles. {@link X509Source} fits as is; so does
 * {@link StaticX509Source}, for tests and for material loaded from files.
 */
import type { KeyObject } from "node:crypto";
import type { X509Bundle, X509BundleSource } from "../bundle/x509-bundle.js";
import { SigilError } from "../errors.js";
import type { SpiffeId, TrustDomain } from "../id.js";

/** The parts of an X509-SVID a TLS endpoint presents. */
export interface TlsSvid {
  readonly id: SpiffeId;
  /** Leaf first, then intermediates. */
  readonly certificateDers: readonly Uint8Array[];
  readonly privateKey: KeyObject;
}

/**
 * A live source of the workload's X509-SVID and of X.509 bundles (own and
 * federated), read again for every connection. The Workload API's
 * `X509Source` implements it.
 */
export interface TlsX509Source extends X509BundleSource {
  /** The current default SVID. Called per connection; return the same object while it has not changed (it keys a cache). */
  getX509Svid(): TlsSvid;
  /** Every bundle held; used to tell OpenSSL which roots a client accepts (see options.ts). */
  getX509Bundles?(): Iterable<X509Bundle>;
  /** `X509Source` exposes its bundles here; read when `getX509Bundles` is absent. */
  readonly context?: { readonly bundles: ReadonlyMap<string, X509Bundle> } | undefined;
}

/** Every bundle a source holds, from whichever of the two shapes it has. */
export function bundlesOf(source: TlsX509Source): X509Bundle[] {
  if (typeof source.getX509Bundles === "function") return [...source.getX509Bundles()];
  return [...(source.context?.bundles.values() ?? [])];
}

/** Options of {@link StaticX509Source}. */
export interface StaticX509SourceInit {
  readonly svid: TlsSvid;
  /** At most one per trust domain. */
  readonly bundles: readonly X509Bundle[];
}

/**
 * A source holding given material until {@link StaticX509Source.update}
 * replaces it: for tests, and for workloads that read SVIDs from files.
 */
export class StaticX509Source implements TlsX509Source {
  #svid: TlsSvid;
  #bundles: ReadonlyMap<string, X509Bundle>;

  /** @throws SigilError `ERR_BUNDLE_INVALID` when two bundles share a trust domain. */
  constructor(init: StaticX509SourceInit) {
    this.#svid = init.svid;
    this.#bundles = byTrustDomain(init.bundles);
  }

  /** Replaces the SVID, the bundles, or both; the next connection uses them. */
  update(change: { readonly svid?: TlsSvid; readonly bundles?: readonly X509Bundle[] }): void {
    const bundles = change.bundles === undefined ? this.#bundles : byTrustDomain(change.bundles);
    if (change.svid !== undefined) this.#svid = change.svid;
    this.#bundles = bundles;
  }

  getX509Svid(): TlsSvid {
    return this.#svid;
  }

  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    return this.#bundles.get(td.name);
  }

  getX509Bundles(): Iterable<X509Bundle> {
    return this.#bundles.values();
  }
}

function byTrustDomain(bundles: readonly X509Bundle[]): ReadonlyMap<string, X509Bundle> {
  const map = new Map<string, X509Bundle>();
  for (const b of bundles) {
    if (map.has(b.trustDomain.name)) throw new SigilError("ERR_BUNDLE_INVALID", `tls: two bundles for trust domain ${b.trustDomain.name}`);
    map.set(b.trustDomain.name, b);
  }
  return map;
}
