/**
 * Structural check of a SubjectPublicKeyInfo before it is embedded verbatim in
 * a certificate. Importing the key (`createPublicKey`) costs more than signing
 * (spec/performance-limits.md), so the issuance path checks shape: one
 * SEQUENCE holding a known AlgorithmIdentifier and a whole-octet BIT STRING,
 * and for EC keys that the point lies on the curve (by arithmetic).
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

/** Short Weierstrass curves y² = x³ − 3x + b (mod p) of the EC keys Sigil embeds: prime, b, coordinate length. */
const CURVES = {
  "P-256": { p: (1n << 256n) - (1n << 224n) + (1n << 192n) + (1n << 96n) - 1n, b: 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn, size: 32 },
  "P-384": {
    p: (1n << 384n) - (1n << 128n) - (1n << 96n) + (1n << 32n) - 1n,
    b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
    size: 48,
  },
} as const;

const P384_ALGORITHM = Buffer.from(encodeSequence(encodeOid(ALG.ecPublicKey), encodeOid("1.3.132.0.34")));

function bigIntOf(bytes: Uint8Array): bigint {
  return bytes.length === 0 ? 0n : BigInt(`0x${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("hex")}`);
}

/**
 * Why `point` (the subjectPublicKey bits: 0x04 ‖ x ‖ y) is not a point of
 * `curve`, or undefined when it is. Both curves have cofactor 1, so a point on
 * the curve is in the prime-order group. An arithmetic check (about 1.5 µs)
 * rather than a key import (about 150 µs, more than the signature): a
 * certificate for a point off the curve names a key nobody holds, and a
 * relying party that does not check points can be led into invalid-curve
 * attacks with it.
 */
export function ecPointProblem(curve: keyof typeof CURVES, point: Uint8Array): string | undefined {
  const c = CURVES[curve];
  if (point.length !== 1 + 2 * c.size || point[0] !== 0x04) return `the ${curve} key is not an uncompressed point of ${1 + 2 * c.size} bytes`;
  const x = bigIntOf(point.subarray(1, 1 + c.size));
  const y = bigIntOf(point.subarray(1 + c.size));
  if (x >= c.p || y >= c.p) return `the ${curve} key has a coordinate not below the field prime`;
  if ((y * y - (x * x * x - 3n * x + c.b)) % c.p !== 0n) return `the ${curve} key is not a point on the curve`;
  return undefined;
}

/**
 * Returns the subjectPublicKey bits of an SPKI (for the key identifier).
 *
 * @throws SigilError `ERR_X509_BUILD` when `spki` is not a single SubjectPublicKeyInfo
 * for EC P-256/P-384, RSA or Ed25519.
 */
export function checkSubjectPublicKeyInfo(spki: Uint8Array): Uint8Array {
  // The common case, recognised by its bytes: the bits follow the BIT STRING's unused-bits octet.
  if (isP256Spki(spki)) {
    const point = spki.subarray(P256_SPKI_PREFIX.length - 1);
    const problem = ecPointProblem("P-256", point);
    if (problem) throw new SigilError("ERR_X509_BUILD", `x509: subject public key: ${problem}`);
    return point;
  }
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
  const problem = P384_ALGORITHM.equals(algorithm) ? ecPointProblem("P-384", bits) : undefined;
  if (problem) throw new SigilError("ERR_X509_BUILD", `x509: subject public key: ${problem}`);
  return bits;
}
