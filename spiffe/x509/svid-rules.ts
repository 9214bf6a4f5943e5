/**
 * The X509-SVID profile rules a leaf and its signing certificates must meet,
 * shared by parsing (the workload's own SVID) and verification (a peer's).
 * SPIFFE X509-SVID §2, §4.3, §5.2; spec pitfalls A3 and A9.
 */
import { SigilError, type ErrorCode } from "../errors.js";
import { parseSpiffeId, type SpiffeId } from "../id.js";
import type { DecodedCertificate } from "./decode-certificate.js";

/**
 * Checks the leaf rules and returns the leaf's SPIFFE ID: exactly one URI SAN
 * (X509-1/X509-2), a `spiffe` URI with a non-root path (X509-21, which go-spiffe's
 * Verify skips, A9), cA not true (X509-20), KeyUsage present with
 * digitalSignature and without keyCertSign or cRLSign (X509-16, X509-20).
 *
 * @throws SigilError with `code`, the message naming the broken rule.
 */
export function checkLeaf(leaf: DecodedCertificate, code: ErrorCode): SpiffeId {
  const fail = (m: string): never => {
    throw new SigilError(code, `x509svid: leaf ${m}`);
  };
  const uris = leaf.subjectAltNames?.uris ?? [];
  if (uris.length !== 1) fail(`has ${uris.length} URI SANs; an X509-SVID has exactly one`);
  const uri = uris[0] as string;
  let id: SpiffeId;
  try {
    id = parseSpiffeId(uri);
  } catch (e) {
    throw new SigilError(code, `x509svid: leaf URI SAN ${JSON.stringify(uri.slice(0, 200))} is not a SPIFFE ID: ${(e as Error).message}`, { cause: e });
  }
  if (id.isTrustDomainId()) fail(`SPIFFE ID ${id.toString()} has no path (a trust-domain ID identifies a CA, not a workload)`);
  if (leaf.basicConstraints?.ca === true) fail("is a CA certificate (BasicConstraints cA=true)");
  const ku = leaf.keyUsage;
  if (ku === undefined) fail("has no KeyUsage extension");
  else {
    if (ku.has("keyCertSign")) fail("has KeyUsage keyCertSign");
    if (ku.has("cRLSign")) fail("has KeyUsage cRLSign");
    if (!ku.has("digitalSignature")) fail("lacks KeyUsage digitalSignature");
  }
  return id;
}

/**
 * Checks that a certificate which signs another one is a CA: BasicConstraints
 * cA=true and KeyUsage with keyCertSign. A URI SAN is *not* required (A3).
 *
 * @param what - names the certificate in messages (`"intermediate 1"`).
 * @param requireKeyUsage - false for trust anchors, which may predate KeyUsage.
 */
export function checkSigningCertificate(cert: DecodedCertificate, what: string, code: ErrorCode, requireKeyUsage = true): void {
  if (cert.basicConstraints?.ca !== true) {
    throw new SigilError(code, `x509svid: ${what} is not a CA certificate (BasicConstraints cA is not true)`);
  }
  if (cert.keyUsage === undefined ? requireKeyUsage : !cert.keyUsage.has("keyCertSign")) {
    throw new SigilError(code, `x509svid: ${what} lacks KeyUsage keyCertSign`);
  }
}
