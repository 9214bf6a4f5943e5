/**
 * Who the TPM is: the server half's checks of the endorsement key (its public
 * area, its hash against the allow-list, its certificate against the
 * manufacturer CAs) and of the attestation key the agent made.
 */
import { createHash, X509Certificate, type KeyObject } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { encodeNull, encodeOid, encodeSequence, encodeTlv, encodeUnsignedInteger, TAG } from "../../../spiffe/der.js";
import { SigilError } from "../../../spiffe/errors.js";
import { p256Coordinate } from "./credential.js";
import { decodePublic, TPM_ALG, TPM_ECC, TPMA_OBJECT, type TpmPublic, type TpmPublicArea } from "./tpm2/structures.js";

function denied(message: string): SigilError {
  return new SigilError("ERR_PERMISSION_DENIED", `tpm: ${message}`);
}

/**
 * The EK's identity: lowercase hex SHA-256 of its DER SubjectPublicKeyInfo,
 * what `openssl pkey -pubin -outform der | sha256sum` prints for the PEM
 * `tpm2_createek -f pem` writes.
 */
export function ekPubHash(key: KeyObject): string {
  return createHash("sha256").update(key.export({ format: "der", type: "spki" })).digest("hex");
}

/**
 * The DER SubjectPublicKeyInfo of an RSA or P-256 public area, built
 * directly: the same bytes `KeyObject.export({ type: "spki" })` gives, at a
 * fraction of its cost (OpenSSL's encoder takes longer than the whole rest of
 * an RSA attestation on the server).
 */
export function publicAreaSpki(p: TpmPublicArea): Uint8Array {
  if (p.type === "rsa" && p.rsa !== undefined) {
    const e = p.rsa.exponent === 0 ? 65537 : p.rsa.exponent;
    const eBytes = Uint8Array.of(e >>> 24, (e >>> 16) & 0xff, (e >>> 8) & 0xff, e & 0xff);
    const rsaKey = encodeSequence(encodeUnsignedInteger(p.rsa.modulus), encodeUnsignedInteger(eBytes));
    return encodeSequence(encodeSequence(encodeOid("1.2.840.113549.1.1.1"), encodeNull()), encodeTlv(TAG.BIT_STRING, Uint8Array.of(0), rsaKey));
  }
  if (p.type === "ecc" && p.ecc !== undefined && p.ecc.curve === TPM_ECC.NIST_P256) {
    const point = Buffer.concat([Uint8Array.of(4), p256Coordinate(p.ecc.x), p256Coordinate(p.ecc.y)]);
    return encodeSequence(encodeSequence(encodeOid("1.2.840.10045.2.1"), encodeOid("1.2.840.10045.3.1.7")), encodeTlv(TAG.BIT_STRING, Uint8Array.of(0), point));
  }
  throw new SigilError("ERR_KEY_UNSUPPORTED", "tpm: only RSA and NIST P-256 public areas have an EK hash here");
}

/** {@link ekPubHash} of a public area, from {@link publicAreaSpki}. */
export function ekPubHashOfPublic(p: TpmPublicArea): string {
  return createHash("sha256").update(publicAreaSpki(p)).digest("hex");
}

/** The attributes every standard EK template sets. */
const EK_ATTRIBUTES = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;

/** The attributes the AK must have. */
export const AK_REQUIRED_ATTRIBUTES =
  TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign;

/**
 * A TPM makes an RSA key's modulus exactly keyBits long, with the exponent
 * 65537 (stored as 0) of the EK and AK templates; anything else was not made
 * by a TPM from those templates.
 */
function checkRsaKey(p: TpmPublic, what: "EK" | "AK"): void {
  if (p.rsa === undefined) return;
  const bits = modulusBits(p.rsa.modulus);
  if (bits !== p.rsa.keyBits) throw denied(`the ${what}'s RSA modulus is ${bits} bits, but its keyBits say ${p.rsa.keyBits}`);
  if (p.rsa.exponent !== 0 && p.rsa.exponent !== 65537) throw denied(`the ${what}'s RSA exponent ${p.rsa.exponent} is not 65537`);
}

function modulusBits(m: Uint8Array): number {
  let i = 0;
  while (i < m.length && m[i] === 0) i++;
  const top = m[i];
  return top === undefined ? 0 : (m.length - i - 1) * 8 + (32 - Math.clz32(top));
}

function attrNames(bits: number): string {
  return Object.entries(TPMA_OBJECT)
    .filter(([, bit]) => (bits & bit) !== 0)
    .map(([name]) => name)
    .join(", ");
}

/**
 * Decodes the EK's TPMT_PUBLIC and checks it is a standard storage EK that
 * MakeCredential can seal to: RSA 2048 or ECC P-256, name algorithm SHA-256,
 * restricted decryption with fixedTPM, fixedParent and sensitiveDataOrigin,
 * symmetric AES-128-CFB; an RSA modulus of exactly keyBits and exponent 65537.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` (undecodable) or `ERR_PERMISSION_DENIED` naming the property
 */
export function checkEkPublic(raw: Uint8Array): TpmPublic {
  let ek: TpmPublic;
  try {
    ek = decodePublic(raw);
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: ekPublic: ${(e as Error).message}`, { cause: e });
  }
  if (ek.type === "rsa" && ek.rsa?.keyBits !== 2048) throw denied(`the EK is RSA ${ek.rsa?.keyBits ?? "?"}; only RSA 2048 and ECC P-256 EKs are supported`);
  if (ek.type === "ecc" && ek.ecc?.curve !== TPM_ECC.NIST_P256) throw denied(`the EK's ECC curve 0x${(ek.ecc?.curve ?? 0).toString(16)} is not NIST P-256`);
  checkRsaKey(ek, "EK");
  if (ek.nameAlg !== TPM_ALG.SHA256) throw denied(`the EK's nameAlg 0x${ek.nameAlg.toString(16)} is not SHA-256`);
  const missing = EK_ATTRIBUTES & ~ek.objectAttributes;
  if (missing !== 0) throw denied(`the EK lacks the attributes ${attrNames(missing)} (not an endorsement key)`);
  if (ek.objectAttributes & TPMA_OBJECT.sign) throw denied("the EK is a signing key (not an endorsement key)");
  const s = ek.symmetric;
  if (s.algorithm !== TPM_ALG.AES || s.keyBits !== 128 || s.mode !== TPM_ALG.CFB) throw denied("the EK's symmetric algorithm is not AES-128-CFB");
  return ek;
}

/**
 * Decodes the AK's TPMT_PUBLIC and checks it: a restricted signing key that
 * never left the TPM (fixedTPM, fixedParent, sensitiveDataOrigin,
 * userWithAuth), not a decryption key nor adminWithPolicy, name algorithm SHA-256, and of the
 * EK's kind: RSA 2048 RSASSA-SHA256 for an RSA EK, ECC P-256 ECDSA-SHA256
 * for an ECC EK.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` (undecodable) or `ERR_PERMISSION_DENIED` naming the property
 */
export function checkAkPublic(raw: Uint8Array, ekType: "rsa" | "ecc"): TpmPublic {
  let ak: TpmPublic;
  try {
    ak = decodePublic(raw);
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: akPublic: ${(e as Error).message}`, { cause: e });
  }
  if (ak.nameAlg !== TPM_ALG.SHA256) throw denied(`the AK's nameAlg 0x${ak.nameAlg.toString(16)} is not SHA-256`);
  const missing = AK_REQUIRED_ATTRIBUTES & ~ak.objectAttributes;
  if (missing !== 0) throw denied(`the AK lacks the attributes ${attrNames(missing)}`);
  if (ak.objectAttributes & TPMA_OBJECT.decrypt) throw denied("the AK is also a decryption key");
  // ActivateCredential authorizes the AK in the ADMIN role. Without adminWithPolicy that takes
  // the AK's authValue, which a public area loaded alone (TPM2_LoadExternal) does not have.
  if (ak.objectAttributes & TPMA_OBJECT.adminWithPolicy) throw denied("the AK has adminWithPolicy (a policy could stand in for holding the key)");
  if (ak.type !== ekType) throw denied(`the AK is ${ak.type.toUpperCase()} but the EK is ${ekType.toUpperCase()}`);
  if (ak.type === "rsa") {
    if (ak.rsa?.keyBits !== 2048) throw denied(`the AK is RSA ${ak.rsa?.keyBits ?? "?"}, expected RSA 2048`);
    checkRsaKey(ak, "AK");
    if (ak.scheme.scheme !== TPM_ALG.RSASSA || ak.scheme.hashAlg !== TPM_ALG.SHA256) throw denied("the AK's scheme is not RSASSA with SHA-256");
  } else {
    if (ak.ecc?.curve !== TPM_ECC.NIST_P256) throw denied("the AK's curve is not NIST P-256");
    if (ak.scheme.scheme !== TPM_ALG.ECDSA || ak.scheme.hashAlg !== TPM_ALG.SHA256) throw denied("the AK's scheme is not ECDSA with SHA-256");
  }
  return ak;
}

/**
 * Reads manufacturer CA certificates from a PEM file, or from every `.pem`,
 * `.crt` and `.cer` file (PEM or DER) of a folder.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the file
 */
export function loadEkCaCertificates(path: string): X509Certificate[] {
  let files: string[];
  try {
    files = statSync(path).isDirectory()
      ? readdirSync(path)
          .filter((f) => /\.(pem|crt|cer|der)$/i.test(f))
          .sort()
          .map((f) => join(path, f))
      : [path];
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
  }
  const out: X509Certificate[] = [];
  for (const file of files) {
    let data: Buffer;
    try {
      data = readFileSync(file);
    } catch (e) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
    }
    const text = data.toString("latin1");
    const blocks = text.includes("-----BEGIN") ? (text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []) : [data];
    if (blocks.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: ${file} holds no PEM CERTIFICATE block`);
    for (const [i, block] of blocks.entries()) {
      try {
        out.push(new X509Certificate(block));
      } catch (e) {
        throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: ${file}: certificate ${i + 1} cannot be parsed: ${(e as Error).message}`, { cause: e });
      }
    }
  }
  if (out.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: ${path} holds no certificates (.pem, .crt, .cer or .der files)`);
  return out;
}

/** What the server learns from a verified EK certificate. */
export interface EkCertificateFacts {
  /** The issuer's distinguished name as an RFC 4514 string. */
  readonly issuer: string;
  /** The serial number, lowercase hex without leading zeros. */
  readonly serial: string;
}

/** Node's multi-line distinguished name (most significant RDN first) as an RFC 4514 string (least significant first). */
export function rfc4514(multiline: string): string {
  return multiline
    .split("\n")
    .filter((l) => l !== "")
    .reverse()
    .map((rdn) => rdn.split(" + ").join("+"))
    .join(",");
}

function checkValidity(cert: X509Certificate, what: string, now: Date): void {
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime())) throw denied(`${what} has unreadable validity dates`);
  if (now < from) throw denied(`${what} is not valid before ${from.toISOString()}`);
  if (now > to) throw denied(`${what} expired at ${to.toISOString()}`);
}

/** Longest chain walked from the EK certificate to a configured CA. */
const MAX_CHAIN = 8;

/**
 * Verifies the EK certificate: it parses, is within its validity dates,
 * certifies exactly the EK (`ekSpki`, its DER SubjectPublicKeyInfo), and chains to one of `cas` by signature, each
 * link's issuer a CA certificate within its own dates. Every configured
 * certificate is a trust anchor (a root or a manufacturer intermediate);
 * the walk goes on up through the configured set as far as it reaches.
 * EK certificates often carry critical extensions (subject alternative name
 * with TPM manufacturer attributes, `tcg-kp-EKCertificate`): they are not
 * refused for that.
 *
 * @throws SigilError `ERR_PERMISSION_DENIED` naming the problem
 */
export function verifyEkCertificate(der: Uint8Array, ekSpki: Uint8Array, cas: readonly X509Certificate[], now: Date): EkCertificateFacts {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(Buffer.from(der));
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: ekCert is not a DER X.509 certificate: ${(e as Error).message}`, { cause: e });
  }
  checkValidity(leaf, "the EK certificate", now);
  let certKey: Buffer;
  try {
    certKey = leaf.publicKey.export({ format: "der", type: "spki" });
  } catch (e) {
    throw new SigilError("ERR_PERMISSION_DENIED", `tpm: the EK certificate's public key cannot be read: ${(e as Error).message}`, { cause: e });
  }
  if (!certKey.equals(ekSpki)) throw denied("the EK certificate certifies another public key than the EK's");

  let cert = leaf;
  let anchored = false;
  for (let depth = 0; depth < MAX_CHAIN; depth++) {
    const issuer = cas.find((ca) => ca !== cert && ca.ca && cert.checkIssued(ca) && cert.verify(ca.publicKey));
    if (issuer === undefined) break;
    checkValidity(issuer, `EK CA certificate ${rfc4514(issuer.subject)}`, now);
    anchored = true;
    if (issuer.checkIssued(issuer)) break; // a self-signed root
    cert = issuer;
  }
  if (!anchored) throw denied(`the EK certificate (issuer ${rfc4514(leaf.issuer)}) is not signed by any configured EK CA certificate`);
  return { issuer: rfc4514(leaf.issuer), serial: leaf.serialNumber.toLowerCase().replace(/^0+(?=.)/, "") };
}
