/**
 * Carrying a JWT-SVID: `Authorization: Bearer <jwt>` over HTTP (JWT-SVID §5.2,
 * JWT-17) and the `authorization` metadata key over gRPC (§5.3, JWT-18).
 */
import { SigilError } from "../errors.js";

/** The header / metadata key, lowercase as HTTP/2 and gRPC metadata require. */
export const AUTHORIZATION_KEY = "authorization";

/** The `Authorization` value carrying `token`. */
export function bearerAuthorization(token: string): string {
  if (token.length === 0 || /\s/.test(token)) throw new SigilError("ERR_INVALID_ARGUMENT", "jwtsvid: a bearer token must be non-empty and contain no whitespace");
  return `Bearer ${token}`;
}

/**
 * The token in an `Authorization` value. The scheme is matched case-insensitively
 * (RFC 9110 §11.1).
 *
 * @throws SigilError `ERR_JWT_MALFORMED` when the value is not `Bearer <token>`.
 */
export function tokenFromAuthorization(value: string): string {
  if (typeof value !== "string") throw new SigilError("ERR_JWT_MALFORMED", "jwtsvid: authorization value is not a string");
  const m = /^([A-Za-z]+) +(\S+)\s*$/.exec(value);
  if (m === null || (m[1] as string).toLowerCase() !== "bearer") {
    throw new SigilError("ERR_JWT_MALFORMED", "jwtsvid: authorization value is not \"Bearer <token>\"");
  }
  return m[2] as string;
}
