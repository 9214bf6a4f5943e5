/**
 * The `Signer` handle: the only way code outside a key manager touches a private
 * key. Parsers and RPC handlers hold Signers, never key bytes. Keys are loaded
 * once into a `KeyObject` and never re-imported per signature.
 */
import { createPublicKey, generateKeyPairSync, randomBytes, sign as cryptoSign, type KeyObject } from "node:crypto";
import { SigilError } from "./errors.js";

/** Key types Sigil issues and accepts. */
export type KeyType = "ec-p256" | "ec-p384" | "rsa-2048" | "rsa-3072" | "rsa-4096" | "ed25519";

/** Hash for a signature. */
export type HashName = "sha256" | "sha384" | "sha512";

/** How to produce one signature: maps directly onto `crypto.sign` options. */
export interface SignOptions {
  readonly hash: HashName;
  /** ECDSA encoding: DER for X.509, IEEE P1363 (r||s) for JWS. Default DER. */
  readonly dsaEncoding?: "der" | "ieee-p1363";
  /** RSA padding: PKCS#1 v1.5 (RS*, X.509) or PSS (PS*). Default pkcs1. */
  readonly rsaPadding?: "pkcs1" | "pss";
}

/** A private key held by a key manager, reachable only through `sign`. */
export interface Signer {
  /** Stable key identifier (the JWT `kid`, the key manager's key ID). */
  readonly id: string;
  readonly keyType: KeyType;
  readonly publicKey: KeyObject;
  /** Signs `data` synchronously. Never exposes the key. */
  sign(data: Uint8Array, options: SignOptions): Uint8Array;
  /**
   * Signs several payloads off the calling thread, when the key manager runs
   * signing threads; resolves with one signature per payload, in order.
   * Absent when signing only happens in-line.
   */
  readonly signBatch?: (data: readonly Uint8Array[], options: SignOptions) => Promise<Uint8Array[]>;
}

/** The key type of a public or private `KeyObject`, or an error naming what it is. */
export function keyTypeOf(key: KeyObject): KeyType {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "ec") {
    if (d?.namedCurve === "prime256v1") return "ec-p256";
    if (d?.namedCurve === "secp384r1") return "ec-p384";
    throw new SigilError("ERR_KEY_UNSUPPORTED", `keys: unsupported EC curve ${String(d?.namedCurve)}`);
  }
  if (key.asymmetricKeyType === "rsa") {
    const bits = d?.modulusLength ?? 0;
    if (bits === 2048) return "rsa-2048";
    if (bits === 3072) return "rsa-3072";
    if (bits === 4096) return "rsa-4096";
    throw new SigilError("ERR_KEY_UNSUPPORTED", `keys: unsupported RSA modulus length ${bits}`);
  }
  if (key.asymmetricKeyType === "ed25519") return "ed25519";
  throw new SigilError("ERR_KEY_UNSUPPORTED", `keys: unsupported key type ${String(key.asymmetricKeyType)}`);
}

/** Generates a fresh key pair of the given type (private key stays a KeyObject). */
export function generateKeyPair(keyType: KeyType): { privateKey: KeyObject; publicKey: KeyObject } {
  switch (keyType) {
    case "ec-p256":
      return generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    case "ec-p384":
      return generateKeyPairSync("ec", { namedCurve: "secp384r1" });
    case "rsa-2048":
      return generateKeyPairSync("rsa", { modulusLength: 2048 });
    case "rsa-3072":
      return generateKeyPairSync("rsa", { modulusLength: 3072 });
    case "rsa-4096":
      return generateKeyPairSync("rsa", { modulusLength: 4096 });
    case "ed25519":
      return generateKeyPairSync("ed25519");
  }
}

/**
 * Wraps an in-memory private `KeyObject` as a {@link Signer}. The key is held in
 * a closure; the returned object has no property that reveals it.
 */
export function createKeyObjectSigner(privateKey: KeyObject, id?: string): Signer {
  if (privateKey.type !== "private") {
    throw new SigilError("ERR_KEY_UNSUPPORTED", "keys: a Signer needs a private key");
  }
  const keyType = keyTypeOf(privateKey);
  const publicKey = createPublicKey(privateKey);
  const isRsa = keyType.startsWith("rsa");
  const isEd25519 = keyType === "ed25519";
  return Object.freeze({
    id: id ?? randomBytes(16).toString("hex"),
    keyType,
    publicKey,
    sign(data: Uint8Array, options: SignOptions): Uint8Array {
      return isEd25519 ? cryptoSign(null, data, privateKey) : signWithKey(privateKey, isRsa, data, options);
    },
  });
}

/**
 * One signature with a private `KeyObject`: the body of every Signer. The
 * key managers' signing threads (plugins/keymanager/signing-pool.ts) repeat
 * these few lines in plain JavaScript; keep the two alike.
 */
function signWithKey(privateKey: KeyObject, isRsa: boolean, data: Uint8Array, options: SignOptions): Uint8Array {
  if (isRsa) {
    return cryptoSign(options.hash, data, {
      key: privateKey,
      ...(options.rsaPadding === "pss" ? { padding: 6 /* RSA_PKCS1_PSS_PADDING */, saltLength: -1 /* digest length */ } : {}),
    });
  }
  return cryptoSign(options.hash, data, { key: privateKey, dsaEncoding: options.dsaEncoding ?? "der" });
}

/** Generates a key and wraps it as a Signer (memory key manager, tests, agents' workload keys). */
export function generateSigner(keyType: KeyType = "ec-p256", id?: string): Signer {
  return createKeyObjectSigner(generateKeyPair(keyType).privateKey, id);
}
