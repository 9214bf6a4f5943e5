/**
 * The structural half of reading a JWT-SVID, shared by validation and the
 * insecure tooling parser: compact form, header checks (alg first), payload and
 * `sub`. Nothing here looks at keys, signatures or time.
 */
import type { SpiffeId } from "../id.js";
import { readSubject, type JwtClaims } from "./claims.js";
import { decodeJsonSegment, splitCompactJws, type CompactJwsSegments } from "./compact.js";
import { checkJwtSvidHeader, type JwtSvidHeader } from "./header.js";

/** A JWT-SVID whose structure has been checked but whose signature has not. */
export interface DecodedJwtSvid {
  readonly segments: CompactJwsSegments;
  readonly header: JwtSvidHeader;
  readonly claims: JwtClaims;
  readonly spiffeId: SpiffeId;
}

/**
 * Splits and decodes `token`, checking the header before the payload is even
 * decoded (JWT-5), then reads `sub` as a workload SPIFFE ID (JWT-8).
 *
 * @throws SigilError `ERR_JWT_MALFORMED`, `ERR_JWT_ALG_NOT_ALLOWED` or `ERR_JWT_CLAIM_INVALID`.
 */
export function decodeJwtSvid(token: string): DecodedJwtSvid {
  const segments = splitCompactJws(token);
  const header = checkJwtSvidHeader(decodeJsonSegment(segments.header, "header"));
  const claims = decodeJsonSegment(segments.payload, "payload");
  const spiffeId = readSubject(claims);
  return { segments, header, claims, spiffeId };
}
