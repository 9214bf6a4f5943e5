/**
 * Structural check of a SubjectPublicKeyInfo before it is embedded verbatim in
 * a certificate. Importing the key (`createPublicKey`) costs more than signing
 * (spec/performance-limits.md), so the issuance path checks shape only: one
 * SEQUENCE holding a known AlgorithmIdentifier and a whole-octet BIT STRING.
 */
import { encodeNull, encodeOid, encodeSequence, expectTlv, TAG } from "../der.js";
import { SigilError } from "../errors.js";
import { ALG } from "./oids.js";

const KNOWN_ALGORITHMS: readonly Buffer[] = [
  encodeSequence(encodeOid(ALG.ecPublicKey), encodeOid("1.2.840.10045.3.1.7")), // P-256
  encodeSequence(encodeOid(ALG.ecPublicKey), encodeOid("1.3.132.0.34")), // P-384
  encodeSequence(encodeOid(ALG.rsaEncryption), encodeNull()),
  encodeSequence(encodeOid(ALG.ed25519)),
].map((b) => Buffer.from(b));

/**
 * Everything before the point of a P-256 SubjectPublicKeyInfo (SEQUENCE,
 * AlgorithmIdentifier ecPublicKey + prime256v1, BIT STRING header with no
 * unused bits, uncompressed-point marker). Every P-256 SPKI is these 27 bytes
 * and 64 bytes of coordinates, so a byte comparison recognises one without
 * walking the DER.
 */
export const P256_SPKI_PREFIX: Uint8Array = Uint8Array.from(
  Buffer.from("3059301306072a8648ce3d020106082a8648ce3d030107034200" + "04", "hex"),
);
/** Length of a P-256 SubjectPublicKeyInfo. */
export const P256_SPKI_LENGTH = P256_SPKI_PREFIX.length + 64;

/** True when `spki` is a P-256 SubjectPublicKeyInfo (an exact match of its fixed bytes and length). */
export function isP256Spki(spki: unknown): boolean {
  if (!(spki instanceof Uint8Array) || spki.length !== P256_SPKI_LENGTH) return false;
  for (let i = 0; i < P256_SPKI_PREFIX.length; i++) if ((spki as Uint8Array)[i] !== P256_SPKI_PREFIX[i]) return false;
  return true;
}

/**
 * Returns the subjectPublicKey bits of an SPKI (for the key identifier).
 *
 * @throws SigilError `ERR_X509_BUILD` when `spki` is not a single SubjectPublicKeyInfo
 * for EC P-256/P-384, RSA or Ed25519.
 */
export function checkSubjectPublicKeyInfo(spki: Uint8Array): Uint8Array {
  // The common case, recognised by its bytes: the bits follow the BIT STRING's unused-bits octet.
  if (isP256Spki(spki)) return spki.subarray(P256_SPKI_PREFIX.length - 1);
  let bits: Uint8Array;
  let algorithm: Uint8Array;
  try {
    const seq = expectTlv(spki, 0, TAG.SEQUENCE, "SubjectPublicKeyInfo");
    if (seq.end !== spki.length) throw new Error(`${spki.length - seq.end} bytes follow the SubjectPublicKeyInfo`);
    const alg = expectTlv(spki, seq.contentStart, TAG.SEQUENCE, "algorithm", seq.end);
    const bitString = expectTlv(spki, alg.end, TAG.BIT_STRING, "subjectPublicKey", seq.end);
    if (bitString.end !== seq.end) throw new Error("SubjectPublicKeyInfo has extra elements");
    if (bitString.content.length < 2 || bitString.content[0] !== 0) throw new Error("subjectPublicKey is empty or has unused bits");
    bits = bitString.content.subarray(1);
    algorithm = alg.raw;
  } catch (e) {
    throw new SigilError("ERR_X509_BUILD", `x509: subject public key is not a SubjectPublicKeyInfo: ${(e as Error).message}`, { cause: e });
  }
  if (!KNOWN_ALGORITHMS.some((k) => k.equals(algorithm))) {
    throw new SigilError("ERR_X509_BUILD", "x509: subject public key algorithm is not EC P-256/P-384, RSA or Ed25519");
  }
  return bits;
}
