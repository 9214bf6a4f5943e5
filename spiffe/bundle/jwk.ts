/**
 * Public keys as JWK members (RFC 7517/7518): the `kty` and key parameters
 * (`crv`, `x`, `y` for EC; `n`, `e` for RSA) and nothing else, so producers add
 * no parameter the SPIFFE bundle spec does not define (BUNDLE-11).
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import { SigilError } from "../errors.js";
import { formatJsonValue, type JsonObject } from "./json.js";

/** The key members of an EC or RSA public JWK. */
export type JwkKeyParams =
  | { readonly kty: "EC"; readonly crv: JwkCurve; readonly x: string; readonly y: string }
  | { readonly kty: "RSA"; readonly n: string; readonly e: string };

/** EC curves a bundle key may use. */
export type JwkCurve = "P-256" | "P-384" | "P-521";

/** `kty` values Sigil understands; JWKs with any other `kty` are skipped (BUNDLE-9). */
export const SUPPORTED_KTYS: readonly string[] = Object.freeze(["EC", "RSA"]);

const CURVES: readonly string[] = ["P-256", "P-384", "P-521"];
const B64URL = /^[A-Za-z0-9_-]+$/;

/**
 * The JWK key members of a public key (a private key's public half is used).
 *
 * @throws SigilError `ERR_KEY_UNSUPPORTED` for anything but EC P-256/384/521 and RSA.
 */
export function publicKeyToJwkParams(key: KeyObject): JwkKeyParams {
  const pub = key.type === "private" ? createPublicKey(key) : key;
  if (pub.asymmetricKeyType !== "ec" && pub.asymmetricKeyType !== "rsa") {
    throw new SigilError("ERR_KEY_UNSUPPORTED", `bundle: a ${String(pub.asymmetricKeyType)} key cannot be published in a bundle; only EC and RSA`);
  }
  const jwk = pub.export({ format: "jwk" });
  if (jwk.kty === "EC") {
    if (typeof jwk.crv !== "string" || !CURVES.includes(jwk.crv) || jwk.x === undefined || jwk.y === undefined) {
      throw new SigilError("ERR_KEY_UNSUPPORTED", `bundle: EC curve ${String(jwk.crv)} cannot be published in a bundle`);
    }
    return { kty: "EC", crv: jwk.crv as JwkCurve, x: jwk.x, y: jwk.y };
  }
  if (jwk.n === undefined || jwk.e === undefined) throw new SigilError("ERR_KEY_UNSUPPORTED", "bundle: RSA key export lacks n or e");
  return { kty: "RSA", n: jwk.n, e: jwk.e };
}

/** Why a JWK's key members could not be used. `unsupported` JWKs are skipped; `invalid` ones are errors. */
export type JwkKeyProblem = { readonly kind: "unsupported" | "invalid"; readonly message: string };

/**
 * Reads the key members of a JWK (whose `kty` is EC or RSA) into a public key.
 * Returns a problem instead of throwing so callers can decide between skipping
 * and failing.
 */
export function jwkToPublicKey(jwk: JsonObject): KeyObject | JwkKeyProblem {
  const kty = jwk["kty"];
  if (kty === "EC") {
    const { crv, x, y } = jwk;
    if (typeof crv !== "string") return { kind: "invalid", message: "crv is missing or not a string" };
    if (!CURVES.includes(crv)) return { kind: "unsupported", message: `curve ${JSON.stringify(crv)} is not supported` };
    if (typeof x !== "string" || !B64URL.test(x)) return { kind: "invalid", message: "x is missing or not base64url" };
    if (typeof y !== "string" || !B64URL.test(y)) return { kind: "invalid", message: "y is missing or not base64url" };
    return importJwk({ kty, crv, x, y });
  }
  if (kty === "RSA") {
    const { n, e } = jwk;
    if (typeof n !== "string" || !B64URL.test(n)) return { kind: "invalid", message: "n is missing or not base64url" };
    if (typeof e !== "string" || !B64URL.test(e)) return { kind: "invalid", message: "e is missing or not base64url" };
    return importJwk({ kty, n, e });
  }
  return { kind: "unsupported", message: `kty ${formatJsonValue(kty)} is not supported` };
}

/** True when the JWK has any of the key members (so they must match an `x5c` certificate). */
export function hasKeyParams(jwk: JsonObject): boolean {
  return ["crv", "x", "y", "n", "e"].some((m) => jwk[m] !== undefined);
}

function importJwk(jwk: Record<string, string>): KeyObject | JwkKeyProblem {
  try {
    return createPublicKey({ key: jwk, format: "jwk" });
  } catch (e) {
    // OpenSSL refuses points off the curve and malformed moduli here.
    return { kind: "invalid", message: `key parameters do not form a valid public key (${e instanceof Error ? e.message : String(e)})` };
  }
}

/** True when two public keys are the same key (compared as SubjectPublicKeyInfo DER). */
export function samePublicKey(a: KeyObject, b: KeyObject): boolean {
  return a.export({ format: "der", type: "spki" }).equals(b.export({ format: "der", type: "spki" }));
}
