/**
 * Pure builders of Workload API responses from what the cache holds for one
 * caller. Every response is the complete current state (WAPI-5); the stream
 * handlers compare consecutive results to decide whether to push.
 *
 * Wire forms (WAPI-17..19, pitfalls A11, A18): certificates and bundles are
 * concatenated DER, keys PKCS#8 DER, maps keyed by the trust domain's SPIFFE
 * ID `spiffe://<td>`, JWT bundles a standard JWK Set (no `use`, A6).
 *
 * An X509-SVID's `spiffe_id` always equals the URI SAN of the certificate it
 * carries: an identity whose certificate names another ID is never sent.
 */
import { create, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import type { BundleSnapshot, CachedIdentity, CachedX509Svid } from "../../cache/types.js";
import { toJwtBundle, type SpiffeBundle } from "../../../spiffe/bundle/spiffe-bundle.js";
import { serializeJwks } from "../../../spiffe/bundle/jwks.js";
import { concatDer } from "../../../spiffe/der.js";
import { parseSpiffeId, type TrustDomain } from "../../../spiffe/id.js";
import type { JwtSvid } from "../../../spiffe/jwt/jwt-svid.js";
import { decodeCertificate } from "../../../spiffe/x509/decode-certificate.js";
import {
  JWTBundlesResponseSchema,
  X509BundlesResponseSchema,
  X509SVIDResponseSchema,
  X509SVIDSchema,
  type JWTBundlesResponse,
  type X509BundlesResponse,
  type X509SVID,
  type X509SVIDResponse,
} from "../../../proto/gen/spiffe/workload_pb.js";
import { memoThisTurn, objectKey } from "../turn-memo.js";

/** Longest hint sent, in UTF-8 bytes (WAPI-40); a longer one is dropped from the response. */
export const MAX_HINT_BYTES = 1024;

/** Claims always returned by ValidateJWTSVID, even for tokens of a foreign trust domain (SPIRE's list). */
export const STANDARD_JWT_CLAIMS: readonly string[] = ["aud", "exp", "iat", "iss", "jti", "nbf", "sub"];

/** Something the builders skipped, for the handler's log. */
export interface ResponseNote {
  readonly entryId: string;
  readonly message: string;
}

/**
 * The identities sent to a caller, in the cache's order (oldest entry first,
 * so the default SVID leads, WAPI-39): a hint over {@link MAX_HINT_BYTES} is
 * dropped (the SVID is still sent, without it), and of several identities
 * sharing a non-empty hint only the first is kept (WAPI-20, SPIRE keeps the
 * oldest entry). Empty hints never collide (A17).
 */
export function selectIdentities(identities: readonly CachedIdentity[], notes: ResponseNote[] = []): CachedIdentity[] {
  const seenHints = new Set<string>();
  const out: CachedIdentity[] = [];
  for (const identity of identities) {
    let item = identity;
    const hint = identity.entry.hint;
    if (hint !== "" && Buffer.byteLength(hint, "utf8") > MAX_HINT_BYTES) {
      notes.push({ entryId: identity.entry.id, message: `hint is longer than ${MAX_HINT_BYTES} bytes; sent without it` });
      item = { ...identity, entry: { ...identity.entry, hint: "" } };
    } else if (hint !== "") {
      if (seenHints.has(hint)) {
        notes.push({ entryId: identity.entry.id, message: `hint ${JSON.stringify(hint)} is already used by an older entry; SVID not sent` });
        continue;
      }
      seenHints.add(hint);
    }
    out.push(item);
  }
  return out;
}

/**
 * The federated bundles a caller receives: those of the trust domains its
 * identities federate with (the union over all of them) that the agent holds,
 * never the agent's own, sorted by name.
 */
export function federatedBundlesFor(identities: readonly CachedIdentity[], bundles: BundleSnapshot, trustDomain: TrustDomain): SpiffeBundle[] {
  const names = new Set<string>();
  for (const identity of identities) for (const td of identity.entry.federatesWith) names.add(td);
  names.delete(trustDomain.name);
  const out: SpiffeBundle[] = [];
  for (const name of [...names].sort()) {
    const b = bundles.federated.get(name);
    if (b !== undefined) out.push(b);
  }
  return out;
}

/** Concatenated DER by chain or authority list: one SVID or bundle is joined once, not once per stream. */
const joinedDer = new WeakMap<readonly Uint8Array[], Uint8Array>();

function joinDer(parts: readonly Uint8Array[]): Uint8Array {
  let bytes = joinedDer.get(parts);
  if (bytes === undefined) joinedDer.set(parts, (bytes = concatDer(parts)));
  return bytes;
}

function x509BundleBytes(bundle: SpiffeBundle): Uint8Array {
  return joinDer(bundle.x509Authorities);
}

function jwksBytes(bundle: SpiffeBundle): Uint8Array {
  return new TextEncoder().encode(serializeJwks(toJwtBundle(bundle)));
}

/** The bundle of an SVID's own trust domain: the agent's, or a federated one for a foreign ID. */
function bundleOfId(spiffeId: string, bundles: BundleSnapshot, trustDomain: TrustDomain): SpiffeBundle | undefined {
  let td: string;
  try {
    td = parseSpiffeId(spiffeId).trustDomain.name;
  } catch {
    return undefined;
  }
  return td === trustDomain.name ? bundles.own : bundles.federated.get(td);
}

/** The leaf's SPIFFE ID by leaf DER: an SVID is decoded once, not on every push to every stream. */
const leafIds = new WeakMap<Uint8Array, string | undefined>();

/**
 * The SPIFFE ID in the URI SAN of an X509-SVID's leaf, in canonical form, or
 * undefined when the leaf cannot be decoded or does not carry exactly one
 * SPIFFE ID URI SAN.
 */
export function svidSpiffeId(svid: CachedX509Svid): string | undefined {
  const leaf = svid.chain[0];
  if (leaf === undefined) return undefined;
  if (leafIds.has(leaf)) return leafIds.get(leaf);
  let id: string | undefined;
  try {
    const uris = decodeCertificate(leaf).subjectAltNames?.uris ?? [];
    id = uris.length === 1 ? parseSpiffeId(uris[0] as string).toString() : undefined;
  } catch {
    id = undefined;
  }
  leafIds.set(leaf, id);
  return id;
}

/**
 * `X509SVIDResponse` for a caller's (already selected) identities, or
 * undefined when none can be sent (the handler answers PermissionDenied).
 */
export function buildX509SvidResponse(
  identities: readonly CachedIdentity[],
  bundles: BundleSnapshot,
  trustDomain: TrustDomain,
  notes: ResponseNote[] = [],
): X509SVIDResponse | undefined {
  const svids: X509SVID[] = [];
  for (const { entry, svid } of identities) {
    const certId = svidSpiffeId(svid);
    if (certId !== entry.spiffeId) {
      notes.push({ entryId: entry.id, message: `the entry names ${entry.spiffeId} but its certificate's URI SAN is ${certId ?? "not one SPIFFE ID"}; SVID not sent` });
      continue;
    }
    const bundle = bundleOfId(entry.spiffeId, bundles, trustDomain);
    if (bundle === undefined || bundle.x509Authorities.length === 0) {
      notes.push({ entryId: entry.id, message: `no X.509 bundle for the trust domain of ${entry.spiffeId}; SVID not sent` });
      continue;
    }
    svids.push(
      create(X509SVIDSchema, {
        spiffeId: entry.spiffeId,
        x509Svid: joinDer(svid.chain),
        x509SvidKey: svid.privateKeyPkcs8,
        bundle: x509BundleBytes(bundle),
        hint: entry.hint,
      }),
    );
  }
  if (svids.length === 0) return undefined;
  const federatedBundles: Record<string, Uint8Array> = {};
  for (const b of federatedBundlesFor(identities, bundles, trustDomain)) {
    if (b.x509Authorities.length > 0) federatedBundles[b.trustDomain.idString()] = x509BundleBytes(b);
  }
  return create(X509SVIDResponseSchema, { svids, federatedBundles });
}

/**
 * {@link buildX509SvidResponse}, built once per turn of the event loop for the
 * same identities and bundles: after a rotation every stream recomputes its
 * response, and workloads that match the same entries (the replicas of one
 * service on a node) share one response object, so it is also encoded once
 * (`encodeMessage`). The key names the cache's objects themselves (entries,
 * SVIDs and the bundle snapshot are replaced on change, never modified), so a
 * response is shared only by callers whose selected identities are exactly
 * the same. The memo lives until the next turn of the event loop.
 */
export function x509SvidResponseFor(
  identities: readonly CachedIdentity[],
  bundles: BundleSnapshot,
  trustDomain: TrustDomain,
  notes: ResponseNote[] = [],
): X509SVIDResponse | undefined {
  const key = `${trustDomain.name} ${objectKey(bundles)} ${identities.map((i) => `${objectKey(i.entry)}:${objectKey(i.svid)}`).join(",")}`;
  const built = memoThisTurn("x509-svid-response", key, () => {
    const own: ResponseNote[] = [];
    return { response: buildX509SvidResponse(identities, bundles, trustDomain, own), notes: own as readonly ResponseNote[] };
  });
  notes.push(...built.notes);
  return built.response;
}

/** `X509BundlesResponse`: the own bundle (always, WAPI-24) and the caller's federated ones. */
export function buildX509BundlesResponse(identities: readonly CachedIdentity[], bundles: BundleSnapshot, trustDomain: TrustDomain): X509BundlesResponse {
  const out: Record<string, Uint8Array> = { [trustDomain.idString()]: x509BundleBytes(bundles.own) };
  for (const b of federatedBundlesFor(identities, bundles, trustDomain)) {
    if (b.x509Authorities.length > 0) out[b.trustDomain.idString()] = x509BundleBytes(b);
  }
  return create(X509BundlesResponseSchema, { bundles: out });
}

/** `JWTBundlesResponse`: the own JWKS (always, WAPI-30) and the caller's federated ones. */
export function buildJwtBundlesResponse(identities: readonly CachedIdentity[], bundles: BundleSnapshot, trustDomain: TrustDomain): JWTBundlesResponse {
  const out: Record<string, Uint8Array> = { [trustDomain.idString()]: jwksBytes(bundles.own) };
  for (const b of federatedBundlesFor(identities, bundles, trustDomain)) {
    if (b.jwtAuthorities.size > 0) out[b.trustDomain.idString()] = jwksBytes(b);
  }
  return create(JWTBundlesResponseSchema, { bundles: out });
}

function toJsonValue(v: unknown): JsonValue | undefined {
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") return Number.isFinite(v) ? v : undefined;
  if (Array.isArray(v)) return v.map((x) => toJsonValue(x) ?? null);
  if (typeof v === "object") {
    const o: JsonObject = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      const j = toJsonValue(x);
      if (j !== undefined) o[k] = j;
    }
    return o;
  }
  return undefined;
}

/**
 * The `claims` of a ValidateJWTSVIDResponse (A19, WAPI-34): every claim of a
 * token of the agent's own trust domain; for a foreign token only
 * {@link STANDARD_JWT_CLAIMS} and the operator's `allowedForeignClaims`
 * (SPIRE's `allowed_foreign_jwt_claims`). `aud` is always a list (A5).
 */
export function validatedClaims(svid: JwtSvid, trustDomain: TrustDomain, allowedForeignClaims: readonly string[] = []): JsonObject {
  const own = svid.spiffeId.memberOf(trustDomain);
  const out: JsonObject = {};
  for (const [k, v] of Object.entries(svid.claims)) {
    if (!own && !STANDARD_JWT_CLAIMS.includes(k) && !allowedForeignClaims.includes(k)) continue;
    const j = toJsonValue(v);
    if (j !== undefined) out[k] = j;
  }
  out["aud"] = [...svid.audience];
  out["sub"] = svid.spiffeId.toString();
  out["exp"] = Math.floor(svid.expiresAt.getTime() / 1000);
  return out;
}
