import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { p256Point } from "../../../../../plugins/nodeattestor/tpm/credential.js";
import { checkAkPublic, checkEkPublic, ekPubHash, ekPubHashOfPublic, publicAreaSpki, rfc4514 } from "../../../../../plugins/nodeattestor/tpm/ek.js";
import { decodePublic, encodePublic, TPM_ALG, TPM_ECC, TPMA_OBJECT, type TpmPublicArea } from "../../../../../plugins/nodeattestor/tpm/tpm2/structures.js";
import { createSoftTpm } from "../../../../support/soft-tpm.js";

const base = { nameAlg: TPM_ALG.SHA256, objectAttributes: 0, authPolicy: new Uint8Array(0), symmetric: { algorithm: TPM_ALG.NULL }, scheme: { scheme: TPM_ALG.NULL } };

describe("EK public key hash", () => {
  it("builds the same SubjectPublicKeyInfo as Node's encoder for RSA (default and explicit exponents) and P-256 keys", () => {
    for (let i = 0; i < 8; i++) {
      const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048, publicExponent: i % 2 === 0 ? 65537 : 3 });
      const jwk = publicKey.export({ format: "jwk" });
      const e = Buffer.from(jwk.e ?? "", "base64url").readUIntBE(0, Buffer.from(jwk.e ?? "", "base64url").length);
      const area: TpmPublicArea = { type: "rsa", ...base, rsa: { keyBits: 2048, exponent: e === 65537 && i % 4 === 0 ? 0 : e, modulus: Buffer.from(jwk.n ?? "", "base64url") } };
      expect(Buffer.from(publicAreaSpki(area)).equals(publicKey.export({ format: "der", type: "spki" }))).toBe(true);
      expect(ekPubHashOfPublic(area)).toBe(ekPubHash(publicKey));
    }
    for (let i = 0; i < 64; i++) {
      const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const { x, y } = p256Point(publicKey);
      // A TPM may send a coordinate without its leading zero octets.
      let sx = 0;
      while (sx < x.length - 1 && x[sx] === 0) sx++;
      const area: TpmPublicArea = { type: "ecc", ...base, ecc: { curve: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL }, x: x.subarray(sx), y } };
      expect(ekPubHashOfPublic(area)).toBe(ekPubHash(publicKey));
    }
  });

  it("refuses curves other than P-256", () => {
    const area: TpmPublicArea = { type: "ecc", ...base, ecc: { curve: TPM_ECC.NIST_P384, kdf: { scheme: TPM_ALG.NULL }, x: new Uint8Array(48), y: new Uint8Array(48) } };
    expect(() => publicAreaSpki(area)).toThrow(/only RSA and NIST P-256/);
  });
});

describe("rfc4514", () => {
  it("turns Node's multi-line name (most significant first) into an RFC 4514 string (least significant first)", () => {
    expect(rfc4514("C=US\nO=Example TPM Inc.\nCN=EK CA 1")).toBe("CN=EK CA 1,O=Example TPM Inc.,C=US");
    expect(rfc4514("O=A\nCN=x + serialNumber=7")).toBe("CN=x+serialNumber=7,O=A");
  });
});

describe("EK and AK public area checks", () => {
  it("accepts the agent's EK and AK templates and refuses an EK without the endorsement attributes or of another kind", () => {
    const tpm = createSoftTpm("rsa");
    expect(checkEkPublic(tpm.ekPublic).type).toBe("rsa");
    expect(checkAkPublic(tpm.akPublic, "rsa").type).toBe("rsa");
    expect(() => checkAkPublic(tpm.akPublic, "ecc")).toThrow(/the AK is RSA but the EK is ECC/);
    const ek = decodePublic(tpm.ekPublic);
    const signing = encodePublic({ ...ek, objectAttributes: (ek.objectAttributes & ~TPMA_OBJECT.restricted) | TPMA_OBJECT.sign });
    expect(() => checkEkPublic(signing)).toThrow(/the EK lacks the attributes restricted/);
    const noAes = encodePublic({ ...ek, symmetric: { algorithm: TPM_ALG.AES, keyBits: 256, mode: TPM_ALG.CFB } });
    expect(() => checkEkPublic(noAes)).toThrow(/not AES-128-CFB/);
    expect(() => checkEkPublic(Uint8Array.of(0, 1, 2))).toThrow(/ekPublic:/);
    const akAsEk = tpm.akPublic;
    expect(() => checkEkPublic(akAsEk)).toThrow(/lacks the attributes decrypt/);
  });
});
