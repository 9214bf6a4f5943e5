/**
 * The tlog parsers take untrusted input (whatever a log server sends): every
 * hostile input must either parse or throw a SigilError whose message starts
 * with a lowercase `subsystem: ` prefix. Inputs: wrong JS types, seeded random
 * bytes and strings, truncations and one-character mutations of valid notes,
 * keys, checkpoints, tile paths and bundles.
 */
import { describe, expect, it } from "vitest";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseCheckpoint, openCheckpoint, signCheckpoint } from "../../../../spiffe/tlog/checkpoint.js";
import { generateNoteKey, openNote, parseNote, parseSignerKey, parseVerifierKey } from "../../../../spiffe/tlog/note.js";
import { decodeEntryBundle, encodeEntryBundle, parseTilePath } from "../../../../spiffe/tlog/tiles.js";

let seed = 0x9e3779b9;
function rnd(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 2 ** 32;
}
const randomBytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(rnd() * 256)));

function mutations(valid: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < valid.length; i++) {
    out.push(valid.slice(0, i));
    out.push(valid.slice(0, i) + String.fromCharCode((valid.charCodeAt(i) + 1 + Math.floor(rnd() * 300)) % 0x3000) + valid.slice(i + 1));
  }
  return out;
}

function check(name: string, fn: (input: never) => unknown, inputs: readonly unknown[]): void {
  for (const input of inputs) {
    try {
      fn(input as never);
    } catch (e) {
      const ok = isSigilError(e) && /^[a-z][a-z0-9 -]*: /.test(e.message);
      if (!ok) throw new Error(`${name}(${JSON.stringify(String(input)).slice(0, 120)}) threw ${String(e)}`);
    }
  }
}

describe("tlog parsers on hostile input", () => {
  const key = generateNoteKey("example.org/sigil/issuance");
  const verifiers = [parseVerifierKey(key.vkey)];
  const note = signCheckpoint({ origin: "example.org/sigil/issuance", size: 1234, rootHash: Buffer.alloc(32, 7), extensions: [] }, [key.signer]);
  const wrongTypes: unknown[] = [undefined, null, 0, 1.5, {}, [], true, Symbol.iterator.toString()];
  const randoms: unknown[] = [...Array.from({ length: 200 }, () => randomBytes(Math.floor(rnd() * 300))), ...Array.from({ length: 200 }, () => randomBytes(Math.floor(rnd() * 300)).toString("latin1"))];

  it("notes and checkpoints", () => {
    const inputs = [...wrongTypes, ...randoms, ...mutations(note), "x".repeat(2 << 20)];
    check("parseNote", parseNote, inputs);
    check("openNote", (i: string) => openNote(i, verifiers), inputs);
    check("openCheckpoint", (i: string) => openCheckpoint(i, verifiers), inputs);
    check("parseCheckpoint", parseCheckpoint, [...wrongTypes, ...randoms.filter((r) => typeof r === "string"), ...mutations(note.slice(0, note.indexOf("\n\n") + 1))]);
  });

  it("keys", () => {
    check("parseVerifierKey", parseVerifierKey, [...wrongTypes, ...randoms.filter((r) => typeof r === "string"), ...mutations(key.vkey)]);
    check("parseSignerKey", parseSignerKey, [...wrongTypes, ...mutations("PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")]);
  });

  it("tile paths and entry bundles", () => {
    check("parseTilePath", parseTilePath, [...wrongTypes, ...mutations("tile/0/x001/x234/067.p/8"), ...mutations("tile/entries/x999/x999/x999/x999/x999/x999/999")]);
    const bundle = encodeEntryBundle([Buffer.from("one"), Buffer.alloc(300, 2), Buffer.alloc(0)]);
    const truncations = Array.from({ length: bundle.length }, (_, i) => bundle.subarray(0, i));
    check("decodeEntryBundle", decodeEntryBundle, [...wrongTypes, ...randoms.filter((r) => r instanceof Uint8Array), ...truncations]);
    expect(decodeEntryBundle(bundle)).toHaveLength(3);
  });
});
