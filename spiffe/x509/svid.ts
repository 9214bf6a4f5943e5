/**
 * Parsing a workload's own X509-SVID: a chain (leaf first) and, optionally, its
 * private key, checked against the X509-SVID profile. This does not check the
 * chain against a bundle; peers are checked with `verifyX509Svid`.
 */
import { createPrivateKey, createPublicKey, X509Certificate, type KeyObject } from "node:crypto";
import { splitDerConcatenation } from "../der.js";
import { SigilError } from "../errors.js";
import type { SpiffeId } from "../id.js";
import { decodeCertificate, type DecodedCertificate } from "./decode-certificate.js";
import { checkLeaf, checkSigningCertificate } from "./svid-rules.js";

/** A parsed X509-SVID. */
export interface ParsedX509Svid {
  /** The leaf's SPIFFE ID. */
  readonly id: SpiffeId;
  /** The chain as parsed by Node, leaf first. */
  readonly certificates: readonly X509Certificate[];
  /** The chain's DER, leaf first (copies). */
  readonly certificateDers: readonly Uint8Array[];
  /** `certificates[0]`. */
  readonly leaf: X509Certificate;
  /** The private key, when one was given (it matches the leaf's public key). */
  readonly privateKey?: KeyObject;
}

function invalid(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_X509_SVID_INVALID", `x509svid: ${message}`, cause === undefined ? undefined : { cause });
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Splits and decodes a chain; shared with verification. */
export function decodeChain(chain: Uint8Array | readonly Uint8Array[], code: "ERR_X509_SVID_INVALID" | "ERR_X509_CHAIN_INVALID"): DecodedCertificate[] {
  if (!(chain instanceof Uint8Array) && !Array.isArray(chain)) {
    throw new SigilError(code, "x509svid: chain is neither concatenated DER nor a list of DER certificates");
  }
  let ders: readonly Uint8Array[];
  try {
    ders = chain instanceof Uint8Array ? splitDerConcatenation(chain) : chain;
  } catch (e) {
    throw new SigilError(code, `x509svid: chain is not concatenated DER: ${errText(e)}`, { cause: e });
  }
  if (ders.length === 0) throw new SigilError(code, "x509svid: chain is empty");
  return ders.map((der, i) => {
    try {
      return decodeCertificate(new Uint8Array(der));
    } catch (e) {
      throw new SigilError(code, `x509svid: certificate ${i} of the chain cannot be decoded: ${errText(e)}`, { cause: e });
    }
  });
}

/** Parses a DER certificate with Node, wrapping failures. */
export function nodeCertificate(der: Uint8Array, what: string, code: "ERR_X509_SVID_INVALID" | "ERR_X509_CHAIN_INVALID"): X509Certificate {
  try {
    return new X509Certificate(der);
  } catch (e) {
    throw new SigilError(code, `x509svid: ${what} is not a certificate Node can parse: ${errText(e)}`, { cause: e });
  }
}

/**
 * Parses an X509-SVID chain (concatenated DER or a list, leaf first) and an
 * optional unencrypted PKCS#8 private key.
 *
 * Enforced: leaf profile (exactly one URI SAN, `spiffe` ID with a non-root
 * path, not a CA, KeyUsage digitalSignature and no keyCertSign/cRLSign); every
 * following certificate is a CA with keyCertSign (URI SAN not required, A3);
 * the private key, when given, matches the leaf's public key.
 *
 * @throws SigilError `ERR_X509_SVID_INVALID` naming the problem.
 */
export function parseX509Svid(chain: Uint8Array | readonly Uint8Array[], privateKeyDer?: Uint8Array): ParsedX509Svid {
  const decoded = decodeChain(chain, "ERR_X509_SVID_INVALID");
  const leafDecoded = decoded[0] as DecodedCertificate;
  const id = checkLeaf(leafDecoded, "ERR_X509_SVID_INVALID");
  decoded.slice(1).forEach((c, i) => checkSigningCertificate(c, `certificate ${i + 1} of the chain`, "ERR_X509_SVID_INVALID"));
  const certificates = decoded.map((c, i) => nodeCertificate(c.der, i === 0 ? "the leaf" : `certificate ${i} of the chain`, "ERR_X509_SVID_INVALID"));
  const leaf = certificates[0] as X509Certificate;
  const base = { id, certificates, certificateDers: decoded.map((c) => c.der), leaf };
  if (privateKeyDer === undefined) return base;
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: Buffer.from(privateKeyDer), format: "der", type: "pkcs8" });
  } catch (e) {
    throw invalid(`private key is not unencrypted PKCS#8 DER: ${errText(e)}`, e);
  }
  let matches = false;
  try {
    matches = createPublicKey(privateKey).equals(leaf.publicKey);
  } catch (e) {
    throw invalid(`private key cannot be compared with the leaf's public key: ${errText(e)}`, e);
  }
  if (!matches) throw invalid("private key does not match the leaf's public key");
  return { ...base, privateKey };
}
