/**
 * Worker side of {@link IssuanceWriter}: validates and inserts issuance
 * records on its own connection (WAL, synchronous=FULL, like the main one).
 */
import { parentPort, workerData } from "node:worker_threads";
import Database from "better-sqlite3";
import { isSigilError } from "../../spiffe/errors.js";
import type { IssuanceInput } from "./issuance.js";
import { INSERT_ISSUANCE_SQL } from "./sqlite-issuance-sql.js";
import { normalizeIssuance } from "./validate.js";

const { dbPath, busyTimeoutMs } = workerData as { dbPath: string; busyTimeoutMs: number };
const db = new Database(dbPath, { timeout: busyTimeoutMs });
db.pragma("journal_mode = WAL");
db.pragma("synchronous = FULL");
const insert = db.prepare(INSERT_ISSUANCE_SQL);
const insertAll = db.transaction((rows: ReturnType<typeof normalizeIssuance>[]) => {
  for (const n of rows) insert.run(n.serial, n.kind, n.spiffeId, n.entryId, n.agentId, n.caKeyId, n.notBefore, n.notAfter, n.issuedAt, n.selectors, n.requestedBy, n.jwtId, n.audience);
});

// Group commit: batches that arrive while one is being written share the next
// transaction (one fsync for all). A batch with an invalid record is refused on
// its own and never blocks the others.
let queue: { id: number; records: IssuanceInput[] }[] = [];
let scheduled = false;

function flush(): void {
  scheduled = false;
  const batches = queue;
  queue = [];
  const good: { id: number; rows: ReturnType<typeof normalizeIssuance>[] }[] = [];
  for (const b of batches) {
    try {
      good.push({ id: b.id, rows: b.records.map((r, i) => normalizeIssuance(r, i)) });
    } catch (e) {
      parentPort?.postMessage({ id: b.id, error: describe(e) });
    }
  }
  if (good.length === 0) return;
  try {
    insertAll.immediate(good.flatMap((g) => g.rows));
    for (const g of good) parentPort?.postMessage({ id: g.id });
  } catch (e) {
    for (const g of good) parentPort?.postMessage({ id: g.id, error: describe(e) });
  }
}

function describe(e: unknown): { code: string; message: string } {
  return isSigilError(e) ? { code: e.code, message: e.message } : { code: "ERR_UNAVAILABLE", message: `datastore: cannot record issuances: ${(e as Error).message}` };
}

parentPort?.on("message", (m: { id: number; records: IssuanceInput[] }) => {
  queue.push(m);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
});
