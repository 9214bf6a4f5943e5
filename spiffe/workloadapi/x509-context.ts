/**
 * X.509 material from the Workload API: turning `X509SVIDResponse` and
 * `X509BundlesResponse` messages into validated values.
 *
 * Rules applied (SPIFFE Workload API §4.4, §4.5, §5.2, §8):
 * - Every message carries the complete state; a context is built from one
 *   message alone, so anything not sent is gone (WAPI-9, WAPI-10, WAPI-23).
 * - A mandatory field at its default value makes the whole message invalid
 *   (WAPI-12); the caller reports it and keeps its previous state.
 * - Certificates and bundles are concatenated DER, never PEM (pitfall A18).
 * - The first SVID is the default (WAPI-39); of several SVIDs sharing a
 *   non-empty hint the first is kept (WAPI-21, A17).
 * - Map keys are trust-domain IDs, `spiffe://td`, parsed strictly (A11).
 */
import type { KeyObject } from "node:crypto";
import type { X509SVIDResponse, X509BundlesResponse } from "../../proto/gen/spiffe/workload_pb.js";
import { X509Bundle, type X509BundleSource } from "../bundle/x509-bundle.js";
import { splitDerConcatenation } from "../der.js";
import { SigilError } from "../errors.js";
import { parseSpiffeId, parseTrustDomainIdString, type SpiffeId, type TrustDomain } from "../id.js";
import { parseX509Svid, type ParsedX509Svid } from "../x509/svid.js";

/**
 * An X509-SVID received from the Workload API: the parsed chain (`id` equals
 * the message's `spiffe_id`), its private key, and its hint.
 */
export interface X509Svid extends ParsedX509Svid {
  /** The SVID's private key (from `x509_svid_key`, PKCS#8), matching the leaf. */
  readonly privateKey: KeyObject;
  /** The operator-chosen hint, or "" when none was sent. */
  readonly hint: string;
}

/** The X.509 bundles a workload holds, keyed by trust-domain name. */
export type X509BundleMap = ReadonlyMap<string, X509Bundle>;

/** A set of X.509 bundles usable as an {@link X509BundleSource}. */
export class X509Bundles implements X509BundleSource {
  /** Bundles keyed by trust-domain name. */
  readonly bundles: X509BundleMap;

  constructor(bundles: X509BundleMap) {
    this.bundles = new Map(bundles);
  }

  /** The bundle of `td`, or undefined when the domain is not trusted (WAPI-13). */
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    return this.bundles.get(td.name);
  }
}

/**
 * One complete X.509 state from `FetchX509SVID`: the caller's SVIDs (default
 * first) and the bundles of its own and federated trust domains. Implements
 * {@link X509BundleSource}, so it can verify peers directly.
 */
export class X509Context implements X509BundleSource {
  /** SVIDs in the server's order; `svids[0]` is the default identity (WAPI-39). Never empty. */
  readonly svids: readonly X509Svid[];
  /** Own and federated trust-domain bundles, keyed by trust-domain name. */
  readonly bundles: X509BundleMap;
  /** DER CRLs, as sent (optional in the protocol). */
  readonly crls: readonly Uint8Array[];

  constructor(svids: readonly X509Svid[], bundles: X509BundleMap, crls: readonly Uint8Array[] = []) {
    if (svids.length === 0) {
      throw new SigilError("ERR_WORKLOAD_API_RESPONSE_INVALID", "workloadapi: an X.509 context needs at least one SVID");
    }
    this.svids = Object.freeze([...svids]);
    this.bundles = new Map(bundles);
    this.crls = Object.freeze([...crls]);
  }

  /** The default SVID: the first one the server sent (WAPI-39). */
  get defaultSvid(): X509Svid {
    return this.svids[0] as X509Svid;
  }

  /** The SVID with this non-empty hint, if any. */
  svidByHint(hint: string): X509Svid | undefined {
    if (hint === "") return undefined;
    return this.svids.find((s) => s.hint === hint);
  }

  /** The bundle for `td`, or undefined when the domain is not trusted (WAPI-13). */
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    return this.bundles.get(td.name);
  }
}

function invalid(what: string, problem: string, cause?: unknown): SigilError {
  return new SigilError(
    "ERR_WORKLOAD_API_RESPONSE_INVALID",
    `workloadapi: invalid ${what}: ${problem}`,
    cause === undefined ? undefined : { cause },
  );
}

function causeText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Parses a concatenated-DER bundle value into a bundle whose certificates all parse. */
function parseBundleValue(what: string, label: string, td: TrustDomain, value: Uint8Array): X509Bundle {
  if (value.length === 0) throw invalid(what, `${label} is empty`);
  try {
    const bundle = new X509Bundle(td, splitDerConcatenation(value));
    void bundle.authorities; // parse now so a broken certificate invalidates this message, not a later handshake
    return bundle;
  } catch (e) {
    throw invalid(what, `${label}: ${causeText(e)}`, e);
  }
}

function parseMapKey(what: string, field: string, key: string): TrustDomain {
  try {
    return parseTrustDomainIdString(key);
  } catch (e) {
    throw invalid(what, `${field} key ${JSON.stringify(key)} is not a trust-domain ID spiffe://<td>: ${causeText(e)}`, e);
  }
}

/**
 * Validates and parses one `X509SVIDResponse`.
 *
 * @throws SigilError `ERR_WORKLOAD_API_RESPONSE_INVALID` naming the first problem.
 */
export function parseX509SvidResponse(resp: X509SVIDResponse): X509Context {
  const what = "X509SVIDResponse";
  if (resp.svids.length === 0) throw invalid(what, "svids is empty (at least one SVID is mandatory)");
  const svids: X509Svid[] = [];
  const seenHints = new Set<string>();
  const bundles = new Map<string, X509Bundle>();
  resp.svids.forEach((s, i) => {
    const label = `svids[${i}]`;
    if (s.spiffeId === "") throw invalid(what, `${label}.spiffe_id is empty`);
    if (s.x509Svid.length === 0) throw invalid(what, `${label}.x509_svid is empty`);
    if (s.x509SvidKey.length === 0) throw invalid(what, `${label}.x509_svid_key is empty`);
    if (s.bundle.length === 0) throw invalid(what, `${label}.bundle is empty`);
    let id: SpiffeId;
    try {
      id = parseSpiffeId(s.spiffeId);
    } catch (e) {
      throw invalid(what, `${label}.spiffe_id: ${causeText(e)}`, e);
    }
    let parsed: ParsedX509Svid;
    try {
      parsed = parseX509Svid(s.x509Svid, s.x509SvidKey); // splits the concatenated DER (A18)
    } catch (e) {
      throw invalid(what, `${label}: ${causeText(e)}`, e);
    }
    if (!parsed.id.equals(id)) {
      throw invalid(what, `${label}.spiffe_id ${id.toString()} does not match the certificate's ${parsed.id.toString()}`);
    }
    if (parsed.privateKey === undefined) throw invalid(what, `${label}.x509_svid_key did not yield a private key`);
    const bundle = parseBundleValue(what, `${label}.bundle`, id.trustDomain, s.bundle);
    // A later SVID of the same trust domain cannot replace the bundle already taken.
    if (!bundles.has(id.trustDomain.name)) bundles.set(id.trustDomain.name, bundle);
    if (s.hint !== "") {
      if (seenHints.has(s.hint)) return; // WAPI-21: first SVID with a hint wins
      seenHints.add(s.hint);
    }
    svids.push({ ...parsed, privateKey: parsed.privateKey, hint: s.hint });
  });
  for (const [key, value] of Object.entries(resp.federatedBundles)) {
    const td = parseMapKey(what, "federated_bundles", key);
    const bundle = parseBundleValue(what, `federated_bundles[${JSON.stringify(key)}]`, td, value);
    // federated_bundles holds foreign domains only; an SVID's own bundle takes precedence.
    if (!bundles.has(td.name)) bundles.set(td.name, bundle);
  }
  return new X509Context(svids, bundles, resp.crl);
}

/**
 * Validates and parses one `X509BundlesResponse` into bundles keyed by
 * trust-domain name. These bundles authenticate X509-SVIDs only (WAPI-14).
 *
 * @throws SigilError `ERR_WORKLOAD_API_RESPONSE_INVALID` naming the first problem.
 */
export function parseX509BundlesResponse(resp: X509BundlesResponse): X509Bundles {
  const what = "X509BundlesResponse";
  const entries = Object.entries(resp.bundles);
  if (entries.length === 0) throw invalid(what, "bundles is empty (the own trust domain's bundle is mandatory)");
  const bundles = new Map<string, X509Bundle>();
  for (const [key, value] of entries) {
    const td = parseMapKey(what, "bundles", key);
    bundles.set(td.name, parseBundleValue(what, `bundles[${JSON.stringify(key)}]`, td, value));
  }
  return new X509Bundles(bundles);
}
