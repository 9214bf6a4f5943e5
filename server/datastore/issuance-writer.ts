/**
 * Writes issuance records from a worker thread with its own SQLite connection,
 * so index updates and the commit's fsync do not stall the event loop that
 * signs SVIDs. Callers still await the commit: an SVID is handed out only
 * after its record is durable. Records arrive validated; each context crosses
 * to the worker once and is named by a small number afterwards.
 */
import type { Worker } from "node:worker_threads";
import { startModuleWorker } from "../../common/worker.js";
import { SigilError } from "../../spiffe/errors.js";
import { ISSUANCE_ROW_WIDTH, type IssuanceContext, type NormalizedIssuanceBatch } from "./issuance-batch.js";
import type { TlogCheckpointRow } from "./sqlite-issuance-log.js";
import type { TlogEntryInput } from "./tlog.js";

/** Most contexts the worker is told about before both sides start over. */
const MAX_CONTEXT_REFS = 50_000;

/** What the writer posts to its worker. */
export interface WriterMessage {
  readonly id: number;
  /** Forget every context reference before reading `defs`. */
  readonly reset: boolean;
  /** Contexts the worker has not been told about yet, with their reference numbers. */
  readonly defs: readonly (readonly [number, IssuanceContext])[];
  /** Rows as in {@link NormalizedIssuanceBatch.rows}, with context references in place of indexes. */
  readonly rows: readonly (string | number | null)[];
  /** Transparency-log entries appended in the same transaction. */
  readonly log: PackedTlogEntries;
  /** A checkpoint to store in the same transaction. */
  readonly checkpoint?: TlogCheckpointRow | undefined;
}

/**
 * Log entries laid end to end in one buffer that is transferred to the
 * worker, not cloned: entry `i` is `bytes[ends[i-1] ?? 0, ends[i])`.
 */
export interface PackedTlogEntries {
  readonly keys: readonly string[];
  readonly ends: readonly number[];
  readonly bytes: Uint8Array;
}

const NO_ENTRIES: PackedTlogEntries = { keys: [], ends: [], bytes: new Uint8Array(0) };

/**
 * Packs entries for {@link WriterMessage.log} into a buffer of their own.
 * Entries encoded together are adjacent views of one buffer
 * (`encodeCredentialEntries`): each such run is copied at once.
 */
function packEntries(log: readonly TlogEntryInput[]): PackedTlogEntries {
  if (log.length === 0) return NO_ENTRIES;
  let total = 0;
  for (const e of log) total += e.entry.length;
  // Not pooled (its ArrayBuffer is transferred) and not zero-filled (every byte is written below).
  const bytes = Buffer.allocUnsafeSlow(total);
  const ends = new Array<number>(log.length);
  const keys = new Array<string>(log.length);
  let at = 0;
  // The run of adjacent entries not copied yet: [runFrom, runTo) of runBuffer.
  let runBuffer: ArrayBufferLike | undefined;
  let runFrom = 0;
  let runTo = 0;
  const copyRun = (): void => {
    if (runBuffer === undefined || runTo === runFrom) return;
    bytes.set(new Uint8Array(runBuffer, runFrom, runTo - runFrom), at - (runTo - runFrom));
  };
  for (let i = 0; i < log.length; i++) {
    const e = log[i] as TlogEntryInput;
    const entry = e.entry;
    if (entry.buffer !== runBuffer || entry.byteOffset !== runTo) {
      copyRun();
      runBuffer = entry.buffer;
      runFrom = entry.byteOffset;
      runTo = runFrom;
    }
    runTo += entry.length;
    at += entry.length;
    ends[i] = at;
    keys[i] = e.lookupKey;
  }
  copyRun();
  return { keys, ends, bytes };
}

/** The entries of a {@link PackedTlogEntries}, as views into its buffer. */
export function unpackEntries(p: PackedTlogEntries): TlogEntryInput[] {
  return p.keys.map((lookupKey, i) => {
    const start = i === 0 ? 0 : (p.ends[i - 1] as number);
    return { lookupKey, entry: Buffer.from(p.bytes.buffer, p.bytes.byteOffset + start, (p.ends[i] as number) - start) };
  });
}

interface Pending {
  resolve(firstIndex: number | undefined): void;
  reject(e: Error): void;
}

/** A worker-backed writer for `recordIssuances`. */
export class IssuanceWriter {
  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  #next = 1;
  /** Context key → the number the worker knows it by. */
  readonly #refs = new Map<string, number>();
  #closed = false;
  #dead: Error | undefined;

  constructor(dbPath: string, busyTimeoutMs: number) {
    this.#worker = startModuleWorker(import.meta.url, "issuance-writer-worker", { dbPath, busyTimeoutMs });
    this.#worker.on("message", (m: { id: number; firstIndex?: number; error?: { code: string; message: string } }) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (m.error) p.reject(new SigilError(m.error.code as "ERR_INVALID_ARGUMENT", m.error.message));
      else p.resolve(m.firstIndex);
    });
    this.#worker.on("error", (e) => this.#failAll(e));
    this.#worker.on("exit", () => this.#failAll(new Error("issuance writer exited")));
  }

  #failAll(e: Error): void {
    this.#dead = e;
    for (const p of this.#pending.values()) p.reject(new SigilError("ERR_UNAVAILABLE", `datastore: issuance writer failed: ${e.message}`, { cause: e }));
    this.#pending.clear();
  }

  /**
   * Writes a validated batch (and its log entries) in one transaction;
   * resolves once committed, to the log index of the first entry (undefined without entries).
   */
  write(batch: NormalizedIssuanceBatch, log: readonly TlogEntryInput[] = []): Promise<number | undefined> {
    if (this.#closed) return Promise.reject(new SigilError("ERR_UNAVAILABLE", "datastore: closed"));
    if (this.#dead) return Promise.reject(new SigilError("ERR_UNAVAILABLE", `datastore: issuance writer failed: ${this.#dead.message}`, { cause: this.#dead }));
    // The worker's table is reset with ours, so it never grows without bound.
    const reset = this.#refs.size + batch.contexts.length > MAX_CONTEXT_REFS;
    if (reset) this.#refs.clear();
    const defs: [number, IssuanceContext][] = [];
    const refOf = batch.contexts.map((ctx) => {
      let ref = this.#refs.get(ctx.key);
      if (ref === undefined) {
        ref = this.#refs.size;
        this.#refs.set(ctx.key, ref);
        defs.push([ref, ctx]);
      }
      return ref;
    });
    const rows = batch.rows.slice();
    for (let i = 0; i < rows.length; i += ISSUANCE_ROW_WIDTH) rows[i] = refOf[rows[i] as number] as number;
    return this.#post({ reset, defs, rows, log: packEntries(log) });
  }

  /** Stores a checkpoint in the next transaction; resolves once committed. */
  async putCheckpoint(checkpoint: TlogCheckpointRow): Promise<void> {
    if (this.#closed) throw new SigilError("ERR_UNAVAILABLE", "datastore: closed");
    if (this.#dead) throw new SigilError("ERR_UNAVAILABLE", `datastore: issuance writer failed: ${this.#dead.message}`, { cause: this.#dead });
    await this.#post({ reset: false, defs: [], rows: [], log: NO_ENTRIES, checkpoint });
  }

  #post(body: Omit<WriterMessage, "id">): Promise<number | undefined> {
    const id = this.#next++;
    return new Promise<number | undefined>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      const message: WriterMessage = { id, ...body };
      const bytes = body.log.bytes;
      // The packed entries are ours alone (never the shared empty one): moved, not copied.
      this.#worker.postMessage(message, bytes.byteLength > 0 ? [bytes.buffer as ArrayBuffer] : []);
    });
  }

  /** Stops the worker after outstanding writes. */
  async close(): Promise<void> {
    this.#closed = true;
    while (this.#pending.size > 0) await new Promise((r) => setTimeout(r, 5));
    await this.#worker.terminate();
  }
}
