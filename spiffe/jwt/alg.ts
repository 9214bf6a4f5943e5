/**
 * JWS algorithms a JWT-SVID may use (JWT-SVID §2.1, JWT-4) and how each maps to a
 * key type and to `crypto.sign` / `crypto.verify` options.
 */
import type { KeyObject } from "node:crypto";
import { SigilError } from "../errors.js";
import type { HashName, KeyType } from "../signer.js";

/** The only `alg` values a JWT-SVID may carry. `none`, `HS*` and `EdDSA` are not among them. */
export type JwtAlg = "RS256" | "RS384" | "RS512" | "ES256" | "ES384" | "ES512" | "PS256" | "PS384" | "PS512";

/** The allow-list, in the order the spec lists it. */
export const JWT_SVID_ALGS: readonly JwtAlg[] = Object.freeze([
  "RS256",
  "RS384",
  "RS512",
  "ES256",
  "ES384",
  "ES512",
  "PS256",
  "PS384",
  "PS512",
]);

/** Signature family of an algorithm. */
export type JwtAlgFamily = "ecdsa" | "rsa-pkcs1" | "rsa-pss";

/** What an algorithm needs from a key and from `crypto.sign`/`crypto.verify`. */
export interface JwtAlgParams {
  readonly family: JwtAlgFamily;
  readonly hash: HashName;
  /** For ECDSA: the Node curve name and the IEEE P1363 signature length (r||s). */
  readonly curve?: "prime256v1" | "secp384r1" | "secp521r1";
  readonly signatureBytes?: number;
}

const PARAMS: Readonly<Record<JwtAlg, JwtAlgParams>> = {
  RS256: { family: "rsa-pkcs1", hash: "sha256" },
  RS384: { family: "rsa-pkcs1", hash: "sha384" },
  RS512: { family: "rsa-pkcs1", hash: "sha512" },
  PS256: { family: "rsa-pss", hash: "sha256" },
  PS384: { family: "rsa-pss", hash: "sha384" },
  PS512: { family: "rsa-pss", hash: "sha512" },
  ES256: { family: "ecdsa", hash: "sha256", curve: "prime256v1", signatureBytes: 64 },
  ES384: { family: "ecdsa", hash: "sha384", curve: "secp384r1", signatureBytes: 96 },
  ES512: { family: "ecdsa", hash: "sha512", curve: "secp521r1", signatureBytes: 132 },
};

/** Smallest RSA modulus accepted for verification; smaller keys are refused as weak. */
export const MIN_RSA_MODULUS_BITS = 2048;

/** True when `alg` is on the JWT-SVID allow-list (exact, case-sensitive match). */
export function isJwtSvidAlg(alg: unknown): alg is JwtAlg {
  // Object.hasOwn keeps "toString"/"__proto__" from matching the table's prototype.
  return typeof alg === "string" && Object.hasOwn(PARAMS, alg);
}

/** Hash, family and curve for an allowed algorithm. */
export function jwtAlgParams(alg: JwtAlg): JwtAlgParams {
  return PARAMS[alg];
}

/**
 * The algorithm a signer of `keyType` uses: ES256 for P-256, ES384 for P-384,
 * RS256 for RSA (PS256 when `rsaPss` is set).
 */
export function defaultJwtAlgFor(keyType: KeyType, rsaPss = false): JwtAlg {
  switch (keyType) {
    case "ec-p256":
      return "ES256";
    case "ec-p384":
      return "ES384";
    case "rsa-2048":
    case "rsa-3072":
    case "rsa-4096":
      return rsaPss ? "PS256" : "RS256";
    case "ed25519":
      // Ed25519 keys sign transparency-log checkpoints only; JWT-SVIDs use ES*/RS*/PS*.
      throw new SigilError("ERR_JWT_ALG_NOT_ALLOWED", "jwt: an ed25519 key cannot sign JWT-SVIDs");
  }
}

/** True when a Signer of `keyType` can produce `alg` signatures. */
export function signerFitsAlg(keyType: KeyType, alg: JwtAlg): boolean {
  const p = PARAMS[alg];
  if (p.family === "ecdsa") return (keyType === "ec-p256" && alg === "ES256") || (keyType === "ec-p384" && alg === "ES384");
  return keyType.startsWith("rsa-");
}

/**
 * Checks that a public key can verify `alg` (an EC key on the alg's curve, or an
 * RSA key of at least {@link MIN_RSA_MODULUS_BITS} bits).
 *
 * @throws SigilError `ERR_JWT_ALG_NOT_ALLOWED` naming the key and the algorithm.
 */
export function assertKeyFitsAlg(key: KeyObject, alg: JwtAlg, kid: string): void {
  const p = PARAMS[alg];
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails;
  if (p.family === "ecdsa") {
    if (type === "ec" && details?.namedCurve === p.curve) return;
    const what = type === "ec" ? `an EC ${String(details?.namedCurve)} key` : `a ${String(type)} key`;
    throw new SigilError("ERR_JWT_ALG_NOT_ALLOWED", `jwtsvid: key "${kid}" is ${what}; it cannot verify ${alg}`);
  }
  // PS* may also be verified with an RSA-PSS-typed key; RS* needs a plain RSA key.
  const fits = type === "rsa" || (p.family === "rsa-pss" && type === "rsa-pss");
  if (!fits) throw new SigilError("ERR_JWT_ALG_NOT_ALLOWED", `jwtsvid: key "${kid}" is a ${String(type)} key; it cannot verify ${alg}`);
  const bits = details?.modulusLength ?? 0;
  if (bits < MIN_RSA_MODULUS_BITS) {
    throw new SigilError("ERR_JWT_ALG_NOT_ALLOWED", `jwtsvid: key "${kid}" is RSA-${bits}; at least ${MIN_RSA_MODULUS_BITS} bits are required`);
  }
}
