/**
 * PKCS#10 certificate requests, the minimum an issuer needs: build one for a
 * key (agents, CLI), and take one in (server) with a DER walk, a signature
 * check and a key-type allow-list. Only the public key of a CSR is ever used:
 * SPIFFE ID, TTL and DNS names come from the registration entry.
 */
import { createPublicKey, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from "node:crypto";
import {
  decodeOid,
  encodeBitString,
  encodeExplicit,
  encodeNull,
  encodeOid,
  encodeSequence,
  encodeUnsignedInteger,
  expectTlv,
  readChildren,
  TAG,
} from "./der.js";
import { SigilError } from "./errors.js";
import { checkSubjectPublicKeyInfo, ecPointProblem, isP256Spki, P256_SPKI_PREFIX } from "./x509/subject-public-key.js";
import { keyTypeOf, type KeyType } from "./signer.js";

const OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2";
const OID_ECDSA_SHA384 = "1.2.840.10045.4.3.3";
const OID_ECDSA_SHA512 = "1.2.840.10045.4.3.4";
const OID_RSA_SHA256 = "1.2.840.113549.1.1.11";
const OID_RSA_SHA384 = "1.2.840.113549.1.1.12";
const OID_RSA_SHA512 = "1.2.840.113549.1.1.13";

const SIG_ALGS: Record<string, { hash: "sha256" | "sha384" | "sha512"; family: "ec" | "rsa" }> = {
  [OID_ECDSA_SHA256]: { hash: "sha256", family: "ec" },
  [OID_ECDSA_SHA384]: { hash: "sha384", family: "ec" },
  [OID_ECDSA_SHA512]: { hash: "sha512", family: "ec" },
  [OID_RSA_SHA256]: { hash: "sha256", family: "rsa" },
  [OID_RSA_SHA384]: { hash: "sha384", family: "rsa" },
  [OID_RSA_SHA512]: { hash: "sha512", family: "rsa" },
};

function csrError(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `csr: ${message}`, cause === undefined ? undefined : { cause });
}

/**
 * Builds a DER CSR for `privateKey` with an empty subject and no attributes
 * (an issuer takes only the key from it).
 */
export function buildCsr(privateKey: KeyObject): Uint8Array {
  const keyType = keyTypeOf(privateKey);
  const spki = new Uint8Array(createPublicKey(privateKey).export({ format: "der", type: "spki" }));
  const info = encodeSequence(
    encodeUnsignedInteger(new Uint8Array([0])),
    encodeSequence(), // empty subject Name
    spki,
    encodeExplicit(0), // attributes: [0] IMPLICIT SET OF, empty (0xa0 0x00)
  );
  const isEc = keyType.startsWith("ec");
  const hash = keyType === "ec-p384" ? "sha384" : "sha256";
  const algOid = isEc ? (hash === "sha384" ? OID_ECDSA_SHA384 : OID_ECDSA_SHA256) : OID_RSA_SHA256;
  const alg = isEc ? encodeSequence(encodeOid(algOid)) : encodeSequence(encodeOid(algOid), encodeNull());
  const sig = cryptoSign(hash, info, privateKey);
  return encodeSequence(info, alg, encodeBitString(new Uint8Array(sig)));
}

/** What a CSR yields: its public key, checked. */
export interface ParsedCsr {
  readonly publicKey: KeyObject;
  /** The SubjectPublicKeyInfo DER, to embed verbatim in a certificate. */
  readonly publicKeyDer: Uint8Array;
  readonly keyType: KeyType;
}

/**
 * Parses a DER CSR with a DER walk, checks its self-signature and that its
 * key type is allowed.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the problem (`csr: signature does not verify`).
 */
export function parseCsr(der: Uint8Array, allowedKeyTypes: readonly KeyType[]): ParsedCsr {
  if (!(der instanceof Uint8Array) || der.length === 0) throw csrError("empty");
  let info: Uint8Array;
  let spkiDer: Uint8Array;
  let algOid: string;
  let signature: Uint8Array;
  try {
    const outer = expectTlv(der, 0, TAG.SEQUENCE, "CertificationRequest");
    if (outer.end !== der.length) throw csrError(`${der.length - outer.end} trailing bytes after the request`);
    const [cri, alg, sig] = readChildren(der, outer);
    if (!cri || !alg || !sig || cri.tag !== TAG.SEQUENCE || alg.tag !== TAG.SEQUENCE || sig.tag !== TAG.BIT_STRING) {
      throw csrError("not a PKCS#10 CertificationRequest (expected info, algorithm, signature)");
    }
    const criChildren = readChildren(der, cri);
    const spki = criChildren[2];
    if (!spki || spki.tag !== TAG.SEQUENCE) throw csrError("request info has no subjectPublicKeyInfo");
    const algChildren = readChildren(der, alg);
    const oidEl = algChildren[0];
    if (!oidEl || oidEl.tag !== TAG.OID) throw csrError("signature algorithm has no OID");
    info = cri.raw;
    spkiDer = spki.raw;
    algOid = decodeOid(oidEl.content);
    if (sig.content[0] !== 0) throw csrError("signature BIT STRING has unused bits");
    signature = sig.content.subarray(1);
  } catch (e) {
    if (e instanceof SigilError && e.message.startsWith("csr:")) throw e;
    throw csrError(`malformed DER: ${(e as Error).message}`, e);
  }
  const alg = SIG_ALGS[algOid];
  if (!alg) throw csrError(`unsupported signature algorithm ${algOid}`);
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: Buffer.from(spkiDer), format: "der", type: "spki" });
  } catch (e) {
    throw csrError("subjectPublicKeyInfo is not a valid public key", e);
  }
  let keyType: KeyType;
  try {
    keyType = keyTypeOf(publicKey);
  } catch (e) {
    throw csrError(`key type is not allowed: ${(e as Error).message.replace(/^keys: /, "")}`, e);
  }
  if (!allowedKeyTypes.includes(keyType)) {
    throw csrError(`key type ${keyType} is not allowed (allowed: ${allowedKeyTypes.join(", ")})`);
  }
  if ((alg.family === "ec") !== keyType.startsWith("ec")) throw csrError(`signature algorithm ${algOid} does not fit a ${keyType} key`);
  checkEmbeddable(spkiDer, csrError);
  let ok: boolean;
  try {
    ok = cryptoVerify(alg.hash, info, publicKey, signature);
  } catch (e) {
    throw csrError("signature is malformed", e);
  }
  if (!ok) throw csrError("signature does not verify");
  return { publicKey, publicKeyDer: new Uint8Array(spkiDer), keyType };
}

const OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1";
const OID_P256 = "1.2.840.10045.3.1.7";
const OID_P384 = "1.3.132.0.34";
const OID_RSA = "1.2.840.113549.1.1.1";

/** A public key checked by structure only: its type and its DER, to embed verbatim. */
export interface CheckedPublicKey {
  readonly publicKeyDer: Uint8Array;
  readonly keyType: KeyType;
}

function spkiError(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `public key: ${message}`, cause === undefined ? undefined : { cause });
}

/**
 * Checks a bare SubjectPublicKeyInfo (the agent API's CSR-free form) by a DER
 * walk only: algorithm (as the certificate builder embeds it), curve or
 * modulus size and RSA exponent, the exact encoding length of the key, and
 * that an EC point lies on its curve (arithmetic, no key import: an import
 * costs more than signing). There is no proof of possession: the agent is
 * already authenticated by mTLS, and the key is embedded verbatim in the SVID.
 */
export function parseSubjectPublicKeyInfo(der: Uint8Array, allowedKeyTypes: readonly KeyType[]): CheckedPublicKey {
  let keyType: KeyType;
  if (isP256Spki(der)) {
    keyType = "ec-p256";
    if (!allowedKeyTypes.includes(keyType)) throw spkiError(`key type ${keyType} is not allowed (allowed: ${allowedKeyTypes.join(", ")})`);
    const problem = ecPointProblem("P-256", der.subarray(P256_SPKI_PREFIX.length - 1));
    if (problem) throw spkiError(problem);
    return { publicKeyDer: der, keyType };
  }
  try {
    if (!(der instanceof Uint8Array) || der.length === 0) throw spkiError("empty");
    const outer = expectTlv(der, 0, TAG.SEQUENCE, "SubjectPublicKeyInfo");
    if (outer.end !== der.length) throw spkiError(`${der.length - outer.end} trailing bytes after the key`);
    const [alg, bits] = readChildren(der, outer);
    if (!alg || !bits || alg.tag !== TAG.SEQUENCE || bits.tag !== TAG.BIT_STRING) throw spkiError("not a SubjectPublicKeyInfo (expected algorithm and key)");
    const [oid, params] = readChildren(der, alg);
    if (!oid || oid.tag !== TAG.OID) throw spkiError("algorithm has no OID");
    const algOid = decodeOid(oid.content);
    const key = bits.content;
    if (key[0] !== 0) throw spkiError("key BIT STRING has unused bits");
    if (algOid === OID_EC_PUBLIC_KEY) {
      if (!params || params.tag !== TAG.OID) throw spkiError("EC key without a named curve");
      const curve = decodeOid(params.content);
      const pointLength = curve === OID_P256 ? 65 : curve === OID_P384 ? 97 : 0;
      if (pointLength === 0) throw spkiError(`EC curve ${curve} is not supported`);
      if (key.length !== pointLength + 1 || key[1] !== 0x04) throw spkiError("EC key is not an uncompressed point of the curve's size");
      const problem = ecPointProblem(curve === OID_P256 ? "P-256" : "P-384", key.subarray(1));
      if (problem) throw spkiError(problem);
      keyType = curve === OID_P256 ? "ec-p256" : "ec-p384";
    } else if (algOid === OID_RSA) {
      const rsa = expectTlv(key, 1, TAG.SEQUENCE, "RSAPublicKey");
      if (rsa.end !== key.length) throw spkiError("RSA key has trailing bytes");
      const parts = readChildren(key, rsa);
      const [n, e] = parts;
      if (parts.length !== 2 || !n || !e || n.tag !== TAG.INTEGER || e.tag !== TAG.INTEGER) throw spkiError("RSA key is not (modulus, exponent)");
      // As Go's crypto/rsa accepts: an odd exponent from 3 to 2^31-1 (no padding octet needed below 2^31).
      const exponent = e.content.length > 4 || ((e.content[0] ?? 0) & 0x80) !== 0 ? 0 : e.content.reduce((v, b) => v * 256 + b, 0);
      if (exponent < 3 || exponent % 2 === 0) throw spkiError("RSA public exponent is not an odd number from 3 to 2^31-1");
      let first = 0;
      while (first < n.content.length - 1 && n.content[first] === 0) first++;
      const bitsLength = (n.content.length - first) * 8 - Math.clz32(n.content[first] as number) + 24;
      const t = bitsLength === 2048 ? "rsa-2048" : bitsLength === 3072 ? "rsa-3072" : bitsLength === 4096 ? "rsa-4096" : undefined;
      if (!t) throw spkiError(`RSA modulus of ${bitsLength} bits is not supported`);
      keyType = t;
    } else {
      throw spkiError(`algorithm ${algOid} is not supported`);
    }
  } catch (e) {
    if (e instanceof SigilError && e.message.startsWith("public key:")) throw e;
    throw spkiError(`not a DER SubjectPublicKeyInfo: ${(e as Error).message}`, e);
  }
  if (!allowedKeyTypes.includes(keyType)) throw spkiError(`key type ${keyType} is not allowed (allowed: ${allowedKeyTypes.join(", ")})`);
  checkEmbeddable(der, spkiError);
  return { publicKeyDer: der, keyType };
}

/**
 * Refuses a key the certificate builder would not embed (it takes the
 * SubjectPublicKeyInfo verbatim): exactly an AlgorithmIdentifier it knows, as
 * DER encodes it, and the key. Caught here it is the caller's InvalidArgument,
 * not an internal error at signing time.
 */
function checkEmbeddable(spki: Uint8Array, error: (message: string, cause?: unknown) => SigilError): void {
  try {
    checkSubjectPublicKeyInfo(spki);
  } catch (e) {
    throw error((e as Error).message, e);
  }
}
