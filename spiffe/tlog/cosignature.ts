/**
 * C2SP tlog-cosignature (https://c2sp.org/tlog-cosignature), the Ed25519
 * `cosignature/v1` type: a witness's statement that, at a time, the
 * checkpoint is the largest consistent tree it has seen of that log.
 *
 * - Signed message: `cosignature/v1\n`, `time <POSIX seconds>\n`, then the
 *   checkpoint's note text (final newline included, no signature lines).
 * - Signature line: an ordinary signed-note line whose bytes after the 4-byte
 *   key ID are a `timestamped_signature`: the time as a big-endian u64, then
 *   the 64-byte Ed25519 signature.
 * - Key ID: the first 4 bytes of SHA-256(name || 0x0A || 0x04 || public key),
 *   type byte 0x04 (not the 0x01 of log keys), so a witness key never
 *   verifies as a log key; its verifier key is `<name>+<hex id>+<base64(0x04 || key)>`.
 *
 * The Ed25519 message does not name the witness, so one key must serve one
 * witness name only.
 */
import { generateKeyPairSync, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from "node:crypto";
import { SigilError } from "../errors.js";
import {
  checkKeyName,
  computeKeyId,
  decodeBase64Strict,
  DEFAULT_MAX_SIGNATURES,
  ed25519PublicKeyFromRaw,
  formatKeyId,
  parseNote,
  rawEd25519PublicKey,
  signatureLine,
  type NoteLimits,
  type NoteSignature,
  type NoteVerifier,
} from "./note.js";

/** Signature type byte of Ed25519 cosignature/v1 keys (tlog-cosignature §Format). */
export const COSIGNATURE_V1_TYPE = 0x04;
/** The header line of the signed message. */
export const COSIGNATURE_V1_HEADER = "cosignature/v1";

const ED25519_KEY_SIZE = 32;
const ED25519_SIG_SIZE = 64;
const TIMESTAMP_SIZE = 8;

function malformed(message: string): SigilError {
  return new SigilError("ERR_TLOG_MALFORMED", `cosignature: ${message}`);
}

function checkTimestamp(timestamp: number): void {
  if (!Number.isSafeInteger(timestamp) || timestamp < 0) throw new SigilError("ERR_INVALID_ARGUMENT", `cosignature: the timestamp must be a non-negative integer of seconds, got ${String(timestamp)}`);
}

/** The bytes a cosignature/v1 signs for checkpoint note text `text` at POSIX time `timestamp` (seconds). */
export function cosignatureMessage(text: string, timestamp: number): Buffer {
  checkTimestamp(timestamp);
  if (text.length === 0 || !text.endsWith("\n")) throw malformed("the checkpoint text must be non-empty and end with a newline");
  return Buffer.from(`${COSIGNATURE_V1_HEADER}\ntime ${timestamp}\n${text}`, "utf8");
}

/** The cosignature/v1 key ID of `name` and a raw Ed25519 public key. */
export function cosignatureKeyId(name: string, rawKey: Uint8Array): number {
  return computeKeyId(name, Buffer.concat([Buffer.of(COSIGNATURE_V1_TYPE), rawKey]));
}

/** The witness verifier key `<name>+<hex key ID>+<base64(0x04 || public key)>`. */
export function formatCosignerVerifierKey(name: string, publicKey: KeyObject): string {
  checkKeyName(name);
  const raw = rawEd25519PublicKey(publicKey);
  return `${name}+${formatKeyId(cosignatureKeyId(name, raw))}+${Buffer.concat([Buffer.of(COSIGNATURE_V1_TYPE), raw]).toString("base64")}`;
}

/** Makes cosignature/v1 signature lines with one witness key. */
export interface Cosigner {
  readonly name: string;
  readonly keyId: number;
  /** The witness's verifier key (type 0x04). */
  readonly vkey: string;
  /** The signature line (with its newline) cosigning checkpoint note text `text` at `timestamp` (POSIX seconds). */
  cosign(text: string, timestamp: number): string;
}

/**
 * A {@link Cosigner} over an Ed25519 key: `sign` signs raw bytes (a key
 * manager's signer, or node:crypto over a private key in tests).
 *
 * @throws SigilError `ERR_KEY_UNSUPPORTED` for a key that is not Ed25519; `ERR_TLOG_MALFORMED` for a bad name.
 */
export function createCosigner(name: string, publicKey: KeyObject, sign: (message: Uint8Array) => Uint8Array): Cosigner {
  checkKeyName(name);
  const raw = rawEd25519PublicKey(publicKey);
  const keyId = cosignatureKeyId(name, raw);
  return {
    name,
    keyId,
    vkey: formatCosignerVerifierKey(name, publicKey),
    cosign(text, timestamp) {
      const signature = sign(cosignatureMessage(text, timestamp));
      if (signature.length !== ED25519_SIG_SIZE) throw new SigilError("ERR_INTERNAL", `cosignature: the signer returned ${signature.length} bytes, an Ed25519 signature has ${ED25519_SIG_SIZE}`);
      const body = Buffer.alloc(TIMESTAMP_SIZE + ED25519_SIG_SIZE);
      body.writeBigUInt64BE(BigInt(timestamp), 0);
      body.set(signature, TIMESTAMP_SIZE);
      return signatureLine(name, keyId, body);
    },
  };
}

/** A fresh witness key in memory (tests, tools): its cosigner and verifier key. */
export function generateCosigner(name: string): Cosigner {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return createCosigner(name, publicKey, (m) => cryptoSign(null, m, privateKey));
}

/**
 * Checks cosignatures of one witness. As a {@link NoteVerifier} its `verify`
 * takes the checkpoint note text and the bytes after the key ID, so it also
 * works with `openNote`.
 */
export interface CosignatureVerifier extends NoteVerifier {
  /** The verifier key it was parsed from. */
  readonly vkey: string;
  /** The raw 32-byte Ed25519 public key: one key is one witness, whatever name it is listed under. */
  readonly publicKey: Uint8Array;
  /** The cosignature's timestamp (POSIX seconds) when `signature` cosigns `text`, else undefined. */
  verifyCosignature(text: string, signature: Uint8Array): number | undefined;
}

/**
 * Parses a witness verifier key `<name>+<hex key ID>+<base64(0x04 || 32-byte key)>`;
 * the key ID must be the one the name and key hash to.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` naming what is wrong.
 */
export function parseCosignerVerifierKey(vkey: string): CosignatureVerifier {
  if (typeof vkey !== "string") throw malformed(`a witness key is a string, got ${typeof vkey}`);
  const a = vkey.indexOf("+");
  const b = a < 0 ? -1 : vkey.indexOf("+", a + 1);
  if (b < 0) throw malformed("a witness key has the form <name>+<key id>+<base64 key>");
  const name = vkey.slice(0, a);
  const hex = vkey.slice(a + 1, b);
  checkKeyName(name);
  if (!/^[0-9a-f]{8}$/i.test(hex)) throw malformed(`the key ID ${JSON.stringify(hex)} of witness key ${name} is not 8 hex digits`);
  const typed = decodeBase64Strict(vkey.slice(b + 1), `witness key ${name}`);
  if (typed[0] !== COSIGNATURE_V1_TYPE) {
    throw malformed(`witness key ${name} has signature type ${typed.length === 0 ? "(none)" : `0x${(typed[0] as number).toString(16).padStart(2, "0")}`}; cosignature/v1 Ed25519 keys have type 0x04 (0x01 is a log key)`);
  }
  if (typed.length !== 1 + ED25519_KEY_SIZE) throw malformed(`witness key ${name} has ${typed.length - 1} key bytes, an Ed25519 key has ${ED25519_KEY_SIZE}`);
  const raw = typed.subarray(1);
  const keyId = cosignatureKeyId(name, raw);
  if (keyId !== Number.parseInt(hex, 16)) throw malformed(`witness key ${name}: key ID ${hex.toLowerCase()} does not match the name and key (they hash to ${formatKeyId(keyId)})`);
  const key = ed25519PublicKeyFromRaw(raw);
  const verifyCosignature = (text: string, signature: Uint8Array): number | undefined => {
    if (signature.length !== TIMESTAMP_SIZE + ED25519_SIG_SIZE) return undefined;
    const ts = Buffer.from(signature.buffer, signature.byteOffset, signature.length).readBigUInt64BE(0);
    if (ts > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
    const timestamp = Number(ts);
    let message: Buffer;
    try {
      message = cosignatureMessage(text, timestamp);
    } catch {
      return undefined;
    }
    return cryptoVerify(null, message, key, signature.subarray(TIMESTAMP_SIZE)) ? timestamp : undefined;
  };
  return {
    name,
    keyId,
    vkey,
    publicKey: Buffer.from(raw),
    verifyCosignature,
    verify: (message, signature) => verifyCosignature(Buffer.from(message).toString("utf8"), signature) !== undefined,
  };
}

/**
 * Why two of `witnesses` are one witness, or undefined: a quorum must never
 * count one key twice (the same key listed twice, its key ID spelt in other
 * case, or one public key under two names — the signed message does not name
 * the witness, so a line relabelled to the second name verifies too).
 */
export function duplicateWitnessKey(witnesses: readonly Pick<CosignatureVerifier, "name" | "keyId" | "publicKey">[]): string | undefined {
  const seen = new Map<string, Pick<CosignatureVerifier, "name" | "keyId">>();
  for (const w of witnesses) {
    const raw = Buffer.from(w.publicKey).toString("hex");
    const first = seen.get(raw);
    if (first !== undefined) {
      const a = `${first.name}+${formatKeyId(first.keyId)}`;
      const b = `${w.name}+${formatKeyId(w.keyId)}`;
      return a === b ? `witness key ${a} is listed twice` : `witness keys ${a} and ${b} share one public key (one witness counted twice)`;
    }
    seen.set(raw, w);
  }
  return undefined;
}

/** The outcome of {@link checkCosignatures}. */
export interface CosignatureCheck {
  /** Witnesses with a valid cosignature, and its time. */
  readonly cosigned: readonly { readonly witness: CosignatureVerifier; readonly timestamp: number }[];
  /** Witnesses without one, and why. */
  readonly missing: readonly { readonly witness: CosignatureVerifier; readonly reason: CosignatureMissing }[];
}

/** Why a witness's cosignature does not count. */
export type CosignatureMissing = "no cosignature" | "invalid cosignature" | "timestamp in the future" | "cosignature too old";

/** Time bounds of {@link checkCosignatures} (POSIX seconds). */
export interface CosignatureTimeLimits {
  /** The current time. */
  readonly now: number;
  /** How far past `now` a cosignature's timestamp may be (clock skew); later ones do not count. */
  readonly maxFutureSeconds: number;
  /** When set, a cosignature older than this does not count. */
  readonly maxAgeSeconds?: number | undefined;
}

/**
 * Checks the cosignatures of a signed checkpoint against witness keys and
 * refuses it unless at least `quorum` of the witnesses cosigned it. The
 * log's own signature is not checked here (`openCheckpoint` does that);
 * lines of other keys are ignored. With `time`, a cosignature dated in the
 * future (beyond the skew) or older than the maximum age does not count.
 *
 * @throws SigilError `ERR_TLOG_SIGNATURE_INVALID` below the quorum, naming every
 *   witness missing; `ERR_INVALID_ARGUMENT` for a quorum outside 1 … witnesses or
 *   two witnesses sharing one public key; `ERR_TLOG_MALFORMED`.
 */
export function checkCosignatures(
  note: string | Uint8Array,
  witnesses: readonly CosignatureVerifier[],
  quorum: number = witnesses.length,
  limits: NoteLimits = {},
  time?: CosignatureTimeLimits,
): CosignatureCheck {
  if (!Number.isInteger(quorum) || quorum < 1 || quorum > witnesses.length) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `cosignature: the quorum must be from 1 to the ${witnesses.length} witness key(s) given, got ${String(quorum)}`);
  }
  const duplicate = duplicateWitnessKey(witnesses);
  if (duplicate !== undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `cosignature: ${duplicate}`);
  const parsed = parseNote(note, limits);
  const cosigned: { witness: CosignatureVerifier; timestamp: number }[] = [];
  const missing: { witness: CosignatureVerifier; reason: CosignatureMissing }[] = [];
  for (const w of witnesses) {
    const best = newestCosignature(parsed.text, parsed.signatures, w);
    let reason: CosignatureMissing | undefined;
    if (best === undefined) reason = parsed.signatures.some((s) => s.name === w.name && s.keyId === w.keyId) ? "invalid cosignature" : "no cosignature";
    else if (time !== undefined && best.timestamp > time.now + time.maxFutureSeconds) reason = "timestamp in the future";
    else if (time?.maxAgeSeconds !== undefined && best.timestamp < time.now - time.maxAgeSeconds) reason = "cosignature too old";
    if (reason === undefined && best !== undefined) cosigned.push({ witness: w, timestamp: best.timestamp });
    else missing.push({ witness: w, reason: reason ?? "no cosignature" });
  }
  if (cosigned.length < quorum) {
    const names = missing.map((m) => `${m.witness.name}+${formatKeyId(m.witness.keyId)} (${m.reason})`).join(", ");
    throw new SigilError("ERR_TLOG_SIGNATURE_INVALID", `cosignature: the checkpoint is cosigned by ${cosigned.length} of the ${witnesses.length} witnesses, ${quorum} required; missing: ${names}`);
  }
  return { cosigned, missing };
}

/**
 * Of `signatures`, the line of witness `w` that cosigns `text` with the
 * newest timestamp, or undefined when none does. Identical lines are
 * verified once.
 */
export function newestCosignature(text: string, signatures: readonly NoteSignature[], w: CosignatureVerifier): { readonly signature: NoteSignature; readonly timestamp: number } | undefined {
  let best: { signature: NoteSignature; timestamp: number } | undefined;
  const tried = new Set<string>();
  for (const s of signatures) {
    if (s.name !== w.name || s.keyId !== w.keyId) continue;
    const key = Buffer.from(s.signature).toString("base64");
    if (tried.has(key)) continue;
    tried.add(key);
    const timestamp = w.verifyCosignature(text, s.signature);
    if (timestamp !== undefined && (best === undefined || timestamp > best.timestamp)) best = { signature: s, timestamp };
  }
  return best;
}

/**
 * `note` with the signature lines `lines` added; a line from a key the note
 * already carries a line of (same name and key ID) replaces it, and of
 * several added lines of one key the last is kept. With `keep`, only lines
 * it accepts stay (e.g. the log's own and the configured witnesses').
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` for a malformed note or line, or
 *   when the result would carry more than {@link DEFAULT_MAX_SIGNATURES} lines
 *   (a note `parseNote` would refuse).
 */
export function addSignatureLines(note: string, lines: string, keep?: (s: NoteSignature) => boolean): string {
  const base = parseNote(note);
  const added = parseNote(`${base.text}\n${lines}`).signatures;
  const id = (s: { name: string; keyId: number }): string => `${s.name}+${s.keyId}`;
  const byKey = new Map<string, NoteSignature>();
  for (const s of [...base.signatures, ...added]) {
    if (keep !== undefined && !keep(s)) continue;
    byKey.delete(id(s));
    byKey.set(id(s), s);
  }
  if (byKey.size === 0) throw malformed("no signature line would be left");
  if (byKey.size > DEFAULT_MAX_SIGNATURES) throw malformed(`the note would carry ${byKey.size} signature lines, more than the ${DEFAULT_MAX_SIGNATURES} a note may have`);
  return `${base.text}\n${[...byKey.values()].map((s) => signatureLine(s.name, s.keyId, s.signature)).join("")}`;
}
