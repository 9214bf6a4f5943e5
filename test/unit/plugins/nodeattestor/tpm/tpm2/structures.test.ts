import { createHash, generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { TpmReader, TpmWriter } from "../../../../../../plugins/nodeattestor/tpm/tpm2/marshal.js";
import {
  decodeAttest,
  decodePcrSelection,
  decodePublic,
  decodeSignature,
  encodePcrSelection,
  encodePublic,
  encodeQuoteAttest,
  encodeSignature,
  objectName,
  publicToKeyObject,
  TPM_ALG,
  TPM_ECC,
  TPM_GENERATED_VALUE,
  TPM_ST,
  TPMA_OBJECT,
  type TpmPublicArea,
} from "../../../../../../plugins/nodeattestor/tpm/tpm2/structures.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("TpmWriter / TpmReader", () => {
  it("round-trips integers and TPM2Bs big-endian", () => {
    const bytes = new TpmWriter().u8(0xab).u16(0x1234).u32(0xdeadbeef).i32(-2).u64(0x0102030405060708n).tpm2b(Uint8Array.of(9, 8)).finish();
    expect(hex(bytes)).toBe("ab" + "1234" + "deadbeef" + "fffffffe" + "0102030405060708" + "0002" + "0908");
    const r = new TpmReader(bytes, "test");
    expect([r.u8("a"), r.u16("b"), r.u32("c"), r.i32("d"), r.u64("e")]).toEqual([0xab, 0x1234, 0xdeadbeef, -2, 0x0102030405060708n]);
    expect(r.tpm2b("f")).toEqual(Uint8Array.of(9, 8));
    r.end();
  });

  it("grows past its initial buffer", () => {
    const big = new Uint8Array(5000).fill(7);
    const w = new TpmWriter().tpm2b(big).u8(1);
    expect(w.length).toBe(5003);
    expect(new TpmReader(w.finish(), "t").tpm2b("x")).toEqual(big);
  });

  it("refuses out-of-range values", () => {
    expect(() => new TpmWriter().u8(256)).toThrow(/out of range/);
    expect(() => new TpmWriter().u16(-1)).toThrow(/out of range/);
    expect(() => new TpmWriter().u32(2 ** 32)).toThrow(/out of range/);
    expect(() => new TpmWriter().tpm2b(new Uint8Array(65536))).toThrow(/exceeds/);
  });

  it("names the field where input is truncated, oversized or left over", () => {
    expect(() => new TpmReader(Uint8Array.of(0, 5, 1), "TPM2B_X").tpm2b("buffer")).toThrow(/TPM2B_X: truncated at buffer/);
    expect(() => new TpmReader(Uint8Array.of(0, 65), "S").tpm2b("digest", 64)).toThrow(/S: digest is 65 bytes, more than the 64/);
    const r = new TpmReader(Uint8Array.of(1, 2), "S");
    r.u8("a");
    expect(() => r.end()).toThrow(/1 unexpected trailing bytes/);
  });
});

const rsaArea = (modulus: Uint8Array): TpmPublicArea => ({
  type: "rsa",
  nameAlg: TPM_ALG.SHA256,
  objectAttributes: TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign,
  authPolicy: new Uint8Array(0),
  symmetric: { algorithm: TPM_ALG.NULL },
  scheme: { scheme: TPM_ALG.RSASSA, hashAlg: TPM_ALG.SHA256 },
  rsa: { keyBits: 2048, exponent: 0, modulus },
});

describe("TPMT_PUBLIC", () => {
  it("round-trips an RSA key and matches the TPM wire layout", () => {
    const area = rsaArea(Uint8Array.of(0xc0, 0xff, 0xee));
    const raw = encodePublic(area);
    expect(hex(raw)).toBe("0001" + "000b" + "00050072" + "0000" + "0010" + "0014000b" + "0800" + "00000000" + "0003c0ffee");
    const p = decodePublic(raw);
    expect(p).toEqual({ ...area, raw });
  });

  it("round-trips an ECC storage key with AES-128-CFB and NULL schemes", () => {
    const area: TpmPublicArea = {
      type: "ecc",
      nameAlg: TPM_ALG.SHA256,
      objectAttributes: 0x000300b2,
      authPolicy: new Uint8Array(32).fill(1),
      symmetric: { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB },
      scheme: { scheme: TPM_ALG.NULL },
      ecc: { curve: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL }, x: new Uint8Array(32).fill(2), y: new Uint8Array(32).fill(3) },
    };
    const raw = encodePublic(area);
    expect(hex(raw)).toContain("0006" + "0080" + "0043" + "0010" + "0003" + "0010");
    expect(decodePublic(raw)).toEqual({ ...area, raw });
  });

  it("refuses other object types, truncation and trailing bytes", () => {
    expect(() => decodePublic(Uint8Array.of(0, 8, 0, 0xb))).toThrow(/type 0x8 is not an RSA or ECC key/);
    const raw = encodePublic(rsaArea(Uint8Array.of(1)));
    expect(() => decodePublic(raw.subarray(0, raw.length - 1))).toThrow(/truncated at unique.rsa/);
    expect(() => decodePublic(Uint8Array.of(...raw, 0))).toThrow(/trailing/);
  });

  it("gives the public key of RSA and ECC areas as KeyObjects", () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey;
    const n = Buffer.from(rsa.export({ format: "jwk" }).n as string, "base64url");
    expect(publicToKeyObject(rsaArea(n)).equals(rsa)).toBe(true);

    const ec = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey;
    const jwk = ec.export({ format: "jwk" });
    const x = Buffer.from(jwk.x as string, "base64url");
    const y = Buffer.from(jwk.y as string, "base64url");
    const area: TpmPublicArea = {
      type: "ecc",
      nameAlg: TPM_ALG.SHA256,
      objectAttributes: 0,
      authPolicy: new Uint8Array(0),
      symmetric: { algorithm: TPM_ALG.NULL },
      scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 },
      ecc: { curve: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL }, x, y },
    };
    expect(publicToKeyObject(area).equals(ec)).toBe(true);
    expect(() => publicToKeyObject({ ...area, ecc: { ...area.ecc!, curve: 0x20 } })).toThrow(/curve 0x20 is not supported/);
    expect(() => publicToKeyObject({ ...area, ecc: { ...area.ecc!, x: new Uint8Array(32) } })).toThrow(/not a usable public key/);
  });

  it("names an object nameAlg || H(TPMT_PUBLIC)", () => {
    const raw = encodePublic(rsaArea(Uint8Array.of(1, 2, 3)));
    expect(hex(objectName(raw))).toBe("000b" + createHash("sha256").update(raw).digest("hex"));
    expect(() => objectName(Uint8Array.of(0, 1, 0, 0x99))).toThrow(/nameAlg 0x99/);
  });
});

describe("TPML_PCR_SELECTION", () => {
  it("encodes bitmaps of at least 3 bytes and decodes them back", () => {
    const sel = [
      { hash: TPM_ALG.SHA256, indices: [0, 1, 7, 16, 23] },
      { hash: TPM_ALG.SHA1, indices: [] },
    ];
    const bytes = encodePcrSelection(sel);
    expect(hex(bytes)).toBe("00000002" + "000b" + "03" + "830081" + "0004" + "03" + "000000");
    expect(decodePcrSelection(bytes)).toEqual(sel);
    expect(() => encodePcrSelection([{ hash: TPM_ALG.SHA256, indices: [256] }])).toThrow(/PCR index 256/);
    expect(() => decodePcrSelection(Uint8Array.of(0, 0, 1, 0))).toThrow(/256 banks/);
  });
});

describe("TPMS_ATTEST", () => {
  it("decodes a quote", () => {
    const a = {
      magic: TPM_GENERATED_VALUE,
      type: TPM_ST.ATTEST_QUOTE,
      qualifiedSigner: Uint8Array.of(0, 0xb, 1, 2),
      extraData: new Uint8Array(32).fill(9),
      clockInfo: { clock: 123456n, resetCount: 1, restartCount: 2, safe: true },
      firmwareVersion: 0x2000000000n,
      quote: { pcrSelect: [{ hash: TPM_ALG.SHA256, indices: [0, 1, 2] }], pcrDigest: new Uint8Array(32).fill(5) },
    };
    const bytes = encodeQuoteAttest(a);
    expect(hex(bytes.subarray(0, 6))).toBe("ff5443478018");
    expect(decodeAttest(bytes)).toEqual(a);
    expect(() => decodeAttest(bytes.subarray(0, bytes.length - 1))).toThrow(/TPMS_ATTEST: truncated at attested.quote.pcrDigest/);
    expect(() => decodeAttest(Uint8Array.of(...bytes, 0))).toThrow(/trailing/);
  });

  it("keeps other attestation types without a quote", () => {
    const bytes = encodeQuoteAttest({
      magic: TPM_GENERATED_VALUE,
      type: TPM_ST.ATTEST_CERTIFY,
      qualifiedSigner: new Uint8Array(0),
      extraData: new Uint8Array(0),
      clockInfo: { clock: 0n, resetCount: 0, restartCount: 0, safe: false },
      firmwareVersion: 0n,
      quote: { pcrSelect: [], pcrDigest: new Uint8Array(0) },
    });
    const a = decodeAttest(bytes);
    expect(a.type).toBe(TPM_ST.ATTEST_CERTIFY);
    expect(a.quote).toBeUndefined();
  });
});

describe("TPMT_SIGNATURE", () => {
  it("round-trips RSASSA and ECDSA signatures and refuses other schemes", () => {
    const rsa = { sigAlg: TPM_ALG.RSASSA, hash: TPM_ALG.SHA256, rsa: new Uint8Array(256).fill(1) };
    expect(decodeSignature(encodeSignature(rsa))).toEqual(rsa);
    const ecc = { sigAlg: TPM_ALG.ECDSA, hash: TPM_ALG.SHA256, ecc: { r: new Uint8Array(32).fill(2), s: new Uint8Array(31).fill(3) } };
    const bytes = encodeSignature(ecc);
    expect(hex(bytes.subarray(0, 6))).toBe("0018000b0020");
    expect(decodeSignature(bytes)).toEqual(ecc);
    expect(() => decodeSignature(Uint8Array.of(0, 0x10))).toThrow(/sigAlg 0x10 is not/);
  });
});
