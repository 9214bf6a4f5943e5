/**
 * A TPM in software for server-half tests and the bench: an EK and an AK held
 * as Node keys, answering the `tpm` attestor's challenge as a real TPM would
 * (ActivateCredential, then a quote over PCR values it is told). Not a TPM:
 * it proves nothing, it only lets the server's checks be driven fast and
 * bent (wrong secret, wrong nonce, other PCRs).
 */
import { constants, createDecipheriv, createHmac, createPublicKey, diffieHellman, generateKeyPairSync, privateDecrypt, sign, timingSafeEqual, type KeyObject } from "node:crypto";
import { kdfa, kdfe, p256Point } from "../../plugins/nodeattestor/tpm/credential.js";
import { encodeTpmAnswer, encodeTpmPayload, parseTpmChallenge, type PcrBank, type TpmChallenge } from "../../plugins/nodeattestor/tpm/payload.js";
import { encodePublic, encodeQuoteAttest, encodeSignature, hashAlgId, objectName, TPM_ALG, TPM_ECC, TPM_GENERATED_VALUE, TPM_ST, TPMA_OBJECT, type TpmPublicArea } from "../../plugins/nodeattestor/tpm/tpm2/structures.js";
import { createHash } from "node:crypto";

/** How an answer is bent, for refusal tests. */
export interface SoftAnswerOptions {
  /** Quote this nonce instead of the challenge's. */
  readonly nonce?: Uint8Array;
  /** Give back this secret instead of the activated one. */
  readonly secret?: Uint8Array;
  /** Quote these PCR values instead of the TPM's. */
  readonly pcrs?: Partial<Record<PcrBank, Record<number, string>>>;
  /** Report these values (after quoting the true ones). */
  readonly reportedPcrs?: Partial<Record<PcrBank, Record<string, string>>>;
}

/** A software TPM. */
export interface SoftTpm {
  readonly type: "rsa" | "ecc";
  readonly ekPublic: Uint8Array;
  readonly ekKey: KeyObject;
  readonly akPublic: Uint8Array;
  /** The attestation payload, with `ekCert` when given. */
  payload(ekCert?: Uint8Array): Uint8Array;
  /** Recovers the credential like TPM2_ActivateCredential (throws when the blob is not for this EK and AK). */
  activate(challenge: TpmChallenge): Buffer;
  /** Answers a challenge (encoded). */
  answer(challenge: Uint8Array, opts?: SoftAnswerOptions): Uint8Array;
}

const EK_ATTRS = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.adminWithPolicy | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;
const AK_ATTRS = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign;

function area(type: "rsa" | "ecc", key: KeyObject, ek: boolean, attrs?: number): TpmPublicArea {
  const jwk = key.export({ format: "jwk" });
  const base = {
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: attrs ?? (ek ? EK_ATTRS : AK_ATTRS),
    authPolicy: ek ? new Uint8Array(32).fill(0x83) : new Uint8Array(0),
    symmetric: ek ? { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB } : { algorithm: TPM_ALG.NULL },
  };
  if (type === "rsa") {
    return { type, ...base, scheme: ek ? { scheme: TPM_ALG.NULL } : { scheme: TPM_ALG.RSASSA, hashAlg: TPM_ALG.SHA256 }, rsa: { keyBits: 2048, exponent: 0, modulus: Buffer.from(jwk.n ?? "", "base64url") } };
  }
  const { x, y } = p256Point(key);
  return { type, ...base, scheme: ek ? { scheme: TPM_ALG.NULL } : { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 }, ecc: { curve: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL }, x, y } };
}

function keyPair(type: "rsa" | "ecc") {
  return type === "rsa" ? generateKeyPairSync("rsa", { modulusLength: 2048 }) : generateKeyPairSync("ec", { namedCurve: "P-256" });
}

/** PCR values every soft TPM starts with: PCR i of a bank is the byte i repeated. */
export function softPcrValue(bank: PcrBank, index: number): string {
  const len = bank === "sha1" ? 20 : bank === "sha256" ? 32 : 48;
  return Buffer.alloc(len, index).toString("hex");
}

/**
 * Makes a software TPM with a fresh EK and AK; `ek` reuses another soft TPM's
 * EK public key (a TPM claiming someone else's EK: it cannot activate).
 */
export function createSoftTpm(type: "rsa" | "ecc", opts: { readonly akAttributes?: number; readonly claimEkOf?: SoftTpm } = {}): SoftTpm {
  const ek = keyPair(type);
  const ak = keyPair(type);
  const ekPublic = opts.claimEkOf?.ekPublic ?? encodePublic(area(type, ek.publicKey, true));
  const ekKey = opts.claimEkOf?.ekKey ?? ek.publicKey;
  const akPublic = encodePublic(area(type, ak.publicKey, false, opts.akAttributes));
  const akName = objectName(akPublic);
  const activate = (c: TpmChallenge): Buffer => {
    let seed: Buffer;
    if (type === "rsa") {
      seed = privateDecrypt({ key: ek.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256", oaepLabel: Buffer.from("IDENTITY\0", "latin1") }, c.encryptedSecret);
    } else {
      const b = Buffer.from(c.encryptedSecret);
      const xl = b.readUInt16BE(0);
      const x = b.subarray(2, 2 + xl);
      const y = b.subarray(4 + xl, 4 + xl + b.readUInt16BE(2 + xl));
      const eph = createPublicKey({ key: { kty: "EC", crv: "P-256", x: x.toString("base64url"), y: y.toString("base64url") }, format: "jwk" });
      const z = diffieHellman({ privateKey: ek.privateKey, publicKey: eph });
      seed = kdfe(z, "IDENTITY", x, p256Point(ek.publicKey).x, 256);
    }
    const blob = Buffer.from(c.credentialBlob);
    const hl = blob.readUInt16BE(0);
    const hmac = blob.subarray(2, 2 + hl);
    const enc = blob.subarray(2 + hl);
    const want = createHmac("sha256", kdfa(seed, "INTEGRITY", new Uint8Array(0), new Uint8Array(0), 256)).update(enc).update(akName).digest();
    if (hmac.length !== want.length || !timingSafeEqual(hmac, want)) throw new Error("soft tpm: integrity check failed (TPM_RC_INTEGRITY)");
    const d = createDecipheriv("aes-128-cfb", kdfa(seed, "STORAGE", akName, new Uint8Array(0), 128), Buffer.alloc(16));
    const plain = Buffer.concat([d.update(enc), d.final()]);
    return plain.subarray(2, 2 + plain.readUInt16BE(0));
  };
  return {
    type,
    ekPublic,
    ekKey,
    akPublic,
    payload: (ekCert) => encodeTpmPayload({ ekPublic, ekCert, akPublic }),
    activate,
    answer(challengeBytes, o = {}) {
      const c = parseTpmChallenge(challengeBytes);
      let secret: Uint8Array;
      try {
        secret = o.secret ?? activate(c);
      } catch {
        secret = Buffer.alloc(32); // what a rogue agent that cannot activate can send
      }
      const digest = createHash("sha256");
      const reported: Partial<Record<PcrBank, Record<string, string>>> = {};
      for (const s of c.pcrs) {
        const values: Record<string, string> = {};
        for (const i of s.indices) {
          const v = o.pcrs?.[s.hash]?.[i] ?? softPcrValue(s.hash, i);
          digest.update(Buffer.from(v, "hex"));
          values[String(i)] = v;
        }
        reported[s.hash] = values;
      }
      const attest = encodeQuoteAttest({
        magic: TPM_GENERATED_VALUE,
        type: TPM_ST.ATTEST_QUOTE,
        qualifiedSigner: akName,
        extraData: o.nonce ?? c.nonce,
        clockInfo: { clock: 1000n, resetCount: 0, restartCount: 0, safe: true },
        firmwareVersion: 0n,
        quote: { pcrSelect: c.pcrs.map((s) => ({ hash: hashAlgId(s.hash), indices: s.indices })), pcrDigest: digest.digest() },
      });
      const signature =
        type === "rsa"
          ? encodeSignature({ sigAlg: TPM_ALG.RSASSA, hash: TPM_ALG.SHA256, rsa: sign("sha256", attest, ak.privateKey) })
          : (() => {
              const rs = sign("sha256", attest, { key: ak.privateKey, dsaEncoding: "ieee-p1363" });
              return encodeSignature({ sigAlg: TPM_ALG.ECDSA, hash: TPM_ALG.SHA256, ecc: { r: rs.subarray(0, 32), s: rs.subarray(32) } });
            })();
      return encodeTpmAnswer({ secret, attest, signature, pcrValues: o.reportedPcrs ?? reported });
    },
  };
}
