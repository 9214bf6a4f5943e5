/**
 * Key templates: the endorsement keys of the TCG EK Credential Profile for
 * TPM Family 2.0 (low range, templates L-1 RSA 2048 and L-2 ECC P-256), and
 * the attestation key the `tpm` node attestor creates.
 *
 * The EK templates must be bit-exact: an EK is derived from the endorsement
 * seed and its template, so only the profile's template yields the key that
 * the manufacturer certified (and that `tpm2_createek` prints).
 */
import { TPM_ALG, TPM_ECC, TPMA_OBJECT, type TpmPublicArea } from "./structures.js";

/** The key types of the EKs (and matching AKs) the attestor supports. */
export type TpmKeyType = "rsa" | "ecc";

/**
 * The EK's authPolicy from the profile: PolicySecret(TPM_RH_ENDORSEMENT) with
 * SHA-256, so using the EK needs a policy session that proves the
 * endorsement hierarchy's authorization.
 */
export const EK_AUTH_POLICY_SHA256 = Uint8Array.from(Buffer.from("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa", "hex"));

/** NV indices where manufacturers store the low-range EK certificates (profile §2.2.1.5.1). */
export const EK_CERT_NV_INDEX: Readonly<Record<TpmKeyType, number>> = {
  rsa: 0x01c00002,
  ecc: 0x01c0000a,
};

/** fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted, decrypt (0x000300b2). */
export const EK_ATTRIBUTES =
  TPMA_OBJECT.fixedTPM |
  TPMA_OBJECT.fixedParent |
  TPMA_OBJECT.sensitiveDataOrigin |
  TPMA_OBJECT.adminWithPolicy |
  TPMA_OBJECT.restricted |
  TPMA_OBJECT.decrypt;

/** The profile's EK template for `type`. */
export function ekTemplate(type: TpmKeyType): TpmPublicArea {
  const common = {
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: EK_ATTRIBUTES,
    authPolicy: EK_AUTH_POLICY_SHA256,
    symmetric: { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB },
    scheme: { scheme: TPM_ALG.NULL },
  };
  if (type === "rsa") return { type: "rsa", ...common, rsa: { keyBits: 2048, exponent: 0, modulus: new Uint8Array(256) } };
  return { type: "ecc", ...common, ecc: { curve: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL }, x: new Uint8Array(32), y: new Uint8Array(32) } };
}

/**
 * Attributes an attestation key must have: a restricted signing key (it signs
 * only digests the TPM computed itself, such as quotes), generated inside
 * this TPM and unable to leave it, usable with an empty password.
 */
export const AK_ATTRIBUTES =
  TPMA_OBJECT.fixedTPM |
  TPMA_OBJECT.fixedParent |
  TPMA_OBJECT.sensitiveDataOrigin |
  TPMA_OBJECT.userWithAuth |
  TPMA_OBJECT.restricted |
  TPMA_OBJECT.sign;

/**
 * The attestation key template: RSA 2048 RSASSA-SHA256 for an RSA EK, ECC
 * P-256 ECDSA-SHA256 for an ECC EK, name algorithm SHA-256. Created as a
 * primary key in the endorsement hierarchy, so the same TPM derives the same
 * AK again from the same template (no key blob to keep between the payload
 * and the challenge).
 */
export function akTemplate(type: TpmKeyType): TpmPublicArea {
  const common = {
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: AK_ATTRIBUTES,
    authPolicy: new Uint8Array(0),
    symmetric: { algorithm: TPM_ALG.NULL },
  };
  if (type === "rsa") {
    return { type: "rsa", ...common, scheme: { scheme: TPM_ALG.RSASSA, hashAlg: TPM_ALG.SHA256 }, rsa: { keyBits: 2048, exponent: 0, modulus: new Uint8Array(0) } };
  }
  return {
    type: "ecc",
    ...common,
    scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 },
    ecc: { curve: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL }, x: new Uint8Array(0), y: new Uint8Array(0) },
  };
}
