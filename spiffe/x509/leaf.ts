/**
 * X509-SVID leaf issuance from a prepared template: the hot path of the issuer.
 *
 * Fixed per template (encoded once): version, signature algorithm, issuer Name
 * (byte-exact copy of the issuer's subject), BasicConstraints critical cA=false
 * (X509-12), KeyUsage critical digitalSignature|keyEncipherment|keyAgreement
 * (X509-16; one KeyUsage for every key type, as SPIRE does, so one template
 * serves EC and RSA workload keys: keyEncipherment is meaningless but harmless
 * for EC), ExtendedKeyUsage serverAuth+clientAuth (X509-17), and the AKI.
 *
 * Spliced per SVID: serial, validity, subject, SubjectPublicKeyInfo, SAN (one
 * URI plus DNS names, X509-1/X509-3; critical when the subject is empty,
 * X509-5) and SKI. The SPKI is embedded verbatim after a structural check.
 *
 * Validity policy: an SVID never outlives its CA. A `notAfter` beyond the
 * issuer's is clamped to it (not refused); the leaf's real expiry is
 * `min(notAfter, template.issuerNotAfter)` at whole-second precision.
 */
import { SigilError, toSigilError } from "../errors.js";
import type { SpiffeId, TrustDomain } from "../id.js";
import type { Signer } from "../signer.js";
import {
  authorityKeyIdExtension,
  basicConstraintsExtension,
  extKeyUsageExtension,
  keyIdentifier,
  keyUsageExtension,
  subjectAltNameExtension,
  subjectKeyIdExtension,
} from "./extensions.js";
import { clampValidity, loadIssuer, type Issuer } from "./issuer.js";
import { encodeName, EMPTY_NAME_DER, type DistinguishedName } from "./name.js";
import { EKU } from "./oids.js";
import { encodeSerial, type SerialNumber } from "./serial.js";
import { checkSubjectPublicKeyInfo } from "./subject-public-key.js";
import { TbsTemplate } from "./tbs-builder.js";

/** Options of {@link prepareLeafTemplate}. */
export interface LeafTemplateOptions {
  /** The issuing CA's certificate (DER). */
  readonly issuerCertDer: Uint8Array;
  /** The Signer holding the issuing CA's key. */
  readonly issuerSigner: Signer;
  /**
   * The trust domain leaves are issued in. Defaults to the issuer's URI SAN;
   * required when the issuer has none (an upstream CA, pitfall A3), and must
   * agree with it otherwise.
   */
  readonly trustDomain?: TrustDomain;
}

/** A prepared leaf template: everything fixed for one issuer, encoded once. */
export interface LeafTemplate {
  /** The trust domain every leaf from this template belongs to. */
  readonly trustDomain: TrustDomain;
  /** The issuer's notAfter: leaves are clamped to it. */
  readonly issuerNotAfter: Date;
  /** @internal */
  readonly issuer: Issuer;
  /** @internal */
  readonly tbs: TbsTemplate;
}

/** Per-SVID fields of {@link issueLeaf}. */
export interface LeafOptions {
  /** The SVID's SPIFFE ID: in the template's trust domain, with a non-root path. */
  readonly spiffeId: SpiffeId;
  /** The workload's public key as SubjectPublicKeyInfo DER (embedded verbatim). */
  readonly subjectPublicKeyDer: Uint8Array;
  readonly serial: SerialNumber;
  readonly notBefore: Date;
  /** Clamped to the issuer's notAfter. */
  readonly notAfter: Date;
  /** DNS SANs added after the URI SAN (X509-3). */
  readonly dnsNames?: readonly string[];
  /** Subject; empty by default, which makes the SAN extension critical (X509-5). */
  readonly subject?: DistinguishedName;
}

function buildError(message: string): SigilError {
  return new SigilError("ERR_X509_BUILD", `x509svid: ${message}`);
}

const LEAF_EXTENSIONS = [
  basicConstraintsExtension(false),
  keyUsageExtension(["digitalSignature", "keyEncipherment", "keyAgreement"]),
  extKeyUsageExtension([EKU.serverAuth, EKU.clientAuth]),
];

const DNS_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
const DNS_NAME = new RegExp(`^(?:\\*\\.)?${DNS_LABEL}(?:\\.${DNS_LABEL})*$`);

/**
 * Prepares the template for leaves issued by one CA. Do this once per issuer
 * (and again when the CA rotates), not per SVID.
 *
 * @throws SigilError `ERR_X509_BUILD` when the issuer is not a usable CA, the
 * signer does not hold its key, or the trust domain is missing or disagrees.
 */
export function prepareLeafTemplate(options: LeafTemplateOptions): LeafTemplate {
  try {
    const issuer = loadIssuer(options.issuerCertDer, options.issuerSigner);
    const td = options.trustDomain ?? issuer.trustDomain;
    if (td === undefined) throw buildError("the issuer has no SPIFFE ID; pass trustDomain");
    if (issuer.trustDomain !== undefined && !issuer.trustDomain.equals(td)) {
      throw buildError(`trustDomain ${td.name} differs from the issuer's ${issuer.trustDomain.name}`);
    }
    const tbs = new TbsTemplate({
      signatureAlgorithm: issuer.algorithm,
      issuer: issuer.cert.subject,
      extensions: [...LEAF_EXTENSIONS, authorityKeyIdExtension(issuer.keyId)],
    });
    return Object.freeze({ trustDomain: td, issuerNotAfter: issuer.cert.notAfter, issuer, tbs });
  } catch (e) {
    throw toSigilError(e, "ERR_X509_BUILD", "x509svid: preparing the leaf template failed");
  }
}

/**
 * Issues one X509-SVID leaf from a prepared template, signed by the issuer's
 * Signer (ECDSA SHA-256 for P-256, SHA-384 for P-384, SHA-256 RSA PKCS#1 v1.5).
 * Returns the certificate DER.
 *
 * @throws SigilError `ERR_X509_BUILD` for a trust-domain ID without a path
 * (X509-4), an ID of another trust domain, a malformed SPKI or DNS name, a bad
 * serial, or a validity window that is empty after clamping.
 */
export function issueLeaf(template: LeafTemplate, options: LeafOptions): Uint8Array {
  const tbs = buildLeafTbs(template, options);
  try {
    return template.tbs.sign(tbs, template.issuer.signer);
  } catch (e) {
    throw toSigilError(e, "ERR_X509_BUILD", "x509svid: issuing the leaf failed");
  }
}

/**
 * The TBSCertificate {@link issueLeaf} would sign, for callers that sign
 * elsewhere (a batch on signing threads); finish with {@link finishLeaf}.
 *
 * @throws SigilError `ERR_X509_BUILD` as {@link issueLeaf} does.
 */
export function buildLeafTbs(template: LeafTemplate, options: LeafOptions): Uint8Array {
  try {
    const id = options.spiffeId;
    if (id.isTrustDomainId()) throw buildError(`${id.toString()} has no path; a leaf SVID needs one (X509-4)`);
    if (!id.memberOf(template.trustDomain)) {
      throw buildError(`${id.toString()} is not in the issuer's trust domain ${template.trustDomain.name}`);
    }
    const dnsNames = options.dnsNames ?? [];
    for (const name of dnsNames) {
      if (name.length > 253 || !DNS_NAME.test(name)) throw buildError(`DNS name ${JSON.stringify(name)} is not valid`);
    }
    const serial = encodeSerial(options.serial);
    const validity = clampValidity(options.notBefore, options.notAfter, template.issuerNotAfter);
    const keyBits = checkSubjectPublicKeyInfo(options.subjectPublicKeyDer);
    const subject = options.subject === undefined ? EMPTY_NAME_DER : encodeName(options.subject);
    return template.tbs.build({
      serial,
      ...validity,
      subject,
      spki: options.subjectPublicKeyDer,
      extensions: [
        subjectAltNameExtension({ uris: [id.toString()], dnsNames }, subject.length === EMPTY_NAME_DER.length),
        subjectKeyIdExtension(keyIdentifier(keyBits)),
      ],
    });
  } catch (e) {
    throw toSigilError(e, "ERR_X509_BUILD", "x509svid: issuing the leaf failed");
  }
}

/** The certificate DER of a TBSCertificate from {@link buildLeafTbs} and the issuer's signature over it. */
export function finishLeaf(template: LeafTemplate, tbs: Uint8Array, signature: Uint8Array): Uint8Array {
  return template.tbs.assemble(tbs, signature);
}
