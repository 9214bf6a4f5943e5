/**
 * The issuing side of a certificate: an issuer certificate plus the Signer
 * holding its key, checked once when a template is prepared, and the validity
 * rule every issued certificate follows (it never outlives its issuer).
 */
import { createPublicKey } from "node:crypto";
import { SigilError, toSigilError } from "../errors.js";
import { parseSpiffeId, type TrustDomain } from "../id.js";
import type { Signer } from "../signer.js";
import { decodeCertificate, type DecodedCertificate } from "./decode-certificate.js";
import { keyIdentifier } from "./extensions.js";
import { signatureAlgorithmFor, type CertificateSignatureAlgorithm } from "./signature-algorithm.js";

/** A checked issuer: certificate, signer and what templates copy from it. */
export interface Issuer {
  readonly cert: DecodedCertificate;
  readonly signer: Signer;
  readonly algorithm: CertificateSignatureAlgorithm;
  /** The issuer's key identifier (its SKI, or computed from its key): the children's AKI. */
  readonly keyId: Uint8Array;
  /** The trust domain of the issuer's URI SAN `spiffe://<td>`, when it has one (upstream CAs may not, A3). */
  readonly trustDomain?: TrustDomain;
}

function buildError(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_X509_BUILD", `x509: ${message}`, cause === undefined ? undefined : { cause });
}

/**
 * Checks that `issuerCertDer` is a CA certificate (cA=true, keyCertSign when
 * KeyUsage is present) whose public key is `signer`'s, and that its URI SAN,
 * if any, is a trust-domain ID.
 *
 * @throws SigilError `ERR_X509_BUILD` naming the problem.
 */
export function loadIssuer(issuerCertDer: Uint8Array, signer: Signer): Issuer {
  let cert: DecodedCertificate;
  try {
    cert = decodeCertificate(issuerCertDer);
  } catch (e) {
    throw buildError("issuer certificate cannot be decoded", e);
  }
  if (cert.basicConstraints?.ca !== true) throw buildError("issuer certificate is not a CA (BasicConstraints cA is not true)");
  if (cert.keyUsage !== undefined && !cert.keyUsage.has("keyCertSign")) throw buildError("issuer certificate lacks keyCertSign");
  let matches: boolean;
  try {
    matches = createPublicKey({ key: Buffer.from(cert.spki), format: "der", type: "spki" }).equals(signer.publicKey);
  } catch (e) {
    throw toSigilError(e, "ERR_X509_BUILD", "x509: issuer certificate's public key cannot be loaded");
  }
  if (!matches) throw buildError(`issuer signer ${signer.id} does not hold the issuer certificate's key`);
  const uris = cert.subjectAltNames?.uris ?? [];
  let trustDomain: TrustDomain | undefined;
  if (uris.length > 1) throw buildError(`issuer certificate has ${uris.length} URI SANs`);
  if (uris[0] !== undefined) {
    let id;
    try {
      id = parseSpiffeId(uris[0]);
    } catch (e) {
      throw buildError(`issuer certificate's URI SAN ${JSON.stringify(uris[0])} is not a SPIFFE ID`, e);
    }
    if (!id.isTrustDomainId()) throw buildError(`issuer certificate's SPIFFE ID ${id.toString()} has a path (X509-8)`);
    trustDomain = id.trustDomain;
  }
  const base = {
    cert,
    signer,
    algorithm: signatureAlgorithmFor(signer.keyType),
    keyId: cert.subjectKeyId ?? keyIdentifier(cert.subjectPublicKeyBits),
  };
  return trustDomain === undefined ? base : { ...base, trustDomain };
}

/** A validity window after clamping. */
export interface Validity {
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/** Truncates to whole seconds: certificates carry no sub-second precision. */
export function toWholeSeconds(d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000);
}

/**
 * The validity of a certificate issued under `issuerNotAfter`: times truncated
 * to seconds, and `notAfter` clamped to the issuer's so that a certificate never
 * outlives its CA.
 *
 * @throws SigilError `ERR_X509_BUILD` for invalid dates, or when nothing of the window is left.
 */
export function clampValidity(notBefore: Date, notAfter: Date, issuerNotAfter: Date | undefined): Validity {
  if (!(notBefore instanceof Date) || Number.isNaN(notBefore.getTime()) || !(notAfter instanceof Date) || Number.isNaN(notAfter.getTime())) {
    throw buildError("notBefore and notAfter must be valid Dates");
  }
  const nb = toWholeSeconds(notBefore);
  let na = toWholeSeconds(notAfter);
  if (issuerNotAfter !== undefined && na.getTime() > issuerNotAfter.getTime()) na = issuerNotAfter;
  if (nb.getTime() > na.getTime()) {
    throw buildError(`notBefore ${nb.toISOString()} is after notAfter ${na.toISOString()}${na === issuerNotAfter ? " (clamped to the issuer's notAfter)" : ""}`);
  }
  return { notBefore: nb, notAfter: na };
}
