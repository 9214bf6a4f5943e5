/**
 * The result of reading a JWT-SVID: what a validator (or a tool) learned from it.
 */
import type { SpiffeId } from "../id.js";
import type { JwtClaims } from "./claims.js";
import type { JwtSvidHeader } from "./header.js";

/** A JWT-SVID read from a token. */
export interface JwtSvid {
  /** `sub`, parsed (always a workload ID, never a trust-domain ID). */
  readonly spiffeId: SpiffeId;
  /** Every claim of the payload as decoded, including ones Sigil does not interpret (JWT-15). */
  readonly claims: JwtClaims;
  readonly header: JwtSvidHeader;
  /** `exp` as a Date. */
  readonly expiresAt: Date;
  /** `aud` as a list, whether the token carried a string or an array (pitfall A5). */
  readonly audience: string[];
}
