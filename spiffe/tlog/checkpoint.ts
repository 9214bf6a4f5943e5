/**
 * C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): the note text
 * `<origin>\n<tree size>\n<base64 root hash>\n[extension lines]` signed as a
 * {@link ./note.ts} signed note.
 */
import { SigilError } from "../errors.js";
import { HASH_SIZE, MAX_TREE_SIZE } from "./hash.js";
import { decodeBase64Strict, openNote, signNote, type NoteLimits, type NoteSigner, type NoteVerifier, type OpenedNote } from "./note.js";

/** A log's signed tree head. */
export interface Checkpoint {
  /** The log's identity, e.g. `example.org/sigil/issuance`. */
  readonly origin: string;
  /** Number of entries in the tree. */
  readonly size: number;
  /** RFC 6962 root hash of the first `size` entries. */
  readonly rootHash: Uint8Array;
  /** Opaque extension lines (not recommended by the spec; kept for round trips). */
  readonly extensions: readonly string[];
}

/** A checkpoint and the note it was opened from. */
export interface OpenedCheckpoint {
  readonly checkpoint: Checkpoint;
  readonly note: OpenedNote;
}

function malformed(message: string): SigilError {
  return new SigilError("ERR_TLOG_MALFORMED", `checkpoint: ${message}`);
}

/**
 * The checkpoint note text.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the bad field.
 */
export function formatCheckpoint(cp: Checkpoint): string {
  if (cp.origin.length === 0 || cp.origin.includes("\n")) throw new SigilError("ERR_INVALID_ARGUMENT", "checkpoint: origin must be one non-empty line");
  if (!Number.isSafeInteger(cp.size) || cp.size < 0) throw new SigilError("ERR_INVALID_ARGUMENT", `checkpoint: size must be an integer from 0 to ${MAX_TREE_SIZE}, got ${String(cp.size)}`);
  if (cp.rootHash.length !== HASH_SIZE) throw new SigilError("ERR_INVALID_ARGUMENT", `checkpoint: rootHash must have ${HASH_SIZE} bytes, got ${cp.rootHash.length}`);
  cp.extensions.forEach((e, i) => {
    if (e.length === 0 || e.includes("\n")) throw new SigilError("ERR_INVALID_ARGUMENT", `checkpoint: extensions[${i}] must be one non-empty line`);
  });
  return [cp.origin, String(cp.size), Buffer.from(cp.rootHash).toString("base64"), ...cp.extensions].join("\n") + "\n";
}

/**
 * Parses checkpoint note text (not the signed note: see {@link openCheckpoint}).
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` naming the bad line.
 */
export function parseCheckpoint(text: string): Checkpoint {
  if (typeof text !== "string") throw malformed(`the text is a string, got ${typeof text}`);
  if (!text.endsWith("\n")) throw malformed("the text does not end with a newline");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw malformed(`the text has ${lines.length} lines, a checkpoint has at least 3 (origin, size, root hash)`);
  const [origin, sizeLine, rootLine, ...extensions] = lines as [string, string, string, ...string[]];
  if (origin.length === 0) throw malformed("the origin (line 1) is empty");
  if (!/^(0|[1-9][0-9]*)$/.test(sizeLine)) throw malformed(`the tree size (line 2) ${JSON.stringify(sizeLine.slice(0, 40))} is not a decimal number without leading zeroes`);
  const size = Number(sizeLine);
  if (!Number.isSafeInteger(size)) throw malformed(`the tree size (line 2) ${sizeLine} is larger than ${MAX_TREE_SIZE}`);
  let rootHash: Buffer;
  try {
    rootHash = decodeBase64Strict(rootLine, "the root hash (line 3)");
  } catch (e) {
    throw malformed((e as Error).message.replace(/^signed note: /, ""));
  }
  if (rootHash.length !== HASH_SIZE) throw malformed(`the root hash (line 3) has ${rootHash.length} bytes, expected ${HASH_SIZE}`);
  extensions.forEach((e, i) => {
    if (e.length === 0) throw malformed(`extension line ${i + 4} is empty`);
  });
  return { origin, size, rootHash, extensions };
}

/** Signs a checkpoint as a note with each signer. */
export function signCheckpoint(cp: Checkpoint, signers: readonly NoteSigner[]): string {
  return signNote(formatCheckpoint(cp), signers);
}

/** Options of {@link openCheckpoint}. */
export interface OpenCheckpointOptions extends NoteLimits {
  /** The origin the log must use; a checkpoint for another log is refused. */
  readonly origin?: string;
  /**
   * Require a verified signature by a key named like the checkpoint's origin
   * (C2SP tlog-checkpoint: the key name is normally the origin; Sigil's log
   * keys always are). Without it, a trusted key of one log could vouch for a
   * checkpoint naming another. Default false (logs that name keys otherwise).
   */
  readonly keyNameIsOrigin?: boolean;
}

/**
 * Verifies a signed checkpoint against the log's keys and parses it.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED`, `ERR_TLOG_SIGNATURE_INVALID` (also
 *   when `keyNameIsOrigin` and no verified key is named like the origin), or
 *   `ERR_TLOG_INCONSISTENT` when it is for another origin.
 */
export function openCheckpoint(note: string | Uint8Array, verifiers: readonly NoteVerifier[], options: OpenCheckpointOptions = {}): OpenedCheckpoint {
  const opened = openNote(note, verifiers, options);
  const checkpoint = parseCheckpoint(opened.text);
  if (options.origin !== undefined && checkpoint.origin !== options.origin) {
    throw new SigilError("ERR_TLOG_INCONSISTENT", `checkpoint: origin ${JSON.stringify(checkpoint.origin)} is not the expected ${JSON.stringify(options.origin)}`);
  }
  if (options.keyNameIsOrigin && !opened.verified.some((sig) => sig.name === checkpoint.origin)) {
    const names = [...new Set(opened.verified.map((sig) => JSON.stringify(sig.name)))].join(", ");
    throw new SigilError("ERR_TLOG_SIGNATURE_INVALID", `checkpoint: origin ${JSON.stringify(checkpoint.origin)} is not the name of the trusted key that signed it (${names}); a log's key is named after its origin`);
  }
  return { checkpoint, note: opened };
}
