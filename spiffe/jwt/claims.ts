/**
 * The three claims the JWT-SVID spec constrains: `sub` (JWT-8), `aud` (JWT-9,
 * JWT-10) and `exp` (JWT-12). Other claims pass through untouched (JWT-15).
 */
import { SigilError, isSigilError } from "../errors.js";
import { parseSpiffeId, type SpiffeId } from "../id.js";

/** Decoded JWT claims, as they appeared in the payload. */
export type JwtClaims = Readonly<Record<string, unknown>>;

function claimError(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_JWT_CLAIM_INVALID", `jwtsvid: ${message}`, cause === undefined ? undefined : { cause });
}

/**
 * Reads `sub` as a workload SPIFFE ID: a trust domain's own ID (no path) is not a
 * workload identity.
 *
 * @throws SigilError `ERR_JWT_CLAIM_INVALID`.
 */
export function readSubject(claims: JwtClaims): SpiffeId {
  const sub = claims["sub"];
  if (sub === undefined) throw claimError("token has no sub claim");
  if (typeof sub !== "string") throw claimError("sub claim is not a string");
  let id: SpiffeId;
  try {
    id = parseSpiffeId(sub);
  } catch (e) {
    throw claimError(`sub claim is not a SPIFFE ID: ${isSigilError(e) ? e.message : String(e)}`, e);
  }
  if (id.isTrustDomainId()) throw claimError(`sub claim ${sub} is a trust-domain ID, not a workload identity`);
  return id;
}

/**
 * Reads `aud` in either RFC 7519 form, a string or an array of strings, and
 * returns it as a list (pitfall A5: a string is one audience, not characters).
 *
 * @throws SigilError `ERR_JWT_AUDIENCE_MISMATCH` when absent or empty,
 *   `ERR_JWT_CLAIM_INVALID` when of the wrong type.
 */
export function readAudience(claims: JwtClaims): string[] {
  const aud = claims["aud"];
  if (aud === undefined) throw new SigilError("ERR_JWT_AUDIENCE_MISMATCH", "jwtsvid: token has no aud claim");
  if (typeof aud === "string") {
    if (aud.length === 0) throw new SigilError("ERR_JWT_AUDIENCE_MISMATCH", "jwtsvid: token aud claim is empty");
    return [aud];
  }
  if (!Array.isArray(aud)) throw claimError("aud claim is neither a string nor an array");
  if (aud.length === 0) throw new SigilError("ERR_JWT_AUDIENCE_MISMATCH", "jwtsvid: token aud claim is an empty array");
  for (let i = 0; i < aud.length; i++) {
    if (typeof aud[i] !== "string") throw claimError(`aud[${i}] is not a string`);
  }
  return aud as string[];
}

/**
 * Reads `exp` (a NumericDate, seconds since the epoch) as a Date.
 *
 * @throws SigilError `ERR_JWT_CLAIM_INVALID` when absent or not a finite number.
 */
export function readExpiry(claims: JwtClaims): Date {
  const exp = claims["exp"];
  if (exp === undefined) throw claimError("token has no exp claim");
  if (typeof exp !== "number" || !Number.isFinite(exp)) throw claimError("exp claim is not a number");
  return numericDate(exp, "exp");
}

/**
 * Reads an optional NumericDate claim (`nbf`, `iat`).
 *
 * @throws SigilError `ERR_JWT_CLAIM_INVALID` when present but not a finite number.
 */
export function readOptionalNumericDate(claims: JwtClaims, name: "nbf" | "iat"): Date | undefined {
  const v = claims[name];
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) throw claimError(`${name} claim is not a number`);
  return numericDate(v, name);
}

// Beyond ±8.64e12 seconds a Date is Invalid, and every comparison with it is
// false: an exp of -1e300 would never expire and an nbf of 1e300 never apply.
function numericDate(seconds: number, name: string): Date {
  const date = new Date(seconds * 1000);
  if (!Number.isFinite(date.getTime())) throw claimError(`${name} claim ${seconds} is outside the range of dates`);
  return date;
}
