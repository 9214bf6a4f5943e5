/**
 * JOSE header checks for a JWT-SVID, in the order the spec needs them: `alg`
 * against the allow-list before anything else (JWT-4, JWT-5), then `typ`
 * (JWT-7), `crit` (pitfall A13) and `kid` (pitfall A4).
 */
import { SigilError } from "../errors.js";
import { isJwtSvidAlg, type JwtAlg } from "./alg.js";

/** `typ` values a JWT-SVID may carry (JWT-7). */
export type JwtSvidTyp = "JWT" | "JOSE";

/** A checked JWT-SVID header. Other members are kept as decoded but never acted on. */
export interface JwtSvidHeader {
  readonly alg: JwtAlg;
  readonly kid: string;
  readonly typ?: JwtSvidTyp;
  readonly [member: string]: unknown;
}

/**
 * Checks a decoded header and returns it typed.
 *
 * @throws SigilError `ERR_JWT_ALG_NOT_ALLOWED` for an `alg` off the allow-list;
 *   `ERR_JWT_MALFORMED` for a bad `typ`, an unknown `crit` or a missing `kid`.
 */
export function checkJwtSvidHeader(header: Record<string, unknown>): JwtSvidHeader {
  const alg = header["alg"];
  if (alg === undefined) throw new SigilError("ERR_JWT_ALG_NOT_ALLOWED", "jwtsvid: header has no alg");
  if (!isJwtSvidAlg(alg)) {
    throw new SigilError(
      "ERR_JWT_ALG_NOT_ALLOWED",
      `jwtsvid: alg ${JSON.stringify(alg)} is not allowed; a JWT-SVID uses RS, ES or PS with 256, 384 or 512`,
    );
  }
  const typ = header["typ"];
  if (typ !== undefined && typ !== "JWT" && typ !== "JOSE") {
    throw new SigilError("ERR_JWT_MALFORMED", `jwtsvid: typ ${JSON.stringify(typ)} is not allowed; expected "JWT", "JOSE" or none`);
  }
  const crit = header["crit"];
  if (crit !== undefined) {
    // Sigil implements no JWS extensions, so every critical one is unknown (RFC 7515 §4.1.11).
    const names = Array.isArray(crit) ? crit.map((c) => JSON.stringify(c)).join(", ") : JSON.stringify(crit);
    throw new SigilError("ERR_JWT_MALFORMED", `jwtsvid: header marks unsupported extensions as critical: ${names}`);
  }
  const kid = header["kid"];
  if (kid === undefined) throw new SigilError("ERR_JWT_MALFORMED", "jwtsvid: header has no kid");
  if (typeof kid !== "string" || kid.length === 0) throw new SigilError("ERR_JWT_MALFORMED", "jwtsvid: header kid is not a non-empty string");
  return header as JwtSvidHeader;
}
