/**
 * The certificate signature algorithm for each issuer key type: ECDSA with the
 * curve's matching hash (RFC 5758), PKCS#1 v1.5 SHA-256 for RSA (RFC 4055).
 */
import { encodeNull, encodeOid, encodeSequence } from "../der.js";
import { SigilError } from "../errors.js";
import type { KeyType, SignOptions } from "../signer.js";
import { ALG } from "./oids.js";

/** How a certificate signed by one key type is signed and labelled. */
export interface CertificateSignatureAlgorithm {
  /** Dotted OID, e.g. `1.2.840.10045.4.3.2`. */
  readonly oid: string;
  /** The AlgorithmIdentifier element, used in both the TBS and the outer certificate. */
  readonly algorithmIdentifier: Uint8Array;
  /** Options for `Signer.sign`. */
  readonly signOptions: SignOptions;
}

const P256: CertificateSignatureAlgorithm = {
  oid: ALG.ecdsaWithSha256,
  // RFC 5758 §3.2: ECDSA AlgorithmIdentifiers have absent parameters.
  algorithmIdentifier: encodeSequence(encodeOid(ALG.ecdsaWithSha256)),
  signOptions: { hash: "sha256", dsaEncoding: "der" },
};
const P384: CertificateSignatureAlgorithm = {
  oid: ALG.ecdsaWithSha384,
  algorithmIdentifier: encodeSequence(encodeOid(ALG.ecdsaWithSha384)),
  signOptions: { hash: "sha384", dsaEncoding: "der" },
};
const RSA_SHA256: CertificateSignatureAlgorithm = {
  oid: ALG.sha256WithRsa,
  // RFC 4055 §5: PKCS#1 v1.5 AlgorithmIdentifiers carry an explicit NULL.
  algorithmIdentifier: encodeSequence(encodeOid(ALG.sha256WithRsa), encodeNull()),
  signOptions: { hash: "sha256", rsaPadding: "pkcs1" },
};

/**
 * The signature algorithm a signer of `keyType` uses for certificates.
 *
 * @throws SigilError `ERR_KEY_UNSUPPORTED` for a key type with no certificate profile.
 */
export function signatureAlgorithmFor(keyType: KeyType): CertificateSignatureAlgorithm {
  switch (keyType) {
    case "ec-p256":
      return P256;
    case "ec-p384":
      return P384;
    case "rsa-2048":
    case "rsa-3072":
    case "rsa-4096":
      return RSA_SHA256;
    default:
      throw new SigilError("ERR_KEY_UNSUPPORTED", `x509: no certificate signature algorithm for key type ${String(keyType)}`);
  }
}
