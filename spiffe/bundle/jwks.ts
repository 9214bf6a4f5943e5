/**
 * The standard JWK Set that the Workload API's FetchJWTBundles carries. It is not
 * a SPIFFE bundle (pitfall A6): keys have no `use` and there are no `spiffe_*`
 * members, so the client side must not filter on `use` the way a SPIFFE bundle
 * consumer does. Two code paths on purpose.
 */
import type { KeyObject } from "node:crypto";
import { SigilError } from "../errors.js";
import type { TrustDomain } from "../id.js";
import { jwkToPublicKey, publicKeyToJwkParams, SUPPORTED_KTYS } from "./jwk.js";
import { formatJsonPath, formatJsonValue, isJsonObject, parseJson } from "./json.js";
import { JwtBundle } from "./jwt-bundle.js";

function invalid(message: string): SigilError {
  return new SigilError("ERR_BUNDLE_INVALID", `bundle: ${message}`);
}

/**
 * Serializes the JWT authorities of a bundle as a plain JWK Set: `kty`, `kid` and
 * key parameters per key; no `use`, no `spiffe_sequence`, no `spiffe_refresh_hint`.
 *
 * @example
 * ```ts
 * response.bundles[td.idString()] = new TextEncoder().encode(serializeJwks(toJwtBundle(bundle)));
 * ```
 * @throws SigilError `ERR_BUNDLE_INVALID` for an empty kid, `ERR_KEY_UNSUPPORTED` for a non-EC/RSA key.
 */
export function serializeJwks(bundle: JwtBundle): string {
  const keys: object[] = [];
  for (const [kid, key] of bundle.authorities) {
    if (kid.length === 0) throw invalid(`a JWT authority of "${bundle.trustDomain.name}" has an empty kid`);
    keys.push({ kid, ...publicKeyToJwkParams(key) });
  }
  return JSON.stringify({ keys });
}

/** Options for {@link parseJwks}. */
export interface ParseJwksOptions {
  /** Receives a message for each key skipped because its `kty` or curve is not supported. */
  readonly onWarning?: (message: string) => void;
}

/**
 * Parses a Workload API JWK Set into the JWT bundle of `trustDomain`. Every key
 * is taken whatever its `use` says; each needs a unique, non-empty `kid` (the
 * key a token names, pitfall A4). Keys of unsupported `kty` or curve are skipped
 * (RFC 7517 §5).
 *
 * @throws SigilError `ERR_BUNDLE_INVALID`.
 */
export function parseJwks(json: string | Uint8Array, trustDomain: TrustDomain, options: ParseJwksOptions = {}): JwtBundle {
  const doc = parseJson(json);
  if (!isJsonObject(doc)) throw invalid("the JWK Set is not a JSON object");
  const keys = doc["keys"];
  if (keys === undefined) throw invalid("keys is missing");
  if (!Array.isArray(keys)) throw invalid("keys is not an array");
  const authorities = new Map<string, KeyObject>();
  keys.forEach((entry, i) => {
    const where = formatJsonPath(["keys", i]);
    if (!isJsonObject(entry)) throw invalid(`${where} is not a JSON object`);
    const kty = entry["kty"];
    if (typeof kty !== "string" || !SUPPORTED_KTYS.includes(kty)) {
      options.onWarning?.(`bundle: ${where} has ${kty === undefined ? "no kty" : `unsupported kty ${formatJsonValue(kty)}`}; skipped`);
      return;
    }
    const kid = entry["kid"];
    if (typeof kid !== "string" || kid.length === 0) throw invalid(`${where} has no kid`);
    if (authorities.has(kid)) throw invalid(`${where} repeats kid ${JSON.stringify(kid)}`);
    const key = jwkToPublicKey(entry);
    if ("kind" in key) {
      if (key.kind === "invalid") throw invalid(`${where}: ${key.message}`);
      options.onWarning?.(`bundle: ${where}: ${key.message}; skipped`);
      return;
    }
    authorities.set(kid, key);
  });
  return new JwtBundle(trustDomain, authorities);
}
