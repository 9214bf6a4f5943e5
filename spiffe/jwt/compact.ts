/**
 * JWS Compact Serialization (RFC 7515 §7.1): the only form a JWT-SVID may take
 * (JWT-1). Splits a token into its three base64url segments and decodes them;
 * encodes JSON values into segments for the signer.
 */
import { SigilError } from "../errors.js";

/** The three segments of a compact JWS, still base64url-encoded. */
export interface CompactJwsSegments {
  readonly header: string;
  readonly payload: string;
  readonly signature: string;
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;
const UTF8 = new TextDecoder("utf-8", { fatal: true });

function malformed(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_JWT_MALFORMED", `jwtsvid: ${message}`, cause === undefined ? undefined : { cause });
}

/**
 * Splits `token` into header, payload and signature segments. The JWS JSON
 * serialization (JWT-1) and 5-part JWE tokens (JWT-3) are refused by name.
 *
 * @throws SigilError `ERR_JWT_MALFORMED`.
 */
export function splitCompactJws(token: unknown): CompactJwsSegments {
  if (typeof token !== "string") throw malformed("token is not a string");
  if (token.length === 0) throw malformed("token is empty");
  if (token.trimStart().startsWith("{")) {
    throw malformed("token uses the JWS JSON serialization; only the compact serialization is accepted");
  }
  const parts = token.split(".");
  if (parts.length === 5) throw malformed("token has 5 parts, so it is a JWE; only a JWS is accepted");
  if (parts.length !== 3) throw malformed(`token has ${parts.length} parts; a compact JWS has 3`);
  const [header, payload, signature] = parts as [string, string, string];
  checkSegment(header, "header");
  checkSegment(payload, "payload");
  checkSegment(signature, "signature");
  if (header.length === 0) throw malformed("header segment is empty");
  if (payload.length === 0) throw malformed("payload segment is empty");
  return { header, payload, signature };
}

function checkSegment(segment: string, what: string): void {
  // Node's decoder skips bad characters silently, so check the alphabet first.
  if (!BASE64URL.test(segment) || segment.length % 4 === 1) throw malformed(`${what} segment is not unpadded base64url`);
}

/**
 * Decodes a header or payload segment into a JSON object.
 *
 * @throws SigilError `ERR_JWT_MALFORMED` when the bytes are not UTF-8 JSON or not an object.
 */
export function decodeJsonSegment(segment: string, what: "header" | "payload"): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(UTF8.decode(Buffer.from(segment, "base64url")));
  } catch (e) {
    throw malformed(`${what} is not UTF-8 JSON`, e);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw malformed(`${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

/** Decodes the signature segment into bytes. */
export function decodeSignatureSegment(segment: string): Buffer {
  return Buffer.from(segment, "base64url");
}

/** JSON-encodes `value` and base64url-encodes the UTF-8 bytes: one header or payload segment. */
export function encodeJsonSegment(value: unknown): string {
  return Buffer.from(JSON.stringify(value), "utf8").toString("base64url");
}
