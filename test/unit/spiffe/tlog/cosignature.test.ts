/**
 * cosignature/v1 (C2SP tlog-cosignature): a fixed vector worked out from the
 * spec's definitions and checked with node:crypto alone, key strings, and
 * the quorum check that names the witnesses missing.
 */
import { createHash, createPrivateKey, createPublicKey, sign as cryptoSign, verify as cryptoVerify } from "node:crypto";
import { describe, expect, it } from "vitest";
import { signCheckpoint } from "../../../../spiffe/tlog/checkpoint.js";
import {
  addSignatureLines,
  checkCosignatures,
  cosignatureMessage,
  createCosigner,
  duplicateWitnessKey,
  generateCosigner,
  parseCosignerVerifierKey,
} from "../../../../spiffe/tlog/cosignature.js";
import { generateNoteKey, openNote, parseNote, parseVerifierKey, signatureLine } from "../../../../spiffe/tlog/note.js";

// Seed 0x01 … 0x20, the checkpoint of the spec's example, its example time.
const SEED = Buffer.from(Array.from({ length: 32 }, (_, i) => i + 1));
const PRIVATE = createPrivateKey({ key: Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), SEED]), format: "der", type: "pkcs8" });
const PUBLIC = createPublicKey(PRIVATE);
const NAME = "witness.example/w1";
const TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
const TIME = 1679315147;
// Worked out by hand from the spec: key ID = SHA-256("witness.example/w1\n" || 0x04 || public key)[:4].
const RAW_PUBLIC = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664";
const KEY_ID = "468d99bb";
const VKEY = "witness.example/w1+468d99bb+BHm1Vi6P5lT5QHixEuipi6eQH4U65pW+1+DjkQutBJZk";
const LINE = "— witness.example/w1 Ro2ZuwAAAABkGFDLQB2dbiQ7rPMIDjq/twq5Ixt42T+awjiYS4+fxrnLnI31x5abVjZlhDVvZAcRRLyAiG4oQlhTgi4DsxiPwiDaDg==\n";

const fixedCosigner = () => createCosigner(NAME, PUBLIC, (m) => cryptoSign(null, m, PRIVATE));

describe("cosignature/v1", () => {
  it("matches the fixed vector, and node:crypto alone verifies it", () => {
    const raw = PUBLIC.export({ format: "der", type: "spki" }).subarray(12);
    expect(raw.toString("hex")).toBe(RAW_PUBLIC);
    expect(createHash("sha256").update(`${NAME}\n`).update(Buffer.of(0x04)).update(raw).digest().subarray(0, 4).toString("hex")).toBe(KEY_ID);

    const c = fixedCosigner();
    expect(c.vkey).toBe(VKEY);
    expect(c.cosign(TEXT, TIME)).toBe(LINE);
    expect(cosignatureMessage(TEXT, TIME).toString()).toBe(`cosignature/v1\ntime 1679315147\n${TEXT}`);

    // The line's bytes: key ID, the time as a big-endian u64 (the spec example's "AAAABkGFDL"), a 64-byte signature.
    const bytes = Buffer.from(LINE.slice(`— ${NAME} `.length, -1), "base64");
    expect(bytes.length).toBe(4 + 8 + 64);
    expect(bytes.subarray(0, 4).toString("hex")).toBe(KEY_ID);
    expect(bytes.readBigUInt64BE(4)).toBe(BigInt(TIME));
    expect(cryptoVerify(null, Buffer.from(`cosignature/v1\ntime ${TIME}\n${TEXT}`), PUBLIC, bytes.subarray(12))).toBe(true);

    const v = parseCosignerVerifierKey(VKEY);
    expect([v.name, v.keyId.toString(16)]).toEqual([NAME, KEY_ID]);
    expect(v.verifyCosignature(TEXT, bytes.subarray(4))).toBe(TIME);
  });

  it("refuses a cosignature over other text or with another time", () => {
    const v = parseCosignerVerifierKey(VKEY);
    const sig = Buffer.from(LINE.slice(`— ${NAME} `.length, -1), "base64").subarray(4);
    expect(v.verifyCosignature(TEXT.replace("20852163", "20852164"), sig)).toBeUndefined();
    const later = Buffer.from(sig);
    later.writeBigUInt64BE(BigInt(TIME + 1), 0);
    expect(v.verifyCosignature(TEXT, later)).toBeUndefined();
    expect(v.verifyCosignature(TEXT, sig.subarray(0, 71))).toBeUndefined();
  });

  it("witness keys have type 0x04: a log key, a wrong key ID or a short key is refused by name", () => {
    const logKey = generateNoteKey("example.org/sigil/issuance").vkey;
    expect(() => parseCosignerVerifierKey(logKey)).toThrow(/signature type 0x01; cosignature\/v1 Ed25519 keys have type 0x04/);
    expect(() => parseVerifierKey(VKEY)).toThrow(/unsupported signature type/);
    expect(() => parseCosignerVerifierKey(VKEY.replace("468d99bb", "468d99bc"))).toThrow(/key ID 468d99bc does not match/);
    expect(() => parseCosignerVerifierKey(`${NAME}+${KEY_ID}+BAEC`)).toThrow(/has 2 key bytes/);
    expect(() => parseCosignerVerifierKey("no-plus")).toThrow(/<name>\+<key id>\+<base64 key>/);
  });

  it("a log's own note verification ignores cosignature lines", () => {
    const log = generateNoteKey("example.com/behind-the-sofa");
    const note = signCheckpoint({ origin: "example.com/behind-the-sofa", size: 20852163, rootHash: Buffer.from("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=", "base64"), extensions: [] }, [log.signer]);
    const cosigned = addSignatureLines(note, fixedCosigner().cosign(TEXT, TIME));
    const opened = openNote(cosigned, [parseVerifierKey(log.vkey)]);
    expect(opened.verified.length).toBe(1);
    expect(opened.unverified.map((s) => s.name)).toEqual([NAME]);
  });

  it("checks a quorum of witnesses and names those missing", () => {
    const log = generateNoteKey("example.org/sigil/issuance");
    const note = signCheckpoint({ origin: "example.org/sigil/issuance", size: 3, rootHash: Buffer.alloc(32, 9), extensions: [] }, [log.signer]);
    const text = parseNote(note).text;
    const a = generateCosigner("a.example/w");
    const b = generateCosigner("b.example/w");
    const [va, vb] = [parseCosignerVerifierKey(a.vkey), parseCosignerVerifierKey(b.vkey)];
    const withA = addSignatureLines(note, a.cosign(text, 1000));

    expect(checkCosignatures(withA, [va, vb], 1).cosigned.map((c) => [c.witness.name, c.timestamp])).toEqual([["a.example/w", 1000]]);
    expect(() => checkCosignatures(withA, [va, vb])).toThrow(new RegExp(`cosigned by 1 of the 2 witnesses, 2 required; missing: b\\.example/w\\+${vb.keyId.toString(16).padStart(8, "0")} \\(no cosignature\\)`));
    // A's line replaced by one over another checkpoint: present but invalid.
    const forged = addSignatureLines(note, a.cosign(text.replace("\n3\n", "\n4\n"), 1000));
    expect(() => checkCosignatures(forged, [va], 1)).toThrow(/missing: a\.example\/w\+[0-9a-f]{8} \(invalid cosignature\)/);
    // A newer line of the same key replaces the old one.
    const both = addSignatureLines(addSignatureLines(withA, b.cosign(text, 2000)), a.cosign(text, 3000));
    expect(parseNote(both).signatures.length).toBe(3);
    expect(checkCosignatures(both, [va, vb]).cosigned.map((c) => c.timestamp)).toEqual([3000, 2000]);
    expect(() => checkCosignatures(both, [va, vb], 3)).toThrow(/quorum must be from 1 to the 2/);
    expect(() => checkCosignatures(both, [], 0)).toThrow(/quorum must be from 1 to the 0/);
  });

  it("never counts one witness twice: the same key twice, its key ID in upper case, or one public key under two names", () => {
    const log = generateNoteKey("example.org/sigil/issuance");
    const note = signCheckpoint({ origin: "example.org/sigil/issuance", size: 5, rootHash: Buffer.alloc(32, 1), extensions: [] }, [log.signer]);
    const text = parseNote(note).text;
    const w1 = fixedCosigner();
    const cosigned = addSignatureLines(note, w1.cosign(text, TIME));
    const v = parseCosignerVerifierKey(VKEY);
    expect(() => checkCosignatures(cosigned, [v, parseCosignerVerifierKey(VKEY)], 2)).toThrow(`cosignature: witness key ${NAME}+${KEY_ID} is listed twice`);
    expect(() => checkCosignatures(cosigned, [v, parseCosignerVerifierKey(VKEY.replace(KEY_ID, KEY_ID.toUpperCase()))], 2)).toThrow(`cosignature: witness key ${NAME}+${KEY_ID} is listed twice`);
    // The signed message does not name the witness: w1's line relabelled to a second name verifies under it.
    const w2 = createCosigner("w2.example", PUBLIC, (m) => cryptoSign(null, m, PRIVATE));
    const relabelled = addSignatureLines(cosigned, signatureLine(w2.name, w2.keyId, parseNote(cosigned).signatures[1]?.signature ?? new Uint8Array()));
    const v2 = parseCosignerVerifierKey(w2.vkey);
    expect(v2.verifyCosignature(text, parseNote(relabelled).signatures[2]?.signature ?? new Uint8Array())).toBe(TIME);
    expect(() => checkCosignatures(relabelled, [v, v2], 2)).toThrow(/cosignature: witness keys witness\.example\/w1\+468d99bb and w2\.example\+[0-9a-f]{8} share one public key/);
    expect(duplicateWitnessKey([v, parseCosignerVerifierKey(generateCosigner("other.example").vkey)])).toBeUndefined();
  });

  it("with time limits, a cosignature dated ahead beyond the skew or older than the maximum age does not count", () => {
    const log = generateNoteKey("example.org/sigil/issuance");
    const note = signCheckpoint({ origin: "example.org/sigil/issuance", size: 5, rootHash: Buffer.alloc(32, 1), extensions: [] }, [log.signer]);
    const text = parseNote(note).text;
    const w = generateCosigner("w.example");
    const v = parseCosignerVerifierKey(w.vkey);
    const now = 1_900_000_000;
    const at = (t: number) => addSignatureLines(note, w.cosign(text, t));
    expect(checkCosignatures(at(now + 60), [v], 1, {}, { now, maxFutureSeconds: 300 }).cosigned.length).toBe(1);
    expect(() => checkCosignatures(at(now + 301), [v], 1, {}, { now, maxFutureSeconds: 300 })).toThrow(/\(timestamp in the future\)/);
    expect(() => checkCosignatures(at(now - 3601), [v], 1, {}, { now, maxFutureSeconds: 300, maxAgeSeconds: 3600 })).toThrow(/\(cosignature too old\)/);
    expect(checkCosignatures(at(now - 3600), [v], 1, {}, { now, maxFutureSeconds: 300, maxAgeSeconds: 3600 }).cosigned.length).toBe(1);
  });

  it("addSignatureLines keeps one line per key, only the lines `keep` accepts, and never makes a note parseNote refuses", () => {
    const log = generateNoteKey("example.org/sigil/issuance");
    const note = signCheckpoint({ origin: "example.org/sigil/issuance", size: 5, rootHash: Buffer.alloc(32, 1), extensions: [] }, [log.signer]);
    const text = parseNote(note).text;
    const w = generateCosigner("w.example");
    const twice = addSignatureLines(note, w.cosign(text, 1) + w.cosign(text, 2));
    expect(parseNote(twice).signatures.map((s) => s.name)).toEqual(["example.org/sigil/issuance", "w.example"]);
    const kept = addSignatureLines(note, generateCosigner("junk.example").cosign(text, 1) + w.cosign(text, 1), (s) => s.name !== "junk.example");
    expect(parseNote(kept).signatures.map((s) => s.name)).toEqual(["example.org/sigil/issuance", "w.example"]);
    const many = Array.from({ length: 99 }, (_, i) => generateCosigner(`w${i}.example`).cosign(text, 1)).join("");
    expect(parseNote(addSignatureLines(note, many)).signatures.length).toBe(100);
    expect(() => addSignatureLines(addSignatureLines(note, many), generateCosigner("one-more.example").cosign(text, 1))).toThrow(/would carry 101 signature lines, more than the 100/);
  });
});
