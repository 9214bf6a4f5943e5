import { describe, expect, it } from "vitest";
import {
  encodeTpmAnswer,
  encodeTpmChallenge,
  encodeTpmPayload,
  MAX_TPM_PAYLOAD_BYTES,
  parseTpmAnswer,
  parseTpmChallenge,
  parseTpmPayload,
} from "../../../../../plugins/nodeattestor/tpm/payload.js";

const json = (v: unknown) => Buffer.from(JSON.stringify(v));
const b64 = (n: number, fill = 1) => Buffer.alloc(n, fill).toString("base64");

describe("tpm wire messages", () => {
  it("round-trip", () => {
    const p = { ekPublic: Buffer.alloc(10, 1), ekCert: Buffer.alloc(5, 2), akPublic: Buffer.alloc(8, 3) };
    const back = parseTpmPayload(encodeTpmPayload(p));
    expect(Buffer.from(back.ekPublic)).toEqual(p.ekPublic);
    expect(Buffer.from(back.ekCert as Uint8Array)).toEqual(p.ekCert);
    expect(parseTpmPayload(encodeTpmPayload({ ekPublic: p.ekPublic, akPublic: p.akPublic })).ekCert).toBeUndefined();
    const c = { credentialBlob: Buffer.alloc(68, 4), encryptedSecret: Buffer.alloc(256, 5), nonce: Buffer.alloc(32, 6), pcrs: [{ hash: "sha256" as const, indices: [0, 7] }] };
    expect(parseTpmChallenge(encodeTpmChallenge(c)).pcrs).toEqual(c.pcrs);
    const a = { secret: Buffer.alloc(32, 7), attest: Buffer.alloc(100, 8), signature: Buffer.alloc(70, 9), pcrValues: { sha256: { "7": "00".repeat(32) } } };
    expect(parseTpmAnswer(encodeTpmAnswer(a)).pcrValues).toEqual(a.pcrValues);
  });

  it.each([
    ["an empty payload", () => parseTpmPayload(new Uint8Array(0)), /attestation payload: it is empty/],
    ["an oversized payload", () => parseTpmPayload(new Uint8Array(MAX_TPM_PAYLOAD_BYTES + 1)), /larger than 16384 bytes/],
    ["not JSON", () => parseTpmPayload(Buffer.from("{")), /not a UTF-8 JSON object/],
    ["an unknown field", () => parseTpmPayload(json({ ekPublic: b64(4), akPublic: b64(4), extra: 1 })), /unknown field "extra"/],
    ["a missing akPublic", () => parseTpmPayload(json({ ekPublic: b64(4) })), /"akPublic" is missing or not a base64 string/],
    ["base64url instead of base64", () => parseTpmPayload(json({ ekPublic: "-_-_", akPublic: b64(4) })), /"ekPublic" is not standard base64/],
    ["a short nonce", () => parseTpmChallenge(json({ credentialBlob: b64(4), encryptedSecret: b64(4), nonce: b64(16), pcrs: [] })), /"nonce" is 16 bytes, expected 32/],
    ["an unknown bank", () => parseTpmChallenge(json({ credentialBlob: b64(4), encryptedSecret: b64(4), nonce: b64(32), pcrs: [{ hash: "md5", indices: [0] }] })), /"pcrs\[0\]".hash is "md5"/],
    ["PCR indices out of order", () => parseTpmChallenge(json({ credentialBlob: b64(4), encryptedSecret: b64(4), nonce: b64(32), pcrs: [{ hash: "sha1", indices: [3, 1] }] })), /"pcrs\[0\]".indices is not ascending/],
    ["PCR 24", () => parseTpmChallenge(json({ credentialBlob: b64(4), encryptedSecret: b64(4), nonce: b64(32), pcrs: [{ hash: "sha1", indices: [24] }] })), /indices\[0\] is not a PCR index 0-23/],
    ["a PCR value of the wrong length", () => parseTpmAnswer(json({ secret: b64(32), attest: b64(4), signature: b64(4), pcrValues: { sha256: { "0": "00" } } })), /"pcrValues.sha256".0 is not 64 lowercase hex digits/],
    ["an uppercase PCR value", () => parseTpmAnswer(json({ secret: b64(32), attest: b64(4), signature: b64(4), pcrValues: { sha1: { "1": "AB".repeat(20) } } })), /"pcrValues.sha1".1 is not 40 lowercase hex digits/],
    ["a long secret", () => parseTpmAnswer(json({ secret: b64(65), attest: b64(4), signature: b64(4), pcrValues: {} })), /"secret" is longer than 64 bytes/],
  ])("refuses %s, naming the field", (_what, parse, message) => {
    expect(parse).toThrow(message);
  });
});
