/**
 * TPM2_MakeCredential done outside the TPM (TPM 2.0 Library, Part 1 §24,
 * "Credential Protection"): a secret is sealed to an EK so that only the TPM
 * holding that EK, and only for a key with the given name loaded in that same
 * TPM, can recover it with TPM2_ActivateCredential. The EK must be one of the
 * standard templates: RSA 2048 or ECC NIST P-256, name algorithm SHA-256,
 * symmetric AES-128-CFB.
 *
 * - RSA EK: the seed is random and sent encrypted with RSA-OAEP (SHA-256,
 *   label "IDENTITY\0").
 * - ECC EK: an ephemeral P-256 key agrees Z with the EK; the seed is
 *   KDFe(SHA-256, Z, "IDENTITY", ephemeral.x, ek.x) and the ephemeral public
 *   point is sent (TPMS_ECC_POINT).
 *
 * From the seed: symKey = KDFa(seed, "STORAGE", akName) encrypts
 * TPM2B_DIGEST(secret) with AES-128-CFB and a zero IV; hmacKey =
 * KDFa(seed, "INTEGRITY") makes the outer HMAC over encIdentity || akName.
 */
import { constants, createCipheriv, createECDH, createHash, createHmac, publicEncrypt, randomBytes, type KeyObject } from "node:crypto";
import { SigilError } from "../../../spiffe/errors.js";
import { publicToKeyObject, TPM_ECC, type TpmPublicArea } from "./tpm2/structures.js";

/** Length in bytes of the credential sealed per attempt. */
export const CREDENTIAL_SECRET_BYTES = 32;

const DIGEST_BYTES = 32; // SHA-256, the name algorithm of the standard EK templates
const AES_KEY_BITS = 128;

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function tpm2b(bytes: Uint8Array): Buffer {
  if (bytes.byteLength > 0xffff) throw new SigilError("ERR_INVALID_ARGUMENT", "tpm: a TPM2B buffer is longer than 65535 bytes");
  const b = Buffer.alloc(2);
  b.writeUInt16BE(bytes.byteLength);
  return Buffer.concat([b, bytes]);
}

// A label is used with its terminating zero octet (Part 1 §11.4.10.2).
function labelBytes(label: string): Buffer {
  return Buffer.from(label.endsWith("\0") ? label : `${label}\0`, "latin1");
}

/**
 * KDFa with SHA-256 (Part 1 §11.4.10.2): counter-mode HMAC,
 * HMAC(key, [i]32 || label || 0x00 || contextU || contextV || [bits]32),
 * truncated to `bits` (a multiple of 8).
 */
export function kdfa(key: Uint8Array, label: string, contextU: Uint8Array, contextV: Uint8Array, bits: number): Buffer {
  if (bits <= 0 || bits % 8 !== 0) throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: KDFa bits must be a positive multiple of 8, got ${bits}`);
  const bytes = bits / 8;
  const parts: Buffer[] = [];
  for (let i = 1, have = 0; have < bytes; i += 1, have += DIGEST_BYTES) {
    parts.push(createHmac("sha256", key).update(u32(i)).update(labelBytes(label)).update(contextU).update(contextV).update(u32(bits)).digest());
  }
  return Buffer.concat(parts).subarray(0, bytes);
}

/**
 * KDFe with SHA-256 (Part 1 §11.4.10.3, the NIST SP 800-56A concatenation
 * KDF): H([i]32 || Z || label || 0x00 || partyUInfo || partyVInfo), truncated
 * to `bits`.
 */
export function kdfe(z: Uint8Array, label: string, partyUInfo: Uint8Array, partyVInfo: Uint8Array, bits: number): Buffer {
  if (bits <= 0 || bits % 8 !== 0) throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: KDFe bits must be a positive multiple of 8, got ${bits}`);
  const bytes = bits / 8;
  const parts: Buffer[] = [];
  for (let i = 1, have = 0; have < bytes; i += 1, have += DIGEST_BYTES) {
    parts.push(createHash("sha256").update(u32(i)).update(z).update(labelBytes(label)).update(partyUInfo).update(partyVInfo).digest());
  }
  return Buffer.concat(parts).subarray(0, bytes);
}

/** A credential sealed to an EK for one AK name. */
export interface MadeCredential {
  /** The secret ActivateCredential must give back. */
  readonly secret: Buffer;
  /** TPM2B_ID_OBJECT contents: TPM2B_DIGEST(outer HMAC) || encIdentity (no outer size). */
  readonly credentialBlob: Buffer;
  /** TPM2B_ENCRYPTED_SECRET contents (no outer size): the OAEP ciphertext, or the ephemeral TPMS_ECC_POINT. */
  readonly encryptedSecret: Buffer;
}

/** Randomness, injected for tests. */
export interface CredentialDeps {
  /** Default `crypto.randomBytes`. */
  readonly randomBytes?: (n: number) => Buffer;
}

/** A P-256 coordinate as its fixed 32 bytes (a TPM may drop leading zero octets). */
export function p256Coordinate(b: Uint8Array): Buffer {
  if (b.byteLength > 32) throw new SigilError("ERR_KEY_UNSUPPORTED", "tpm: a P-256 coordinate is longer than 32 bytes");
  return Buffer.concat([Buffer.alloc(32 - b.byteLength), b]);
}

/** The fixed-size x and y of a P-256 public key. */
export function p256Point(key: KeyObject): { x: Buffer; y: Buffer } {
  const jwk = key.export({ format: "jwk" });
  if (jwk.kty !== "EC" || jwk.crv !== "P-256") throw new SigilError("ERR_KEY_UNSUPPORTED", `tpm: expected a P-256 key, got ${jwk.kty ?? "?"} ${jwk.crv ?? ""}`.trimEnd());
  return { x: p256Coordinate(Buffer.from(jwk.x ?? "", "base64url")), y: p256Coordinate(Buffer.from(jwk.y ?? "", "base64url")) };
}

/** An EK public key: a KeyObject, or its TPM public area (cheaper for ECC: no key object is made). */
export type CredentialEk = KeyObject | TpmPublicArea;

/** The EK as an RSA 2048 key object or a P-256 point, or why it is neither. */
function ekKind(ek: CredentialEk): { readonly rsa: KeyObject } | { readonly x: Buffer; readonly y: Buffer } {
  if (isKeyObject(ek)) {
    if (ek.asymmetricKeyType === "ec") return p256Point(ek);
    if (ek.asymmetricKeyType !== "rsa") throw new SigilError("ERR_KEY_UNSUPPORTED", `tpm: EK key type ${ek.asymmetricKeyType ?? "?"} is not supported (RSA 2048 or ECC P-256)`);
    return { rsa: ek };
  }
  if (ek.type === "ecc") {
    if (ek.ecc?.curve !== TPM_ECC.NIST_P256) throw new SigilError("ERR_KEY_UNSUPPORTED", "tpm: only ECC EKs on NIST P-256 are supported");
    return { x: p256Coordinate(ek.ecc.x), y: p256Coordinate(ek.ecc.y) };
  }
  return { rsa: publicToKeyObject(ek) };
}

function isKeyObject(ek: CredentialEk): ek is KeyObject {
  return typeof (ek as KeyObject).export === "function";
}

/**
 * Seals a fresh random secret to `ek` for the key named `akName`
 * (nameAlg || H(TPMT_PUBLIC)).
 *
 * @throws SigilError `ERR_KEY_UNSUPPORTED` when the EK is not RSA 2048 or P-256
 */
export function makeCredential(ek: CredentialEk, akName: Uint8Array, deps: CredentialDeps = {}): MadeCredential {
  const rand = deps.randomBytes ?? randomBytes;
  const secret = rand(CREDENTIAL_SECRET_BYTES);
  const kind = ekKind(ek);
  let seed: Buffer;
  let encryptedSecret: Buffer;
  if ("rsa" in kind) {
    const bits = kind.rsa.asymmetricKeyDetails?.modulusLength;
    if (bits !== 2048) throw new SigilError("ERR_KEY_UNSUPPORTED", `tpm: the RSA EK has ${bits ?? "?"} bits; only RSA 2048 EKs are supported`);
    seed = rand(DIGEST_BYTES);
    encryptedSecret = publicEncrypt({ key: kind.rsa, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256", oaepLabel: labelBytes("IDENTITY") }, seed);
  } else {
    // The ECDH class is a quarter faster than key objects here, and takes the EK point as it is.
    const eph = createECDH("prime256v1");
    const ephPoint = eph.generateKeys();
    let z: Buffer;
    try {
      z = eph.computeSecret(Buffer.concat([Uint8Array.of(4), kind.x, kind.y]));
    } catch (e) {
      throw new SigilError("ERR_KEY_UNSUPPORTED", "tpm: the ECC EK is not a point on P-256", { cause: e });
    }
    const ephX = ephPoint.subarray(1, 33);
    seed = kdfe(z, "IDENTITY", ephX, kind.x, DIGEST_BYTES * 8);
    encryptedSecret = Buffer.concat([tpm2b(ephX), tpm2b(ephPoint.subarray(33, 65))]);
  }
  const symKey = kdfa(seed, "STORAGE", akName, new Uint8Array(0), AES_KEY_BITS);
  const cipher = createCipheriv("aes-128-cfb", symKey, Buffer.alloc(16));
  const encIdentity = Buffer.concat([cipher.update(tpm2b(secret)), cipher.final()]);
  const hmacKey = kdfa(seed, "INTEGRITY", new Uint8Array(0), new Uint8Array(0), DIGEST_BYTES * 8);
  const outerHmac = createHmac("sha256", hmacKey).update(encIdentity).update(akName).digest();
  return { secret, credentialBlob: Buffer.concat([tpm2b(outerHmac), encIdentity]), encryptedSecret };
}

