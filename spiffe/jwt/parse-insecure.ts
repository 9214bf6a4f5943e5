/**
 * Reading a JWT-SVID without verifying it, for tooling (`sigil jwt inspect`,
 * logs). The name says it: nothing returned here may be trusted.
 */
import { readAudience, readExpiry } from "./claims.js";
import { decodeJwtSvid } from "./decode.js";
import type { JwtSvid } from "./jwt-svid.js";

/**
 * Decodes a JWT-SVID **without checking its signature, expiry or audience**.
 * The structure is still checked as in validation (compact form, allowed `alg`,
 * `typ`, `kid`, `sub` as a workload SPIFFE ID, `aud` and `exp` present), so a
 * token this rejects would also fail validation.
 *
 * @throws SigilError `ERR_JWT_MALFORMED`, `ERR_JWT_ALG_NOT_ALLOWED`,
 *   `ERR_JWT_CLAIM_INVALID` or `ERR_JWT_AUDIENCE_MISMATCH` (no `aud`).
 */
export function parseJwtSvidInsecure(token: string): JwtSvid {
  const { header, claims, spiffeId } = decodeJwtSvid(token);
  return { spiffeId, claims, header, audience: readAudience(claims), expiresAt: readExpiry(claims) };
}
