/**
 * JWT material from the Workload API: `JWTSVIDResponse`, `JWTBundlesResponse`
 * and `ValidateJWTSVIDResponse` turned into validated values.
 *
 * JWT bundles here are plain JWK Sets that the agent has already stripped of
 * `use` (pitfall A6), so they are parsed with the Workload API JWKS parser,
 * which does not filter on `use`, unlike a SPIFFE bundle from a federation
 * endpoint.
 */
import type { JsonObject } from "@bufbuild/protobuf";
import type {
  JWTBundlesResponse,
  JWTSVIDResponse,
  ValidateJWTSVIDResponse,
} from "../../proto/gen/spiffe/workload_pb.js";
import { parseJwks } from "../bundle/jwks.js";
import type { JwtBundle, JwtBundleSource } from "../bundle/jwt-bundle.js";
import { SigilError } from "../errors.js";
import { parseSpiffeId, parseTrustDomainIdString, type SpiffeId, type TrustDomain } from "../id.js";
import type { JwtSvid } from "../jwt/jwt-svid.js";
import { parseJwtSvidInsecure } from "../jwt/parse-insecure.js";

/**
 * A JWT-SVID received from the Workload API: the token, its hint, and what the
 * token says (decoded with `parseJwtSvidInsecure`: structure checked, signature
 * not, since the agent just issued it to us).
 */
export interface WorkloadJwtSvid extends JwtSvid {
  /** The compact JWS to present to a peer. */
  readonly token: string;
  /** The operator-chosen hint, or "". */
  readonly hint: string;
}

/** JWT bundles keyed by trust-domain name. */
export type JwtBundleMap = ReadonlyMap<string, JwtBundle>;

/** The result of `ValidateJWTSVID`: the token's subject and the claims the agent returned. */
export interface ValidatedJwtSvid {
  readonly id: SpiffeId;
  readonly claims: Readonly<JsonObject>;
}

/** A set of JWT bundles usable as a {@link JwtBundleSource}. */
export class JwtBundles implements JwtBundleSource {
  /** Bundles keyed by trust-domain name. */
  readonly bundles: JwtBundleMap;

  constructor(bundles: JwtBundleMap) {
    this.bundles = new Map(bundles);
  }

  /** The bundle of `td`, or undefined when the domain is not trusted (WAPI-37). */
  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
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

/**
 * Validates a `JWTSVIDResponse`: at least one SVID, each with `spiffe_id` and
 * `svid`, the token's `sub` equal to `spiffe_id`, and (when a specific ID was
 * requested) only that ID. Of SVIDs sharing a non-empty hint the first is kept.
 *
 * @throws SigilError `ERR_WORKLOAD_API_RESPONSE_INVALID` naming the first problem.
 */
export function parseJwtSvidResponse(resp: JWTSVIDResponse, requested?: SpiffeId): WorkloadJwtSvid[] {
  const what = "JWTSVIDResponse";
  if (resp.svids.length === 0) throw invalid(what, "svids is empty (at least one SVID is mandatory)");
  const out: WorkloadJwtSvid[] = [];
  const seenHints = new Set<string>();
  resp.svids.forEach((s, i) => {
    const label = `svids[${i}]`;
    if (s.spiffeId === "") throw invalid(what, `${label}.spiffe_id is empty`);
    if (s.svid === "") throw invalid(what, `${label}.svid is empty`);
    let id: SpiffeId;
    let decoded: JwtSvid;
    try {
      id = parseSpiffeId(s.spiffeId);
      decoded = parseJwtSvidInsecure(s.svid);
    } catch (e) {
      throw invalid(what, `${label}: ${causeText(e)}`, e);
    }
    if (!decoded.spiffeId.equals(id)) {
      throw invalid(what, `${label}: token sub ${decoded.spiffeId.toString()} does not match spiffe_id ${id.toString()}`);
    }
    if (requested !== undefined && !requested.equals(id)) {
      throw invalid(what, `${label}: got ${id.toString()} but ${requested.toString()} was requested`);
    }
    if (s.hint !== "") {
      if (seenHints.has(s.hint)) return; // WAPI-21: first SVID with a hint wins
      seenHints.add(s.hint);
    }
    out.push({ ...decoded, token: s.svid, hint: s.hint });
  });
  return out;
}

/**
 * Validates and parses a `JWTBundlesResponse` (keys `spiffe://td`, values JWKS JSON).
 *
 * @throws SigilError `ERR_WORKLOAD_API_RESPONSE_INVALID` naming the first problem.
 */
export function parseJwtBundlesResponse(resp: JWTBundlesResponse): JwtBundles {
  const what = "JWTBundlesResponse";
  const entries = Object.entries(resp.bundles);
  if (entries.length === 0) throw invalid(what, "bundles is empty (the own trust domain's bundle is mandatory)");
  const bundles = new Map<string, JwtBundle>();
  for (const [key, value] of entries) {
    let td: TrustDomain;
    try {
      td = parseTrustDomainIdString(key);
    } catch (e) {
      throw invalid(what, `bundles key ${JSON.stringify(key)} is not a trust-domain ID spiffe://<td>: ${causeText(e)}`, e);
    }
    if (value.length === 0) throw invalid(what, `bundles[${JSON.stringify(key)}] is empty`);
    try {
      bundles.set(td.name, parseJwks(value, td));
    } catch (e) {
      throw invalid(what, `bundles[${JSON.stringify(key)}]: ${causeText(e)}`, e);
    }
  }
  return new JwtBundles(bundles);
}

/**
 * Validates a `ValidateJWTSVIDResponse`: `spiffe_id` is mandatory. Missing
 * `claims` (which go-spiffe's proto calls optional, A19) gives `{}`.
 *
 * @throws SigilError `ERR_WORKLOAD_API_RESPONSE_INVALID`.
 */
export function parseValidateJwtSvidResponse(resp: ValidateJWTSVIDResponse): ValidatedJwtSvid {
  const what = "ValidateJWTSVIDResponse";
  if (resp.spiffeId === "") throw invalid(what, "spiffe_id is empty");
  let id: SpiffeId;
  try {
    id = parseSpiffeId(resp.spiffeId);
  } catch (e) {
    throw invalid(what, `spiffe_id: ${causeText(e)}`, e);
  }
  return { id, claims: resp.claims ?? {} };
}
