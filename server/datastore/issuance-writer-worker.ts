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

parentPort?.on("message", (m: { id: number; records: IssuanceInput[] }) => {
  try {
    insertAll.immediate(m.records.map((r, i) => normalizeIssuance(r, i)));
    parentPort?.postMessage({ id: m.id });
  } catch (e) {
    parentPort?.postMessage({ id: m.id, error: { code: isSigilError(e) ? e.code : "ERR_UNAVAILABLE", message: isSigilError(e) ? e.message : `datastore: cannot record issuances: ${(e as Error).message}` } });
  }
});
