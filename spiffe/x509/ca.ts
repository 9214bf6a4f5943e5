/**
 * Signing-authority (CA) certificates of a trust domain: a self-signed root and
 * intermediates under it or under an upstream CA.
 *
 * Profile (SPIFFE X509-SVID §3.2, §4; spec pitfall A8): BasicConstraints
 * critical cA=true with optional pathLenConstraint; KeyUsage critical
 * keyCertSign|cRLSign and nothing else (digitalSignature is for leaves only);
 * one URI SAN, exactly `spiffe://<td>` (ID-19, ID-20, X509-7, X509-8),
 * critical when the subject is empty; SubjectKeyIdentifier and
 * AuthorityKeyIdentifier; no ExtendedKeyUsage (X509-18: optional, and an EKU on
 * a CA constrains its leaves in OpenSSL) and no name constraints (X509-13).
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import { SigilError, toSigilError } from "../errors.js";
import { SpiffeId, type TrustDomain } from "../id.js";
import type { Signer } from "../signer.js";
import {
  authorityKeyIdExtension,
  basicConstraintsExtension,
  keyIdentifier,
  keyUsageExtension,
  subjectAltNameExtension,
  subjectKeyIdExtension,
} from "./extensions.js";
import { clampValidity, loadIssuer } from "./issuer.js";
import { encodeName, EMPTY_NAME_DER, type DistinguishedName } from "./name.js";
import { encodeSerial, serialHexOf, randomSerial, type SerialNumber } from "./serial.js";
import { signatureAlgorithmFor } from "./signature-algorithm.js";
import { checkSubjectPublicKeyInfo } from "./subject-public-key.js";
import { TbsTemplate } from "./tbs-builder.js";

/** Options common to root and intermediate CAs. */
export interface CaCommonOptions {
  /**
   * The CA's trust domain. A SpiffeId is accepted only when it is the trust
   * domain's own ID (`spiffe://td`); an ID with a path is refused (X509-8).
   */
  readonly trustDomain: TrustDomain | SpiffeId;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** Default: 16 random octets. */
  readonly serial?: SerialNumber;
  /** Default: `O=Sigil, OU=<root|intermediate> CA, serialNumber=<serial hex>` (unique across rotations). */
  readonly subject?: DistinguishedName;
  /** pathLenConstraint; omitted by default (X509-11). */
  readonly pathLen?: number;
}

/** Options of {@link createRootCa}. */
export interface RootCaOptions extends CaCommonOptions {
  /** The CA's own key: the root is self-signed with it (ID-21). */
  readonly signer: Signer;
}

/** Options of {@link createIntermediateCa}. */
export interface IntermediateCaOptions extends CaCommonOptions {
  /** The intermediate's public key, as a KeyObject or SubjectPublicKeyInfo DER. */
  readonly subjectPublicKey: KeyObject | Uint8Array;
  /** The issuing CA's certificate (root, another intermediate, or an upstream CA). */
  readonly issuerCertDer: Uint8Array;
  /** The Signer holding the issuing CA's key. */
  readonly issuerSigner: Signer;
}

function buildError(message: string): SigilError {
  return new SigilError("ERR_X509_BUILD", `x509: ${message}`);
}

function caIdOf(td: TrustDomain | SpiffeId): SpiffeId {
  if (td instanceof SpiffeId) {
    if (!td.isTrustDomainId()) {
      throw buildError(`a CA's SPIFFE ID must be its trust domain's ID ${td.trustDomain.idString()}, not ${td.toString()} (X509-8)`);
    }
    return td;
  }
  return td.id();
}

function checkPathLen(pathLen: number | undefined): void {
  if (pathLen !== undefined && !(Number.isInteger(pathLen) && pathLen >= 0 && pathLen <= 255)) {
    throw buildError(`pathLen ${pathLen} must be an integer 0..255`);
  }
}

function spkiOf(key: KeyObject | Uint8Array): Uint8Array {
  if (key instanceof Uint8Array) return key;
  try {
    const pub = key.type === "private" ? createPublicKey(key) : key;
    return new Uint8Array(pub.export({ type: "spki", format: "der" }));
  } catch (e) {
    throw toSigilError(e, "ERR_X509_BUILD", "x509: subject public key cannot be exported");
  }
}

interface CaBuild {
  readonly options: CaCommonOptions;
  readonly kind: "root" | "intermediate";
  readonly spki: Uint8Array;
  readonly signer: Signer;
  /** Issuer Name; undefined for a self-signed root (issuer = subject). */
  readonly issuerName?: Uint8Array;
  /** Issuer key identifier; undefined for a root (its own). */
  readonly issuerKeyId?: Uint8Array;
  readonly issuerNotAfter?: Date;
}

function buildCa(b: CaBuild): Uint8Array {
  const o = b.options;
  const id = caIdOf(o.trustDomain);
  checkPathLen(o.pathLen);
  const serialBytes = o.serial ?? randomSerial();
  const serial = encodeSerial(serialBytes);
  const serialHex = serialHexOf(serial);
  const subject = encodeName(o.subject ?? { organization: "Sigil", organizationalUnit: `${b.kind} CA`, serialNumber: serialHex });
  const ownKeyId = keyIdentifier(checkSubjectPublicKeyInfo(b.spki));
  const validity = clampValidity(o.notBefore, o.notAfter, b.issuerNotAfter);
  const template = new TbsTemplate({
    signatureAlgorithm: signatureAlgorithmFor(b.signer.keyType),
    issuer: b.issuerName ?? subject,
    extensions: [
      basicConstraintsExtension(true, o.pathLen),
      keyUsageExtension(["keyCertSign", "cRLSign"]),
      subjectAltNameExtension({ uris: [id.toString()] }, subject.length === EMPTY_NAME_DER.length),
      subjectKeyIdExtension(ownKeyId),
      authorityKeyIdExtension(b.issuerKeyId ?? ownKeyId),
    ],
  });
  const tbs = template.build({ serial, ...validity, subject, spki: b.spki, extensions: [] });
  return template.sign(tbs, b.signer);
}

/**
 * Creates a self-signed root CA certificate for a trust domain, signed by the
 * key it certifies. Returns the certificate DER.
 *
 * @throws SigilError `ERR_X509_BUILD` (bad options, a CA ID with a path) or
 * `ERR_KEY_UNSUPPORTED` (a signer key type with no certificate profile).
 */
export function createRootCa(options: RootCaOptions): Uint8Array {
  try {
    return buildCa({ options, kind: "root", spki: spkiOf(options.signer.publicKey), signer: options.signer });
  } catch (e) {
    throw toSigilError(e, "ERR_X509_BUILD", "x509: building the root CA failed");
  }
}

/**
 * Creates an intermediate CA certificate signed by `issuerSigner`. The issuer
 * may belong to another trust domain (X509-9); it must be a CA whose
 * pathLenConstraint, if any, admits one more CA. `notAfter` is clamped to the
 * issuer's notAfter. Returns the certificate DER.
 *
 * @throws SigilError `ERR_X509_BUILD` naming the problem.
 */
export function createIntermediateCa(options: IntermediateCaOptions): Uint8Array {
  try {
    const issuer = loadIssuer(options.issuerCertDer, options.issuerSigner);
    if (issuer.cert.basicConstraints?.pathLen === 0) {
      throw buildError("the issuer's pathLenConstraint is 0: it cannot issue an intermediate CA (X509-11)");
    }
    return buildCa({
      options,
      kind: "intermediate",
      spki: spkiOf(options.subjectPublicKey),
      signer: options.issuerSigner,
      issuerName: issuer.cert.subject,
      issuerKeyId: issuer.keyId,
      issuerNotAfter: issuer.cert.notAfter,
    });
  } catch (e) {
    throw toSigilError(e, "ERR_X509_BUILD", "x509: building the intermediate CA failed");
  }
}
