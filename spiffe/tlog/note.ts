/**
 * C2SP signed-note (https://c2sp.org/signed-note) with Ed25519 keys: text
 * ending in a newline, a blank line, then one line per signature
 * `— <key name> <base64(4-byte key ID || signature)>` (em dash U+2014).
 * Keys are written as the verifier-key strings of golang.org/x/mod/sumdb/note,
 * `<name>+<hex key ID>+<base64(0x01 || 32-byte public key)>`, so keys and notes
 * made here open with Go's tools and the other way round.
 *
 * Parsing is strict: valid UTF-8, no control characters but newline, a
 * bounded number of signatures, canonical base64. Opening ignores signatures
 * from unknown keys (that is how keys rotate and witnesses cosign) but refuses
 * the whole note when a known key's signature does not verify.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from "node:crypto";
import { SigilError } from "../errors.js";

/** Signature type byte of Ed25519 in key IDs and key strings (signed-note §Signature types). */
export const ED25519_SIGNATURE_TYPE = 0x01;

/** Most signature lines a note may carry unless told otherwise (the spec asks for at least 16). */
export const DEFAULT_MAX_SIGNATURES = 100;

/** Largest note accepted unless told otherwise, in bytes. */
export const DEFAULT_MAX_NOTE_BYTES = 1 << 20;

const ED25519_PUBLIC_KEY_SIZE = 32;
const ED25519_SIGNATURE_SIZE = 64;
const EM_DASH_PREFIX = "\u2014 ";
// PKCS#8 and SPKI DER headers of an Ed25519 key (RFC 8410), followed by the 32 raw bytes.
const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_ED25519_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/** Produces signature lines for a note. */
export interface NoteSigner {
  /** Key name written on the signature line. */
  readonly name: string;
  /** The 32-bit key ID prefixed to every signature. */
  readonly keyId: number;
  /** Signs the note text (its UTF-8 bytes); returns the raw signature. */
  sign(message: Uint8Array): Uint8Array;
}

/** Checks signature lines of one key. */
export interface NoteVerifier {
  readonly name: string;
  readonly keyId: number;
  /** True when `signature` (without the key ID) signs `message`. */
  verify(message: Uint8Array, signature: Uint8Array): boolean;
}

/** One signature line of a parsed note. */
export interface NoteSignature {
  readonly name: string;
  readonly keyId: number;
  /** The signature bytes after the 4-byte key ID. */
  readonly signature: Uint8Array;
}

/** A note split into its text and signature lines, not yet verified. */
export interface ParsedNote {
  /** The signed text, final newline included. */
  readonly text: string;
  readonly signatures: readonly NoteSignature[];
}

/** A note with at least one signature verified by a trusted key. */
export interface OpenedNote {
  readonly text: string;
  /** Signatures verified by one of the given verifiers, one per key. */
  readonly verified: readonly NoteSignature[];
  /** Signatures from keys not given (ignored, e.g. witness cosignatures). */
  readonly unverified: readonly NoteSignature[];
}

/** Limits on what {@link parseNote} accepts. */
export interface NoteLimits {
  /** Default {@link DEFAULT_MAX_SIGNATURES}. */
  readonly maxSignatures?: number;
  /** Default {@link DEFAULT_MAX_NOTE_BYTES}. */
  readonly maxBytes?: number;
}

function malformed(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_TLOG_MALFORMED", `signed note: ${message}`, cause === undefined ? undefined : { cause });
}

/** Renders a key ID as the 8 lowercase hex digits key strings use. */
export function formatKeyId(keyId: number): string {
  return keyId.toString(16).padStart(8, "0");
}

/** Throws unless `name` is a valid key name: non-empty, no Unicode space, no `+`. */
export function checkKeyName(name: string): void {
  if (name.length === 0) throw malformed("a key name must not be empty");
  if (/[\s+]/u.test(name)) throw malformed(`key name ${JSON.stringify(name)} contains a space or a '+'`);
  if (/\p{Cc}/u.test(name)) throw malformed(`key name ${JSON.stringify(name)} contains a control character`);
}

/**
 * The recommended key ID: the first 4 bytes, big-endian, of
 * SHA-256(name || 0x0A || signature type || public key).
 */
export function computeKeyId(name: string, typedPublicKey: Uint8Array): number {
  const h = createHash("sha256").update(name, "utf8").update(Buffer.of(0x0a)).update(typedPublicKey).digest();
  return h.readUInt32BE(0);
}

/** Strict standard base64 (RFC 4648 §4, padded): refuses anything that does not re-encode to itself. */
export function decodeBase64Strict(s: string, what: string): Buffer {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) throw malformed(`${what} is not standard padded base64`);
  const b = Buffer.from(s, "base64");
  if (b.toString("base64") !== s) throw malformed(`${what} is not canonical base64`);
  return b;
}

/**
 * The raw 32 bytes of an Ed25519 key (public, or the public half of a private one).
 *
 * @throws SigilError `ERR_KEY_UNSUPPORTED` for another key type.
 */
export function rawEd25519PublicKey(key: KeyObject): Buffer {
  if (key.asymmetricKeyType !== "ed25519") throw new SigilError("ERR_KEY_UNSUPPORTED", `signed note: only Ed25519 keys are supported, got ${String(key.asymmetricKeyType)}`);
  const pub = key.type === "private" ? createPublicKey(key) : key;
  const der = pub.export({ format: "der", type: "spki" });
  return der.subarray(der.length - ED25519_PUBLIC_KEY_SIZE);
}

/** The public key object of 32 raw Ed25519 bytes. */
export function ed25519PublicKeyFromRaw(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: "der", type: "spki" });
}

/**
 * A {@link NoteSigner} over an in-memory Ed25519 private key. The key stays in
 * the closure; the signer exposes only name, key ID and `sign`.
 *
 * @throws SigilError `ERR_KEY_UNSUPPORTED` for a key that is not a private Ed25519 key; `ERR_TLOG_MALFORMED` for a bad name.
 */
export function createEd25519NoteSigner(name: string, privateKey: KeyObject): NoteSigner {
  checkKeyName(name);
  if (privateKey.type !== "private") throw new SigilError("ERR_KEY_UNSUPPORTED", "signed note: a note signer needs a private key");
  const pub = rawEd25519PublicKey(privateKey);
  const keyId = computeKeyId(name, Buffer.concat([Buffer.of(ED25519_SIGNATURE_TYPE), pub]));
  return {
    name,
    keyId,
    sign: (message) => cryptoSign(null, message, privateKey),
  };
}

/**
 * A {@link NoteVerifier} for an Ed25519 public key (a KeyObject or the 32 raw bytes).
 *
 * @throws SigilError `ERR_KEY_UNSUPPORTED` / `ERR_TLOG_MALFORMED`.
 */
export function createEd25519NoteVerifier(name: string, publicKey: KeyObject | Uint8Array): NoteVerifier {
  checkKeyName(name);
  let raw: Buffer;
  let key: KeyObject;
  if (publicKey instanceof Uint8Array) {
    if (publicKey.length !== ED25519_PUBLIC_KEY_SIZE) throw malformed(`an Ed25519 public key has ${ED25519_PUBLIC_KEY_SIZE} bytes, got ${publicKey.length}`);
    raw = Buffer.from(publicKey);
    key = ed25519PublicKeyFromRaw(raw);
  } else {
    raw = rawEd25519PublicKey(publicKey);
    key = publicKey.type === "private" ? createPublicKey(publicKey) : publicKey;
  }
  const keyId = computeKeyId(name, Buffer.concat([Buffer.of(ED25519_SIGNATURE_TYPE), raw]));
  return {
    name,
    keyId,
    verify: (message, signature) => signature.length === ED25519_SIGNATURE_SIZE && cryptoVerify(null, message, key, signature),
  };
}

/** The verifier-key string `<name>+<hex key ID>+<base64(0x01 || public key)>` of an Ed25519 key. */
export function formatVerifierKey(name: string, publicKey: KeyObject): string {
  checkKeyName(name);
  const typed = Buffer.concat([Buffer.of(ED25519_SIGNATURE_TYPE), rawEd25519PublicKey(publicKey)]);
  return `${name}+${formatKeyId(computeKeyId(name, typed))}+${typed.toString("base64")}`;
}

// Splits at the first n-1 '+' (the base64 key itself may contain '+').
function splitPlus(s: string, n: number): string[] | undefined {
  const out: string[] = [];
  let rest = s;
  for (let i = 0; i < n - 1; i++) {
    const at = rest.indexOf("+");
    if (at < 0) return undefined;
    out.push(rest.slice(0, at));
    rest = rest.slice(at + 1);
  }
  out.push(rest);
  return out;
}

function parseKeyString(parts: readonly string[], what: string): { name: string; keyId: number; key: Buffer } {
  const [name, hex, b64] = parts as [string, string, string];
  checkKeyName(name);
  if (!/^[0-9a-f]{8}$/i.test(hex)) throw malformed(`${what}: the key ID ${JSON.stringify(hex)} is not 8 hex digits`);
  const typed = decodeBase64Strict(b64, `${what}: the key`);
  if (typed[0] !== ED25519_SIGNATURE_TYPE) throw malformed(`${what}: unsupported signature type ${typed.length === 0 ? "(empty key)" : `0x${formatKeyId(typed[0] as number).slice(6)}`}, only Ed25519 (0x01) is supported`);
  if (typed.length !== 1 + ED25519_PUBLIC_KEY_SIZE) throw malformed(`${what}: an Ed25519 key has ${ED25519_PUBLIC_KEY_SIZE} bytes after the type byte, got ${typed.length - 1}`);
  const keyId = Number.parseInt(hex, 16);
  return { name, keyId, key: typed.subarray(1) };
}

/**
 * Parses a verifier key `<name>+<hex key ID>+<base64(0x01 || public key)>`.
 * The key ID must be the one the name and key hash to.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` naming what is wrong.
 */
export function parseVerifierKey(vkey: string): NoteVerifier {
  if (typeof vkey !== "string") throw malformed(`a verifier key is a string, got ${typeof vkey}`);
  const parts = splitPlus(vkey, 3);
  if (parts === undefined) throw malformed("a verifier key has the form <name>+<key id>+<key>");
  const { name, keyId, key } = parseKeyString(parts, "verifier key");
  const v = createEd25519NoteVerifier(name, key);
  if (v.keyId !== keyId) throw malformed(`verifier key: key ID ${formatKeyId(keyId)} does not match the name and key (they hash to ${formatKeyId(v.keyId)})`);
  return v;
}

/**
 * Parses a Go-style signer key `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || 32-byte seed)>`
 * (for interoperability and tests; a server keeps its log key in its key manager).
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` naming what is wrong.
 */
export function parseSignerKey(skey: string): NoteSigner {
  if (typeof skey !== "string") throw malformed(`a signer key is a string, got ${typeof skey}`);
  const parts = splitPlus(skey, 5);
  if (parts === undefined || parts[0] !== "PRIVATE" || parts[1] !== "KEY") throw malformed("a signer key has the form PRIVATE+KEY+<name>+<key id>+<key>");
  const { name, keyId, key } = parseKeyString(parts.slice(2), "signer key");
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, key]), format: "der", type: "pkcs8" });
  const s = createEd25519NoteSigner(name, privateKey);
  if (s.keyId !== keyId) throw malformed(`signer key: key ID ${formatKeyId(keyId)} does not match the name and key (they hash to ${formatKeyId(s.keyId)})`);
  return s;
}

/** A fresh Ed25519 note key: its signer and its verifier-key string. */
export function generateNoteKey(name: string): { signer: NoteSigner; vkey: string } {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return { signer: createEd25519NoteSigner(name, privateKey), vkey: formatVerifierKey(name, publicKey) };
}

function checkNoteCharacters(s: string, what: string): void {
  // Control characters other than newline (signed-note §Format).
  const m = /[\u0000-\u0009\u000b-\u001f]/.exec(s);
  if (m) throw malformed(`${what} contains control character U+${(m[0].codePointAt(0) as number).toString(16).padStart(4, "0").toUpperCase()} at offset ${m.index}`);
  if (/[\ud800-\udfff]/u.test(s)) throw malformed(`${what} is not valid UTF-8`);
}

function checkText(text: string): void {
  if (text.length === 0) throw malformed("the note text is empty");
  if (!text.endsWith("\n")) throw malformed("the note text does not end with a newline");
  checkNoteCharacters(text, "the note text");
}

/**
 * Splits a signed note into its text and signature lines, strictly.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` naming what is wrong (the line for a bad signature line).
 */
export function parseNote(input: string | Uint8Array, limits: NoteLimits = {}): ParsedNote {
  const maxBytes = limits.maxBytes ?? DEFAULT_MAX_NOTE_BYTES;
  const maxSignatures = limits.maxSignatures ?? DEFAULT_MAX_SIGNATURES;
  let s: string;
  if (typeof input !== "string" && !(input instanceof Uint8Array)) throw malformed(`a note is a string or bytes, got ${typeof input}`);
  if (typeof input === "string") {
    s = input;
    if (Buffer.byteLength(s, "utf8") > maxBytes) throw malformed(`the note is larger than ${maxBytes} bytes`);
  } else {
    if (input.length > maxBytes) throw malformed(`the note is larger than ${maxBytes} bytes`);
    try {
      s = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(input);
    } catch (e) {
      throw malformed("the note is not valid UTF-8", e);
    }
  }
  checkNoteCharacters(s, "the note");
  if (!s.endsWith("\n")) throw malformed("the note does not end with a newline");
  const sep = s.lastIndexOf("\n\n");
  if (sep < 0) throw malformed(s.startsWith("\n") ? "the note text is empty" : "no blank line separates the text from the signatures");
  const text = s.slice(0, sep + 1);
  if (text.length === 0) throw malformed("the note text is empty");
  const lines = s.slice(sep + 2, -1).split("\n");
  if (lines.length === 1 && lines[0] === "") throw malformed("the note has no signature lines");
  if (lines.length > maxSignatures) throw malformed(`the note has ${lines.length} signature lines, more than the ${maxSignatures} accepted`);
  const signatures = lines.map((line, i) => parseSignatureLine(line, i + 1));
  return { text, signatures };
}

function parseSignatureLine(line: string, n: number): NoteSignature {
  if (!line.startsWith(EM_DASH_PREFIX)) throw malformed(`signature line ${n} does not start with an em dash (U+2014) and a space`);
  const rest = line.slice(EM_DASH_PREFIX.length);
  const sp = rest.indexOf(" ");
  if (sp < 0) throw malformed(`signature line ${n} has no space between key name and signature`);
  const name = rest.slice(0, sp);
  const b64 = rest.slice(sp + 1);
  try {
    checkKeyName(name);
  } catch (e) {
    throw malformed(`signature line ${n}: ${(e as Error).message.replace(/^signed note: /, "")}`);
  }
  const raw = decodeBase64Strict(b64, `signature line ${n}: the signature`);
  if (raw.length < 5) throw malformed(`signature line ${n}: the signature has ${raw.length} bytes, fewer than a key ID and a signature`);
  return { name, keyId: raw.readUInt32BE(0), signature: raw.subarray(4) };
}

/** Options of {@link openNote}. */
export interface OpenNoteOptions extends NoteLimits {
  /** Require a verified signature from every verifier given, not just one. Default false. */
  readonly requireAll?: boolean;
}

/**
 * Parses a note and verifies its signatures against trusted keys. Signatures
 * from unknown keys (other name or other key ID) are returned unverified; a
 * known key's signature that fails refuses the whole note.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` for a malformed note,
 *   `ERR_TLOG_SIGNATURE_INVALID` when a known key's signature fails or no trusted key signed it.
 */
export function openNote(input: string | Uint8Array, verifiers: readonly NoteVerifier[], options: OpenNoteOptions = {}): OpenedNote {
  const note = parseNote(input, options);
  const message = Buffer.from(note.text, "utf8");
  const verified: NoteSignature[] = [];
  const unverified: NoteSignature[] = [];
  const seen = new Set<string>();
  for (const sig of note.signatures) {
    const matches = verifiers.filter((v) => v.name === sig.name && v.keyId === sig.keyId);
    const id = `${sig.name}+${formatKeyId(sig.keyId)}`;
    if (matches.length === 0) {
      unverified.push(sig);
      continue;
    }
    if (matches.length > 1) throw new SigilError("ERR_INVALID_ARGUMENT", `signed note: ${matches.length} trusted keys are named ${id}`);
    if (!(matches[0] as NoteVerifier).verify(message, sig.signature)) {
      throw new SigilError("ERR_TLOG_SIGNATURE_INVALID", `signed note: the signature by trusted key ${id} does not verify`);
    }
    if (!seen.has(id)) {
      seen.add(id);
      verified.push(sig);
    }
  }
  if (verified.length === 0) {
    const by = note.signatures.map((s) => `${s.name}+${formatKeyId(s.keyId)}`).join(", ");
    const trusted = verifiers.map((v) => `${v.name}+${formatKeyId(v.keyId)}`).join(", ") || "none";
    throw new SigilError("ERR_TLOG_SIGNATURE_INVALID", `signed note: no signature from a trusted key (signed by ${by}; trusted: ${trusted})`);
  }
  if (options.requireAll) {
    const missing = verifiers.filter((v) => !seen.has(`${v.name}+${formatKeyId(v.keyId)}`));
    if (missing.length > 0) {
      throw new SigilError("ERR_TLOG_SIGNATURE_INVALID", `signed note: no signature from required key ${missing.map((v) => `${v.name}+${formatKeyId(v.keyId)}`).join(", ")}`);
    }
  }
  return { text: note.text, verified, unverified };
}

/**
 * Signs `text` (non-empty, ending in a newline) with each signer, after any
 * signature lines in `existing` from other keys (a cosigner adds its line to
 * a note it received).
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` for text a note cannot carry.
 */
export function signNote(text: string, signers: readonly NoteSigner[], existing: readonly NoteSignature[] = []): string {
  checkText(text);
  if (signers.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", "signed note: at least one signer is needed");
  const message = Buffer.from(text, "utf8");
  const lines: string[] = [];
  const ours = new Set(signers.map((s) => `${s.name}+${formatKeyId(s.keyId)}`));
  for (const sig of existing) {
    if (ours.has(`${sig.name}+${formatKeyId(sig.keyId)}`)) continue;
    lines.push(signatureLine(sig.name, sig.keyId, sig.signature));
  }
  for (const s of signers) {
    checkKeyName(s.name);
    lines.push(signatureLine(s.name, s.keyId, s.sign(message)));
  }
  return `${text}\n${lines.join("")}`;
}

/** One note signature line `— <name> <base64(key ID || signature)>` and its newline. */
export function signatureLine(name: string, keyId: number, signature: Uint8Array): string {
  const raw = Buffer.allocUnsafe(4 + signature.length);
  raw.writeUInt32BE(keyId >>> 0, 0);
  raw.set(signature, 4);
  return `${EM_DASH_PREFIX}${name} ${raw.toString("base64")}\n`;
}
