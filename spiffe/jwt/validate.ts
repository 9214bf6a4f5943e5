/**
 * JWT-SVID validation (JWT-SVID §4). The order is fixed: structure, `alg`
 * allow-list, the rest of the header, `sub`, the bundle of `sub`'s own trust
 * domain, the key named by `kid`, the signature, then `aud` and `exp`.
 */
import { constants, verify as cryptoVerify, type KeyObject } from "node:crypto";
import type { JwtBundleSource } from "../bundle/jwt-bundle.js";
import { SigilError } from "../errors.js";
import { assertKeyFitsAlg, jwtAlgParams, type JwtAlg } from "./alg.js";
import { readAudience, readExpiry, readOptionalNumericDate } from "./claims.js";
import { decodeSignatureSegment } from "./compact.js";
import { decodeJwtSvid } from "./decode.js";
import type { JwtSvid } from "./jwt-svid.js";

/** Clock skew tolerated on `exp` and `nbf` unless the caller says otherwise. */
export const DEFAULT_JWT_LEEWAY_SECONDS = 30;

/** What the validator expects of a token. */
export interface ValidateJwtSvidOptions {
  /**
   * The validator's own audience(s); the token's `aud` must contain at least one.
   * An empty string or list is an error, never a reason to skip the check (pitfall A5).
   */
  readonly audience: string | readonly string[];
  /** The current time; pass the injected clock's time. Defaults to `new Date()`. */
  readonly now?: Date;
  /** Clock skew tolerated on `exp` and `nbf`, in seconds. Default {@link DEFAULT_JWT_LEEWAY_SECONDS}. */
  readonly leewaySeconds?: number;
}

function expectedAudiences(audience: string | readonly string[]): readonly string[] {
  const list = typeof audience === "string" ? [audience] : audience;
  if (list.length === 0) {
    throw new SigilError("ERR_INVALID_ARGUMENT", "jwtsvid: expected audience list is empty; the audience check cannot be skipped");
  }
  for (const a of list) {
    if (typeof a !== "string" || a.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", "jwtsvid: expected audience contains an empty value");
  }
  return list;
}

function verifySignature(alg: JwtAlg, key: KeyObject, signingInput: string, signature: Buffer): boolean {
  const p = jwtAlgParams(alg);
  // A P1363 signature has a fixed length; anything else (e.g. DER) is not a JWS signature.
  if (p.signatureBytes !== undefined && signature.length !== p.signatureBytes) return false;
  const data = Buffer.from(signingInput, "latin1");
  try {
    if (p.family === "ecdsa") return cryptoVerify(p.hash, data, { key, dsaEncoding: "ieee-p1363" }, signature);
    if (p.family === "rsa-pss") {
      return cryptoVerify(p.hash, data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }, signature);
    }
    return cryptoVerify(p.hash, data, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
  } catch {
    // OpenSSL rejects some malformed signatures by throwing rather than returning false.
    return false;
  }
}

/**
 * Validates a JWT-SVID against the JWT bundle of its own trust domain and returns
 * what it asserts.
 *
 * @example
 * ```ts
 * const svid = validateJwtSvid(token, bundleSet, { audience: "spiffe://example.org/api", now: clock.now() });
 * svid.spiffeId.toString() // "spiffe://example.org/web"
 * ```
 * @throws SigilError with one of: `ERR_INVALID_ARGUMENT` (empty expected audience,
 *   bad leeway), `ERR_JWT_MALFORMED`, `ERR_JWT_ALG_NOT_ALLOWED`, `ERR_JWT_CLAIM_INVALID`,
 *   `ERR_BUNDLE_NOT_FOUND` (no bundle for `sub`'s trust domain), `ERR_JWT_KEY_NOT_FOUND`,
 *   `ERR_JWT_SIGNATURE_INVALID`, `ERR_JWT_AUDIENCE_MISMATCH`, `ERR_JWT_EXPIRED`.
 */
export function validateJwtSvid(token: string, bundleSource: JwtBundleSource, options: ValidateJwtSvidOptions): JwtSvid {
  // Caller mistakes come first, so a misconfigured validator fails on every token, not just bad ones.
  const expected = expectedAudiences(options.audience);
  const leeway = options.leewaySeconds ?? DEFAULT_JWT_LEEWAY_SECONDS;
  if (!Number.isFinite(leeway) || leeway < 0) throw new SigilError("ERR_INVALID_ARGUMENT", `jwtsvid: leewaySeconds ${leeway} is not a non-negative number`);
  const now = (options.now ?? new Date()).getTime();
  // An Invalid Date would make every time comparison false, i.e. never expired.
  if (!Number.isFinite(now)) throw new SigilError("ERR_INVALID_ARGUMENT", "jwtsvid: now is not a valid date");

  const { segments, header, claims, spiffeId } = decodeJwtSvid(token);

  // Only the bundle of the subject's own trust domain may vouch for it (JWT-14, WAPI-39).
  const td = spiffeId.trustDomain;
  const bundle = bundleSource.getJwtBundleForTrustDomain(td);
  if (bundle === undefined) throw new SigilError("ERR_BUNDLE_NOT_FOUND", `jwtsvid: no JWT bundle for trust domain "${td.name}"`);
  if (bundle.isEmpty()) {
    throw new SigilError("ERR_JWT_KEY_NOT_FOUND", `jwtsvid: the JWT bundle of "${td.name}" has no keys; it does not support JWT-SVIDs`);
  }
  const key = bundle.findAuthority(header.kid);
  if (key === undefined) throw new SigilError("ERR_JWT_KEY_NOT_FOUND", `jwtsvid: no key "${header.kid}" in the JWT bundle of "${td.name}"`);
  assertKeyFitsAlg(key, header.alg, header.kid);
  if (!verifySignature(header.alg, key, `${segments.header}.${segments.payload}`, decodeSignatureSegment(segments.signature))) {
    throw new SigilError("ERR_JWT_SIGNATURE_INVALID", `jwtsvid: signature does not verify with key "${header.kid}" of "${td.name}"`);
  }

  const audience = readAudience(claims);
  if (!audience.some((a) => expected.includes(a))) {
    throw new SigilError(
      "ERR_JWT_AUDIENCE_MISMATCH",
      `jwtsvid: token audience ${JSON.stringify(audience)} does not contain any of ${JSON.stringify(expected)}`,
    );
  }
  const expiresAt = readExpiry(claims);
  if (now >= expiresAt.getTime() + leeway * 1000) {
    throw new SigilError("ERR_JWT_EXPIRED", `jwtsvid: token expired at ${expiresAt.toISOString()}`);
  }
  // nbf is not a JWT-SVID claim, but RFC 7519 §4.1.5 forbids accepting a token before it.
  const notBefore = readOptionalNumericDate(claims, "nbf");
  if (notBefore !== undefined && now + leeway * 1000 < notBefore.getTime()) {
    throw new SigilError("ERR_JWT_CLAIM_INVALID", `jwtsvid: token is not valid before ${notBefore.toISOString()}`);
  }
  return { spiffeId, claims, header, expiresAt, audience };
}
