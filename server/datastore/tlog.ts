/**
 * The transparency log's storage: entries with contiguous indices from 0
 * (appended in the same transaction as the issuance records they describe),
 * the checkpoints each server signed, and each server's log keys (retired ones
 * kept so old checkpoints stay verifiable). Entries are opaque bytes here; the
 * log service (server/tlog/) encodes them and builds the tree.
 */
import { invalid } from "./validate.js";

/** One entry to append. */
export interface TlogEntryInput {
  /** What the entry is found by (`serial:<hex>`, `jwt:<sha256>`, …), at most 200 ASCII characters. */
  readonly lookupKey: string;
  /** The entry's bytes, 1 … 65,535. */
  readonly entry: Uint8Array;
}

/** A stored entry and its index. */
export interface TlogStoredEntry {
  readonly index: number;
  readonly entry: Uint8Array;
}

/** A checkpoint a server signed. */
export interface TlogCheckpointRecord {
  readonly serverId: string;
  readonly treeSize: number;
  /** 32 bytes. */
  readonly rootHash: Uint8Array;
  /** The signed note. */
  readonly note: string;
  readonly createdAt: Date;
}

/** A server's log key. */
export interface TlogKeyRecord {
  readonly serverId: string;
  /** The key manager's key ID, `tlog-<n>`. */
  readonly keyId: string;
  /** C2SP note verifier key. */
  readonly vkey: string;
  readonly createdAt: Date;
  /** When it stopped signing; `null` while current. */
  readonly retiredAt: Date | null;
}

/** The latest checkpoint of another log this server cosigned as a witness (one per origin). */
export interface WitnessCheckpointRecord {
  /** The witnessed log's origin line. */
  readonly origin: string;
  readonly treeSize: number;
  /** 32 bytes. */
  readonly rootHash: Uint8Array;
  /** The signed checkpoint as the log submitted it. */
  readonly note: string;
  readonly updatedAt: Date;
}

/** Longest origin a witness keeps state for. */
export const MAX_WITNESS_ORIGIN = 255;

/** Most entries one `readTlogEntries` call returns. */
export const MAX_TLOG_READ = 10_000;
/** Longest lookup key. */
export const MAX_TLOG_LOOKUP_KEY = 200;

/**
 * Checks entries to append.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the first bad entry and field.
 */
export function checkTlogEntries(entries: readonly TlogEntryInput[] | undefined): readonly TlogEntryInput[] {
  if (entries === undefined) return [];
  if (!Array.isArray(entries)) throw invalid("log entries must be an array");
  entries.forEach((e: TlogEntryInput, i) => {
    if (e === null || typeof e !== "object") throw invalid(`logEntries[${i}] must be an object`);
    if (typeof e.lookupKey !== "string" || e.lookupKey.length === 0 || e.lookupKey.length > MAX_TLOG_LOOKUP_KEY || !/^[\x21-\x7e]+$/.test(e.lookupKey)) {
      throw invalid(`logEntries[${i}] lookupKey must be 1 to ${MAX_TLOG_LOOKUP_KEY} printable ASCII characters`);
    }
    if (!(e.entry instanceof Uint8Array) || e.entry.length === 0 || e.entry.length > 0xffff) throw invalid(`logEntries[${i}] entry must be 1 to 65535 bytes`);
  });
  return entries;
}

/** Checks a `[start, end)` range of indices to read. */
export function checkTlogRange(start: number, end: number): void {
  if (!Number.isSafeInteger(start) || start < 0) throw invalid(`log read start must be a non-negative integer, got ${String(start)}`);
  if (!Number.isSafeInteger(end) || end < start) throw invalid(`log read end must be an integer ≥ start, got ${String(end)}`);
  if (end - start > MAX_TLOG_READ) throw invalid(`log reads take at most ${MAX_TLOG_READ} entries, asked for ${end - start}`);
}

/** Checks a checkpoint record before it is stored. */
export function checkTlogCheckpoint(c: TlogCheckpointRecord): void {
  if (c === null || typeof c !== "object") throw invalid("log checkpoint must be an object");
  if (typeof c.serverId !== "string" || c.serverId.length > 64) throw invalid("log checkpoint serverId must be a string of at most 64 characters");
  if (!Number.isSafeInteger(c.treeSize) || c.treeSize < 0) throw invalid("log checkpoint treeSize must be a non-negative integer");
  if (!(c.rootHash instanceof Uint8Array) || c.rootHash.length !== 32) throw invalid("log checkpoint rootHash must be 32 bytes");
  if (typeof c.note !== "string" || c.note.length === 0 || c.note.length > 65_536) throw invalid("log checkpoint note must be 1 to 65536 characters");
  if (!(c.createdAt instanceof Date) || Number.isNaN(c.createdAt.getTime())) throw invalid("log checkpoint createdAt must be a valid Date");
}

/** Checks a witness checkpoint record before it is stored. */
export function checkWitnessCheckpoint(c: WitnessCheckpointRecord): void {
  if (c === null || typeof c !== "object") throw invalid("witness checkpoint must be an object");
  checkWitnessOrigin(c.origin);
  if (!Number.isSafeInteger(c.treeSize) || c.treeSize < 0) throw invalid("witness checkpoint treeSize must be a non-negative integer");
  if (!(c.rootHash instanceof Uint8Array) || c.rootHash.length !== 32) throw invalid("witness checkpoint rootHash must be 32 bytes");
  if (typeof c.note !== "string" || c.note.length === 0 || c.note.length > 65_536) throw invalid("witness checkpoint note must be 1 to 65536 characters");
  if (!(c.updatedAt instanceof Date) || Number.isNaN(c.updatedAt.getTime())) throw invalid("witness checkpoint updatedAt must be a valid Date");
}

/** Checks a witnessed log's origin. */
export function checkWitnessOrigin(origin: string): void {
  if (typeof origin !== "string" || origin.length === 0 || origin.length > MAX_WITNESS_ORIGIN || origin.includes("\n")) {
    throw invalid(`witness checkpoint origin must be one line of 1 to ${MAX_WITNESS_ORIGIN} characters`);
  }
}

/** Checks a key record before it is stored. */
export function checkTlogKey(k: TlogKeyRecord): void {
  if (k === null || typeof k !== "object") throw invalid("log key must be an object");
  if (typeof k.serverId !== "string" || k.serverId.length > 64) throw invalid("log key serverId must be a string of at most 64 characters");
  if (typeof k.keyId !== "string" || k.keyId.length === 0 || k.keyId.length > 128) throw invalid("log key keyId must be 1 to 128 characters");
  if (typeof k.vkey !== "string" || k.vkey.length === 0 || k.vkey.length > 1024) throw invalid("log key vkey must be 1 to 1024 characters");
  if (!(k.createdAt instanceof Date) || Number.isNaN(k.createdAt.getTime())) throw invalid("log key createdAt must be a valid Date");
  if (k.retiredAt !== null && (!(k.retiredAt instanceof Date) || Number.isNaN(k.retiredAt.getTime()))) throw invalid("log key retiredAt must be a valid Date or null");
}
