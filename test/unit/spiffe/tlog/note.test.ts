import { describe, expect, it } from "vitest";
import { errorText } from "./support.js";
import { formatCheckpoint, openCheckpoint, parseCheckpoint, signCheckpoint } from "../../../../spiffe/tlog/checkpoint.js";
import {
  computeKeyId,
  formatKeyId,
  generateNoteKey,
  openNote,
  parseNote,
  parseSignerKey,
  parseVerifierKey,
  signNote,
} from "../../../../spiffe/tlog/note.js";


// Test vectors of golang.org/x/mod/sumdb/note (note_test.go: TestNewVerifier,
// TestNewSigner, TestSign, TestOpen): published keys and signatures, so notes
// made here and by Go's note package interoperate.
const PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

describe("signed notes: Go sumdb/note interoperability", () => {
  it("parses the published verifier and signer keys with their key IDs", () => {
    const v = parseVerifierKey(PETER_VKEY);
    expect(v.name).toBe("PeterNeumann");
    expect(formatKeyId(v.keyId)).toBe("c74f20a3");
    const s = parseSignerKey(PETER_SKEY);
    expect(s.keyId).toBe(v.keyId);
    expect(formatKeyId(parseVerifierKey(ENOCH_VKEY).keyId)).toBe("af0cfe78");
  });

  it("signs the published text byte for byte as Go does (Ed25519 is deterministic)", () => {
    expect(signNote(TEXT, [parseSignerKey(PETER_SKEY)])).toBe(`${TEXT}\n${PETER_SIG}`);
  });

  it("opens Go's note: verifies the known key, ignores the unknown one", () => {
    const opened = openNote(`${TEXT}\n${PETER_SIG}${ENOCH_SIG}`, [parseVerifierKey(PETER_VKEY)]);
    expect(opened.text).toBe(TEXT);
    expect(opened.verified.map((s) => s.name)).toEqual(["PeterNeumann"]);
    expect(opened.unverified.map((s) => s.name)).toEqual(["EnochRoot"]);
    const both = openNote(`${TEXT}\n${PETER_SIG}${ENOCH_SIG}`, [parseVerifierKey(PETER_VKEY), parseVerifierKey(ENOCH_VKEY)], { requireAll: true });
    expect(both.verified.map((s) => s.name)).toEqual(["PeterNeumann", "EnochRoot"]);
  });

  it("refuses a verifier key that is mangled anywhere", () => {
    expect(errorText(() => parseVerifierKey("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"))).toBe(
      "ERR_TLOG_MALFORMED: signed note: verifier key: key ID c74f20a4 does not match the name and key (they hash to c74f20a3)",
    );
    expect(errorText(() => parseVerifierKey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"))).toMatch(/unsupported signature type 0x65/);
    expect(errorText(() => parseVerifierKey("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="))).toBe("ERR_TLOG_MALFORMED: signed note: verifier key: the key is not canonical base64");
    const short = Buffer.concat([Buffer.of(1), Buffer.alloc(31)]).toString("base64");
    expect(errorText(() => parseVerifierKey(`PeterNeumann+c74f20a3+${short}`))).toMatch(/an Ed25519 key has 32 bytes after the type byte, got 31/);
    for (let i = 0; i < PETER_VKEY.length; i++) {
      const b = Buffer.from(PETER_VKEY);
      b[i] = (b[i] as number) + 1;
      expect(errorText(() => parseVerifierKey(b.toString("latin1"))), `byte ${i}`).toMatch(/^ERR_TLOG_MALFORMED: signed note: /);
    }
    for (let j = 1; j < PETER_VKEY.length; j++) expect(errorText(() => parseVerifierKey(PETER_VKEY.slice(0, j))), `prefix ${j}`).toMatch(/^ERR_TLOG_MALFORMED/);
  });
});

describe("signed notes: sign, open, refuse", () => {
  const a = generateNoteKey("example.org/sigil/issuance");
  const b = generateNoteKey("example.org/sigil/issuance");
  const text = "example.org/sigil/issuance\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";

  it("round-trips a note and the vkey of a generated key", () => {
    const note = signNote(text, [a.signer]);
    const v = parseVerifierKey(a.vkey);
    expect(v.keyId).toBe(a.signer.keyId);
    expect(computeKeyId(v.name, Buffer.from(a.vkey.slice(a.vkey.indexOf("+", a.vkey.indexOf("+") + 1) + 1), "base64"))).toBe(v.keyId);
    expect(openNote(note, [v]).text).toBe(text);
    expect(openNote(Buffer.from(note), [v]).verified).toHaveLength(1);
  });

  it("refuses a note signed by another key (same name, other key ID)", () => {
    expect(errorText(() => openNote(signNote(text, [b.signer]), [parseVerifierKey(a.vkey)]))).toMatch(
      /^ERR_TLOG_SIGNATURE_INVALID: signed note: no signature from a trusted key \(signed by example\.org\/sigil\/issuance\+[0-9a-f]{8}; trusted: example\.org\/sigil\/issuance\+[0-9a-f]{8}\)$/,
    );
  });

  it("refuses the whole note when a trusted key's signature fails, even beside a good one", () => {
    const good = signNote(text, [a.signer]);
    const tampered = good.replace("\n3\n", "\n4\n");
    expect(errorText(() => openNote(tampered, [parseVerifierKey(a.vkey)]))).toMatch(/^ERR_TLOG_SIGNATURE_INVALID: signed note: the signature by trusted key example\.org\/sigil\/issuance\+[0-9a-f]{8} does not verify$/);
    const sigLine = good.slice(text.length + 1);
    const flipped = sigLine.slice(0, 60) + (sigLine[60] === "A" ? "B" : "A") + sigLine.slice(61);
    expect(errorText(() => openNote(`${text}\n${flipped}${signNote(text, [b.signer]).slice(text.length + 1)}`, [parseVerifierKey(a.vkey), parseVerifierKey(b.vkey)]))).toMatch(/does not verify/);
  });

  it("requires every key when asked", () => {
    expect(errorText(() => openNote(signNote(text, [a.signer]), [parseVerifierKey(a.vkey), parseVerifierKey(b.vkey)], { requireAll: true }))).toMatch(/no signature from required key/);
  });

  it("adds a cosignature to a note keeping the other signatures", () => {
    const first = signNote(text, [a.signer]);
    const cosigned = signNote(text, [b.signer], parseNote(first).signatures);
    const opened = openNote(cosigned, [parseVerifierKey(a.vkey), parseVerifierKey(b.vkey)], { requireAll: true });
    expect(opened.verified).toHaveLength(2);
  });

  it("refuses malformed notes, each with a clear error", () => {
    const v = [parseVerifierKey(PETER_VKEY)];
    const cases: [string, string, RegExp][] = [
      ["no signatures", TEXT, /no blank line separates the text from the signatures|does not end/],
      ["blank line only", `${TEXT}\n`, /has no signature lines/],
      ["signature line without newline", `${TEXT}\n${PETER_SIG.slice(0, -1)}`, /does not end with a newline/],
      ["control character", `\x01${TEXT}\n${PETER_SIG}`, /contains control character U\+0001 at offset 0/],
      ["carriage return", `${TEXT.replace("\n", "\r\n")}\n${PETER_SIG}`, /control character U\+000D/],
      ["name with a space", `${TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n`, /signature line 1: .*not (standard|canonical)|signature line 1/],
      ["unexpected line", `${TEXT}\n${PETER_SIG}Unexpected line.\n`, /signature line 2 does not start with an em dash/],
      ["hyphen instead of em dash", `${TEXT}\n${PETER_SIG.replace("—", "-")}`, /signature line 1 does not start with an em dash \(U\+2014\)/],
      ["bad base64", `${TEXT}\n— PeterNeumann x08go/ZJkuBS9UG/Sffcv!\n`, /signature line 1: the signature is not standard padded base64/],
      ["short signature", `${TEXT}\n— PeterNeumann AAAA\n`, /signature line 1: the signature has 3 bytes, fewer than a key ID and a signature/],
      ["too many signatures", `${TEXT}\n${PETER_SIG.repeat(101)}`, /101 signature lines, more than the 100 accepted/],
      ["empty text", `\n${PETER_SIG}`, /the note text is empty/],
    ];
    for (const [what, note, re] of cases) {
      const e = errorText(() => openNote(note, v));
      expect(e, what).toMatch(/^ERR_TLOG_MALFORMED: signed note: /);
      expect(e, what).toMatch(re);
    }
    expect(errorText(() => openNote(Buffer.concat([Buffer.from([0xff]), Buffer.from(`${TEXT}\n${PETER_SIG}`)]), v))).toBe("ERR_TLOG_MALFORMED: signed note: the note is not valid UTF-8");
    expect(errorText(() => signNote("no newline", [a.signer]))).toBe("ERR_TLOG_MALFORMED: signed note: the note text does not end with a newline");
  });
});

describe("checkpoints", () => {
  const k = generateNoteKey("example.org/sigil/issuance");
  const other = generateNoteKey("example.org/sigil/issuance");
  const cp = { origin: "example.org/sigil/issuance", size: 20852163, rootHash: Buffer.from("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=", "base64"), extensions: [] };

  it("formats and parses the C2SP example body", () => {
    const body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    const parsed = parseCheckpoint(body);
    expect(parsed.origin).toBe("example.com/behind-the-sofa");
    expect(parsed.size).toBe(20852163);
    expect(formatCheckpoint(parsed)).toBe(body);
    expect(parseCheckpoint(`${body}ext one\n`).extensions).toEqual(["ext one"]);
  });

  it("signs and opens, checking the origin", () => {
    const note = signCheckpoint(cp, [k.signer]);
    const { checkpoint } = openCheckpoint(note, [parseVerifierKey(k.vkey)], { origin: cp.origin });
    expect(checkpoint.size).toBe(cp.size);
    expect(Buffer.from(checkpoint.rootHash).equals(cp.rootHash)).toBe(true);
    expect(errorText(() => openCheckpoint(note, [parseVerifierKey(k.vkey)], { origin: "other.org/sigil/issuance" }))).toMatch(/^ERR_TLOG_INCONSISTENT: checkpoint: origin "example.org\/sigil\/issuance" is not the expected/);
  });

  it("refuses a checkpoint signed by another key", () => {
    expect(errorText(() => openCheckpoint(signCheckpoint(cp, [other.signer]), [parseVerifierKey(k.vkey)]))).toMatch(/^ERR_TLOG_SIGNATURE_INVALID: signed note: no signature from a trusted key/);
  });

  it("refuses malformed bodies, naming the line", () => {
    const root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
    const cases: [string, RegExp][] = [
      [`o\n12\n`, /has 2 lines, a checkpoint has at least 3/],
      [`\n12\n${root}\n`, /the origin \(line 1\) is empty/],
      [`o\n012\n${root}\n`, /tree size \(line 2\) "012" is not a decimal number without leading zeroes/],
      [`o\n-1\n${root}\n`, /tree size \(line 2\)/],
      [`o\n99999999999999999999\n${root}\n`, /larger than 9007199254740991/],
      [`o\n12\nAAAA\n`, /the root hash \(line 3\) has 3 bytes, expected 32/],
      [`o\n12\n${root.slice(0, -1)}\n`, /the root hash \(line 3\) is not standard padded base64/],
      [`o\n12\n${root}\n\n`, /extension line 4 is empty/],
      [`o\n12\n${root}`, /does not end with a newline/],
    ];
    for (const [body, re] of cases) {
      const e = errorText(() => parseCheckpoint(body));
      expect(e, body).toMatch(/^ERR_TLOG_MALFORMED: checkpoint: /);
      expect(e, body).toMatch(re);
    }
    expect(errorText(() => formatCheckpoint({ ...cp, rootHash: Buffer.alloc(3) }))).toBe("ERR_INVALID_ARGUMENT: checkpoint: rootHash must have 32 bytes, got 3");
  });
});
