/**
 * Sigil's one certificate-building code path. A {@link TbsTemplate} holds every
 * TBSCertificate field that is fixed for an issuer and profile (version,
 * signature algorithm, issuer Name, fixed extensions) already encoded;
 * {@link TbsTemplate.build} splices in the per-certificate fields with a single
 * allocation. CA certificates prepare a template and build once; leaf issuance
 * prepares once per issuer and profile and builds per SVID (the hot path, see
 * spec/performance-limits.md).
 */
import { concatDer, encodeBitString, encodeLength, encodeSequence, encodeTime, encodeTlv } from "../der.js";
import { toSigilError } from "../errors.js";
import type { Signer } from "../signer.js";
import type { CertificateSignatureAlgorithm } from "./signature-algorithm.js";

/** TBSCertificate fields fixed for a template. */
export interface TbsFixedFields {
  readonly signatureAlgorithm: CertificateSignatureAlgorithm;
  /** Issuer Name element (byte-exact copy of the issuer certificate's subject). */
  readonly issuer: Uint8Array;
  /** Complete Extension elements present in every certificate built from the template. */
  readonly extensions: readonly Uint8Array[];
}

/** TBSCertificate fields supplied per certificate. */
export interface TbsVariableFields {
  /** serialNumber INTEGER element (see `encodeSerial`). */
  readonly serial: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** Subject Name element. */
  readonly subject: Uint8Array;
  /** SubjectPublicKeyInfo element. */
  readonly spki: Uint8Array;
  /** Complete Extension elements appended after the fixed ones. */
  readonly extensions: readonly Uint8Array[];
}

// version [0] EXPLICIT INTEGER 2 (v3).
const VERSION_V3 = Uint8Array.of(0xa0, 0x03, 0x02, 0x01, 0x02);

/** A prepared TBSCertificate: fixed parts encoded once, variable parts spliced per build. */
export class TbsTemplate {
  readonly signatureAlgorithm: CertificateSignatureAlgorithm;
  readonly #algorithmAndIssuer: Uint8Array;
  readonly #fixedExtensions: Uint8Array;

  constructor(fixed: TbsFixedFields) {
    this.signatureAlgorithm = fixed.signatureAlgorithm;
    this.#algorithmAndIssuer = concatDer([fixed.signatureAlgorithm.algorithmIdentifier, fixed.issuer]);
    this.#fixedExtensions = concatDer(fixed.extensions);
  }

  /** Encodes a complete TBSCertificate. */
  build(v: TbsVariableFields): Uint8Array {
    let extLength = this.#fixedExtensions.length;
    for (const e of v.extensions) extLength += e.length;
    const extSeqHeader = header(0x30, extLength);
    const extWrapHeader = header(0xa3, extSeqHeader.length + extLength);
    const validity = encodeSequence(encodeTime(v.notBefore), encodeTime(v.notAfter));
    return encodeTlv(
      0x30,
      VERSION_V3,
      v.serial,
      this.#algorithmAndIssuer,
      validity,
      v.subject,
      v.spki,
      extWrapHeader,
      extSeqHeader,
      this.#fixedExtensions,
      ...v.extensions,
    );
  }

  /**
   * Signs a TBSCertificate from this template with `signer` and returns the
   * Certificate DER.
   *
   * @throws SigilError `ERR_X509_BUILD` when signing fails.
   */
  sign(tbs: Uint8Array, signer: Signer): Uint8Array {
    let signature: Uint8Array;
    try {
      signature = signer.sign(tbs, this.signatureAlgorithm.signOptions);
    } catch (e) {
      throw toSigilError(e, "ERR_X509_BUILD", "x509: signing the certificate failed");
    }
    return this.assemble(tbs, signature);
  }

  /** The Certificate DER of a TBSCertificate from this template and a signature made elsewhere. */
  assemble(tbs: Uint8Array, signature: Uint8Array): Uint8Array {
    return encodeTlv(0x30, tbs, this.signatureAlgorithm.algorithmIdentifier, encodeBitString(signature));
  }
}

function header(tag: number, length: number): Uint8Array {
  const len = encodeLength(length);
  const out = new Uint8Array(1 + len.length);
  out[0] = tag;
  out.set(len, 1);
  return out;
}
