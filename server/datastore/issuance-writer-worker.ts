/**
 * Worker side of {@link IssuanceWriter}: inserts validated issuance batches on
 * its own connection (WAL, synchronous=FULL and foreign keys, like the main one).
 */
import { parentPort, workerData } from "node:worker_threads";
import Database from "better-sqlite3";
import { isSigilError } from "../../spiffe/errors.js";
import type { IssuanceContext } from "./issuance-batch.js";
import { unpackEntries, type WriterMessage } from "./issuance-writer.js";
import { insertIssuanceRows, IssuanceInserter } from "./sqlite-issuance-log.js";

const { dbPath, busyTimeoutMs } = workerData as { dbPath: string; busyTimeoutMs: number };
const db = new Database(dbPath, { timeout: busyTimeoutMs });
db.pragma("journal_mode = WAL");
db.pragma("synchronous = FULL");
db.pragma("foreign_keys = ON");
const inserter = new IssuanceInserter(db);
const contexts = new Map<number, IssuanceContext>();
const contextOf = (ref: number): IssuanceContext => {
  const ctx = contexts.get(ref);
  if (!ctx) throw new Error(`issuance writer: unknown context reference ${ref}`);
  return ctx;
};

// Group commit: batches that arrive while one is being written share the next
// transaction (one fsync for all).
let queue: WriterMessage[] = [];
let scheduled = false;

function flush(): void {
  scheduled = false;
  const batches = queue;
  queue = [];
  // The log index of each batch's first entry, as of the transaction that committed (a retry takes them anew).
  const firsts: (number | undefined)[] = [];
  try {
    insertIssuanceRows(db, inserter, () => {
      firsts.length = 0;
      for (const b of batches) {
        inserter.insertRows(b.rows, contextOf);
        firsts.push(inserter.appendTlog(unpackEntries(b.log)));
        if (b.checkpoint) inserter.putCheckpoint(b.checkpoint);
      }
    });
    batches.forEach((b, i) => parentPort?.postMessage({ id: b.id, firstIndex: firsts[i] }));
  } catch (e) {
    for (const b of batches) parentPort?.postMessage({ id: b.id, error: describe(e) });
  }
}

function describe(e: unknown): { code: string; message: string } {
  return isSigilError(e) ? { code: e.code, message: e.message } : { code: "ERR_UNAVAILABLE", message: `datastore: cannot record issuances: ${(e as Error).message}` };
}

parentPort?.on("message", (m: WriterMessage) => {
  // References are taken in arrival order, so a batch always finds its contexts.
  if (m.reset) {
    if (queue.length > 0) flush(); // queued batches still name the old references
    contexts.clear();
  }
  for (const [ref, ctx] of m.defs) contexts.set(ref, ctx);
  queue.push(m);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
});
