/**
 * SPIFFE Bundle Maps (SPIFFE Trust Domain and Bundle §5.1.1): `trust_domains`
 * maps a trust-domain **name** (`example.org`, never `spiffe://example.org`,
 * pitfall A11) to that domain's bundle.
 */
import { SigilError, isSigilError } from "../errors.js";
import { parseTrustDomain, type TrustDomain } from "../id.js";
import { BundleSet } from "./bundle-set.js";
import { formatJsonPath, isJsonObject, parseJson } from "./json.js";
import { bundleToJson, readBundleObject, type SpiffeBundle } from "./spiffe-bundle.js";

/** A parsed bundle map and what the parser skipped, for the log. */
export interface ParsedBundleMap {
  /** One bundle per trust domain, as a complete snapshot (BUNDLE-17). */
  readonly bundles: BundleSet;
  readonly warnings: string[];
}

function invalid(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_BUNDLE_INVALID", `bundle: ${message}`, cause === undefined ? undefined : { cause });
}

/**
 * Parses a bundle map. All or nothing: one bad bundle fails the whole map, so a
 * half-applied map is never returned (BUNDLE-17). Duplicate trust-domain keys are
 * refused (BUNDLE-15). Per-bundle refresh hints are dropped: a map consumer
 * polls on its own schedule (BUNDLE-16).
 *
 * @example
 * ```ts
 * const { bundles, warnings } = parseBundleMap(body);
 * current = bundles; // one assignment swaps the snapshot
 * ```
 * @throws SigilError `ERR_BUNDLE_INVALID`.
 */
export function parseBundleMap(json: string | Uint8Array): ParsedBundleMap {
  const doc = parseJson(json, {
    describeDuplicate: (key, path) =>
      path === "trust_domains" ? `duplicate trust domain ${JSON.stringify(key)} in trust_domains` : `duplicate key ${JSON.stringify(key)} in ${path}`,
  });
  if (!isJsonObject(doc)) throw invalid("the bundle map is not a JSON object");
  const domains = doc["trust_domains"];
  if (domains === undefined) throw invalid("trust_domains is missing");
  if (!isJsonObject(domains)) throw invalid("trust_domains is not a JSON object");
  const warnings: string[] = [];
  const bundles: SpiffeBundle[] = [];
  for (const name of Object.keys(domains)) {
    const path = ["trust_domains", name];
    let td: TrustDomain;
    try {
      td = parseTrustDomain(name);
    } catch (e) {
      throw invalid(`${formatJsonPath(path)}: key is not a trust-domain name: ${isSigilError(e) ? e.message : String(e)}`, e);
    }
    const value = domains[name];
    if (!isJsonObject(value)) throw invalid(`${formatJsonPath(path)} is not a JSON object`);
    bundles.push(readBundleObject(value, td, warnings, { path, ignoreRefreshHint: true }));
  }
  return { bundles: new BundleSet(bundles), warnings };
}

/**
 * Serializes bundles as a bundle map, keyed by trust-domain name in sorted order,
 * without per-bundle refresh hints (BUNDLE-16).
 *
 * @throws SigilError `ERR_BUNDLE_INVALID` when two bundles name the same trust
 *   domain (BUNDLE-15), or as {@link bundleToJson}.
 */
export function serializeBundleMap(bundles: Iterable<SpiffeBundle>): string {
  const byName = new Map<string, SpiffeBundle>();
  for (const b of bundles) {
    if (byName.has(b.trustDomain.name)) throw invalid(`duplicate trust domain "${b.trustDomain.name}" in trust_domains`);
    byName.set(b.trustDomain.name, b);
  }
  const names = [...byName.keys()].sort();
  const members = names.map((n) => `${JSON.stringify(n)}:${bundleToJson(byName.get(n) as SpiffeBundle, { includeRefreshHint: false })}`);
  return `{"trust_domains":{${members.join(",")}}}`;
}
