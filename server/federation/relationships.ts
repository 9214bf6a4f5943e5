/**
 * Federation relationships as the admin API and the config file give them:
 * validation with messages that name the field (FED-9, FED-11, FED-20), the
 * initial bundle (SPIFFE JSON or PEM), and the check that an `https_spiffe`
 * endpoint can be authenticated before its first fetch (FED-20, FED-24).
 * Both callers use these functions, so a relationship the API refuses is
 * refused in the config with the same words.
 */
import { decodePemCertificates } from "../../spiffe/pem.js";
import { MAX_SEQUENCE_NUMBER, parseSpiffeBundle, serializeSpiffeBundle, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { SigilError, isSigilError, type ErrorCode } from "../../spiffe/errors.js";
import { authorityKeySharedWith } from "../../spiffe/bundle/shared-authorities.js";
import { validateEndpointUrl } from "../../spiffe/federation/bundle-endpoint-client.js";
import { parseSpiffeId, parseTrustDomain, parseTrustDomainIdString, type SpiffeId, type TrustDomain } from "../../spiffe/id.js";
import { decodeCertificate } from "../../spiffe/x509/decode-certificate.js";
import type { Datastore } from "../datastore/datastore.js";
import { BUNDLE_ENDPOINT_PROFILES, type BundleEndpointProfileName, type FederationRelationship, type FederationRelationshipInput, type RelationshipSource } from "../datastore/federation-relationship.js";

/** Formats of an initial bundle. */
export const INITIAL_BUNDLE_FORMATS = ["spiffe", "pem"] as const;

/** `spiffe` (a SPIFFE bundle JSON document) or `pem` (X.509 authorities only). */
export type InitialBundleFormat = (typeof INITIAL_BUNDLE_FORMATS)[number];

/** A relationship as given, before validation (all strings, as the wire and the config carry them). */
export interface RelationshipFields {
  readonly trustDomain: string;
  readonly bundleEndpointUrl: string;
  readonly profile: string;
  /** Empty or absent for `https_web`. */
  readonly endpointSpiffeId?: string | undefined;
}

/** How the caller names each field in messages: the API's request paths or the config's key paths. */
export interface RelationshipFieldNames {
  readonly trustDomain: string;
  readonly bundleEndpointUrl: string;
  readonly profile: string;
  readonly endpointSpiffeId: string;
  readonly initialBundle: string;
}

/** A validated relationship. */
export interface RelationshipSpec {
  readonly trustDomain: TrustDomain;
  /** The configured URL, as given (every refresh starts from it, FED-19). */
  readonly bundleEndpointUrl: string;
  readonly profile: BundleEndpointProfileName;
  /** Exactly for `https_spiffe`. */
  readonly endpointSpiffeId?: SpiffeId;
}

/** An initial bundle, parsed for its trust domain and ready to store. */
export interface InitialBundle {
  readonly bundle: SpiffeBundle;
  /** The SPIFFE JSON document to store (as given for `spiffe`; built from the certificates for `pem`). */
  readonly document: string;
  readonly sequence: bigint;
  readonly warnings: readonly string[];
}

/** Largest initial bundle, in bytes (as the admin API's bundle limit). */
export const MAX_INITIAL_BUNDLE_BYTES = 1024 * 1024;

/** An error whose message starts with the field path. */
export function fieldError(code: ErrorCode, field: string, message: string, cause?: unknown): SigilError {
  return new SigilError(code, `${field}: ${message}`, cause === undefined ? undefined : { cause });
}

const describe = (e: unknown): string => (isSigilError(e) ? e.message : e instanceof Error ? e.message : String(e));

/**
 * Validates a relationship (FED-9: trust domain, URL and profile are all
 * required and none is inferred from another; FED-11: `https`, no userinfo;
 * FED-20: `https_spiffe` needs a valid endpoint SPIFFE ID, `https_web` takes
 * none). The trust domain may not be the server's own.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the field.
 */
export function validateRelationship(fields: RelationshipFields, own: TrustDomain, names: RelationshipFieldNames): RelationshipSpec {
  if (!fields.trustDomain) throw fieldError("ERR_INVALID_ARGUMENT", names.trustDomain, "is required (it is never taken from the URL)");
  let trustDomain: TrustDomain;
  try {
    trustDomain = fields.trustDomain.startsWith("spiffe://") ? parseTrustDomainIdString(fields.trustDomain) : parseTrustDomain(fields.trustDomain);
  } catch (e) {
    throw fieldError("ERR_INVALID_ARGUMENT", names.trustDomain, describe(e), e);
  }
  if (trustDomain.equals(own)) throw fieldError("ERR_INVALID_ARGUMENT", names.trustDomain, `${own.name} is this server's own trust domain`);
  if (!fields.bundleEndpointUrl) throw fieldError("ERR_INVALID_ARGUMENT", names.bundleEndpointUrl, "is required");
  try {
    validateEndpointUrl(fields.bundleEndpointUrl);
  } catch (e) {
    throw fieldError("ERR_INVALID_ARGUMENT", names.bundleEndpointUrl, describe(e), e);
  }
  if (!fields.profile) throw fieldError("ERR_INVALID_ARGUMENT", names.profile, `is required: ${BUNDLE_ENDPOINT_PROFILES.join(" or ")}`);
  if (!BUNDLE_ENDPOINT_PROFILES.includes(fields.profile as BundleEndpointProfileName)) {
    throw fieldError("ERR_INVALID_ARGUMENT", names.profile, `must be ${BUNDLE_ENDPOINT_PROFILES.join(" or ")}, got ${JSON.stringify(fields.profile.slice(0, 40))}`);
  }
  const profile = fields.profile as BundleEndpointProfileName;
  if (profile === "https_web") {
    if (fields.endpointSpiffeId) throw fieldError("ERR_INVALID_ARGUMENT", names.endpointSpiffeId, "is only for the https_spiffe profile");
    return { trustDomain, bundleEndpointUrl: fields.bundleEndpointUrl, profile };
  }
  if (!fields.endpointSpiffeId) throw fieldError("ERR_INVALID_ARGUMENT", names.endpointSpiffeId, "is required for the https_spiffe profile");
  let endpointSpiffeId: SpiffeId;
  try {
    endpointSpiffeId = parseSpiffeId(fields.endpointSpiffeId);
  } catch (e) {
    throw fieldError("ERR_INVALID_ARGUMENT", names.endpointSpiffeId, describe(e), e);
  }
  if (endpointSpiffeId.isTrustDomainId()) throw fieldError("ERR_INVALID_ARGUMENT", names.endpointSpiffeId, "must have a path (a trust domain's own ID names no workload)");
  return { trustDomain, bundleEndpointUrl: fields.bundleEndpointUrl, profile, endpointSpiffeId };
}

/**
 * Parses an initial bundle for `trustDomain`: a SPIFFE bundle document
 * (`spiffe`, stored as given, its `spiffe_sequence` kept) or PEM certificates
 * (`pem`, X.509 authorities only, sequence 0).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming `field`.
 */
export function parseInitialBundle(text: string, format: string, trustDomain: TrustDomain, field: string): InitialBundle {
  if (!INITIAL_BUNDLE_FORMATS.includes(format as InitialBundleFormat)) {
    throw fieldError("ERR_INVALID_ARGUMENT", `${field} format`, `must be ${INITIAL_BUNDLE_FORMATS.join(" or ")}, got ${JSON.stringify(format.slice(0, 40))}`);
  }
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MAX_INITIAL_BUNDLE_BYTES) throw fieldError("ERR_INVALID_ARGUMENT", field, `is ${bytes} bytes, more than the maximum ${MAX_INITIAL_BUNDLE_BYTES}`);
  if (format === "pem") {
    let ders: Uint8Array[];
    try {
      ders = decodePemCertificates(text);
    } catch (e) {
      throw fieldError("ERR_INVALID_ARGUMENT", field, describe(e), e);
    }
    if (ders.length === 0) throw fieldError("ERR_INVALID_ARGUMENT", field, "holds no PEM certificate");
    const bundle: SpiffeBundle = { trustDomain, x509Authorities: ders, jwtAuthorities: new Map(), sequenceNumber: 0n };
    let document: string;
    try {
      document = serializeSpiffeBundle(bundle);
    } catch (e) {
      throw fieldError("ERR_INVALID_ARGUMENT", field, describe(e), e);
    }
    return { bundle, document, sequence: 0n, warnings: [] };
  }
  let parsed;
  try {
    parsed = parseSpiffeBundle(text, trustDomain);
  } catch (e) {
    throw fieldError("ERR_INVALID_ARGUMENT", field, describe(e), e);
  }
  if (parsed.bundle.x509Authorities.length === 0 && parsed.bundle.jwtAuthorities.size === 0) {
    throw fieldError("ERR_INVALID_ARGUMENT", field, "has no X.509 or JWT authorities");
  }
  const sequence = parsed.bundle.sequenceNumber ?? 0n;
  if (sequence > MAX_SEQUENCE_NUMBER) throw fieldError("ERR_INVALID_ARGUMENT", field, "spiffe_sequence is out of range");
  return { bundle: parsed.bundle, document: text, sequence, warnings: parsed.warnings };
}

/**
 * Why `bundle` is not a bundle of its trust domain, or `undefined`: an X.509
 * authority names another trust domain's SPIFFE ID (URI SAN), or an authority
 * key is also one of the own trust domain or of another held bundle (BUNDLE-1:
 * whoever holds a shared key mints identities in both). Catches an endpoint
 * publishing our root, or another federated domain's, under its name.
 */
export async function foreignAuthorityProblem(bundle: SpiffeBundle, ownBundle: SpiffeBundle, datastore: Pick<Datastore, "listBundles">): Promise<string | undefined> {
  const td = bundle.trustDomain;
  for (const [i, der] of bundle.x509Authorities.entries()) {
    for (const uri of decodeCertificate(der).subjectAltNames?.uris ?? []) {
      let id: SpiffeId;
      try {
        id = parseSpiffeId(uri);
      } catch {
        continue;
      }
      if (!id.trustDomain.equals(td)) return `x509 authority ${i} names ${id.toString()}, an ID of another trust domain than ${td.name}`;
    }
  }
  const others: SpiffeBundle[] = [ownBundle];
  for (const stored of await datastore.listBundles()) {
    if (stored.trustDomain === ownBundle.trustDomain.name || stored.trustDomain === td.name) continue;
    try {
      others.push(parseSpiffeBundle(stored.document, parseTrustDomain(stored.trustDomain)).bundle);
    } catch {
      // A stored bundle that does not parse authorises nothing.
    }
  }
  const shared = authorityKeySharedWith(bundle, others);
  if (shared === undefined) return undefined;
  const owners = shared.trustDomains.filter((name) => name !== td.name);
  return `an authority key (SPKI SHA-256 ${shared.spkiSha256}) is already an authority of ${owners.join(", ")}; a key may be an authority of one trust domain only (BUNDLE-1)`;
}

/**
 * The trust domain whose bundle authenticates an `https_spiffe` endpoint:
 * the endpoint SPIFFE ID's. It is the relationship's own trust domain when the
 * endpoint is self-serving (FED-23), another one otherwise (FED-24).
 */
export function endpointTrustDomain(spec: RelationshipSpec): TrustDomain | undefined {
  return spec.endpointSpiffeId?.trustDomain;
}

/**
 * Checks that an `https_spiffe` endpoint can be authenticated at its first
 * fetch (FED-20): self-serving needs the initial bundle or a bundle already
 * held for the trust domain; otherwise the endpoint's trust domain must be
 * this server's own or one whose bundle is held.
 *
 * @throws SigilError `ERR_FAILED_PRECONDITION` naming the field to supply.
 */
export async function checkEndpointAuthenticable(
  spec: RelationshipSpec,
  own: TrustDomain,
  hasInitialBundle: boolean,
  datastore: Pick<Datastore, "getBundle">,
  names: RelationshipFieldNames,
): Promise<void> {
  const td = endpointTrustDomain(spec);
  if (td === undefined || td.equals(own)) return;
  if (td.equals(spec.trustDomain)) {
    if (hasInitialBundle || (await datastore.getBundle(td.name)) !== undefined) return;
    throw fieldError(
      "ERR_FAILED_PRECONDITION",
      names.initialBundle,
      `is required: the https_spiffe endpoint ${spec.endpointSpiffeId?.toString() ?? ""} is authenticated with ${td.name}'s bundle, and none is held yet (FED-20)`,
    );
  }
  if ((await datastore.getBundle(td.name)) !== undefined) return;
  throw fieldError(
    "ERR_FAILED_PRECONDITION",
    names.endpointSpiffeId,
    `${spec.endpointSpiffeId?.toString() ?? ""} is in ${td.name}, whose bundle this server does not hold; federate with ${td.name} first or set its bundle (FED-24)`,
  );
}

/** The datastore input of a validated relationship. */
export function relationshipInput(spec: RelationshipSpec, source: RelationshipSource): FederationRelationshipInput {
  return {
    trustDomain: spec.trustDomain.name,
    bundleEndpointUrl: spec.bundleEndpointUrl,
    profile: spec.profile,
    ...(spec.endpointSpiffeId ? { endpointSpiffeId: spec.endpointSpiffeId.toString() } : {}),
    source,
  };
}

/** A stored relationship as a {@link RelationshipSpec} (stored values were validated on the way in). */
export function storedRelationshipSpec(r: FederationRelationship): RelationshipSpec {
  return {
    trustDomain: parseTrustDomain(r.trustDomain),
    bundleEndpointUrl: r.bundleEndpointUrl,
    profile: r.profile,
    ...(r.endpointSpiffeId ? { endpointSpiffeId: parseSpiffeId(r.endpointSpiffeId) } : {}),
  };
}

/** Field names of a `federation.federates_with.<td>` entry of the config, for messages. */
export function configRelationshipFieldNames(key: string): RelationshipFieldNames {
  const base = `federation.federates_with[${JSON.stringify(key)}]`;
  return {
    trustDomain: base,
    bundleEndpointUrl: `${base}.bundle_endpoint_url`,
    profile: `${base}.bundle_endpoint_profile`,
    endpointSpiffeId: `${base}.bundle_endpoint_profile.https_spiffe.endpoint_spiffe_id`,
    initialBundle: `${base}.trust_domain_bundle_path`,
  };
}
