/**
 * The issuance log's SQLite storage, shared by the datastore and its writer
 * thread: contexts are interned once (`issuance_contexts`), and each credential
 * is a small row (`issuances`) naming its context.
 */
import type BetterSqlite3 from "better-sqlite3";
import { ISSUANCE_ROW_WIDTH, type IssuanceContext } from "./issuance-batch.js";
import type { TlogEntryInput } from "./tlog.js";

/** Columns of a joined issuance row, as `listIssuances` reads them. */
export const ISSUANCE_SELECT_SQL = `SELECT i.row_id, i.serial, c.kind, c.spiffe_id, c.entry_id, c.agent_id, c.ca_key_id, i.not_before, i.not_after,
  i.issued_at, c.selectors, c.requested_by, i.jwt_id, c.audience FROM issuances i JOIN issuance_contexts c ON c.context_id = i.context_id`;

/** Rows deleted per pruning transaction, so a large prune never holds the write lock for long. */
export const PRUNE_CHUNK_ROWS = 5_000;

/** Deletes up to {@link PRUNE_CHUNK_ROWS} credentials that expired before `?`. */
export const PRUNE_ISSUANCES_CHUNK_SQL = `DELETE FROM issuances WHERE row_id IN
  (SELECT row_id FROM issuances WHERE not_after < ? LIMIT ${PRUNE_CHUNK_ROWS})`;

/** Deletes contexts no credential names any more. */
export const PRUNE_ORPHAN_CONTEXTS_SQL =
  "DELETE FROM issuance_contexts WHERE NOT EXISTS (SELECT 1 FROM issuances i WHERE i.context_id = issuance_contexts.context_id)";

const UPSERT_CONTEXT_SQL = `INSERT INTO issuance_contexts (kind, spiffe_id, entry_id, agent_id, ca_key_id, selectors, requested_by, audience)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?)
  ON CONFLICT (spiffe_id, entry_id, agent_id, ca_key_id, kind, selectors, requested_by, audience) DO UPDATE SET kind = excluded.kind
  RETURNING context_id`;
const INSERT_ROW_SQL = "INSERT INTO issuances (context_id, serial, not_before, not_after, issued_at, jwt_id) VALUES (?, ?, ?, ?, ?, ?)";
const NEXT_TLOG_INDEX_SQL = "SELECT next_idx FROM tlog_counter WHERE id = 0";
const SET_TLOG_INDEX_SQL = "UPDATE tlog_counter SET next_idx = ? WHERE id = 0";
const INSERT_TLOG_SQL = "INSERT INTO tlog_entries (idx, lookup_key, entry) VALUES (?, ?, ?)";
/** Stores a checkpoint (server ID, tree size, root hash, note, created at ms), replacing one of the same size. */
export const PUT_TLOG_CHECKPOINT_SQL = `INSERT INTO tlog_checkpoints (server_id, tree_size, root_hash, note, created_at) VALUES (?, ?, ?, ?, ?)
  ON CONFLICT (server_id, tree_size) DO UPDATE SET root_hash = excluded.root_hash, note = excluded.note, created_at = excluded.created_at`;

/** A validated checkpoint as the writer thread stores it. */
export interface TlogCheckpointRow {
  readonly serverId: string;
  readonly treeSize: number;
  readonly rootHash: Uint8Array;
  readonly note: string;
  readonly createdAtMs: number;
}

/** Most context IDs remembered per connection. */
const MAX_CACHED_IDS = 50_000;

/**
 * Inserts issuance rows on one connection, remembering context IDs. The
 * connection must enforce foreign keys: a pruned context then fails the insert
 * instead of leaving a dangling row, and {@link insertIssuanceRows} retries.
 */
export class IssuanceInserter {
  readonly #upsert: BetterSqlite3.Statement;
  readonly #insert: BetterSqlite3.Statement;
  readonly #ids = new Map<string, number>();
  readonly #nextTlog: BetterSqlite3.Statement;
  readonly #setTlog: BetterSqlite3.Statement;
  readonly #insertTlog: BetterSqlite3.Statement;
  readonly #putCheckpoint: BetterSqlite3.Statement;

  constructor(db: BetterSqlite3.Database) {
    this.#putCheckpoint = db.prepare(PUT_TLOG_CHECKPOINT_SQL);
    this.#upsert = db.prepare(UPSERT_CONTEXT_SQL);
    this.#insert = db.prepare(INSERT_ROW_SQL);
    this.#nextTlog = db.prepare(NEXT_TLOG_INDEX_SQL);
    this.#setTlog = db.prepare(SET_TLOG_INDEX_SQL);
    this.#insertTlog = db.prepare(INSERT_TLOG_SQL);
  }

  /**
   * Appends transparency-log entries at the next indices (inside the caller's
   * transaction); returns the index of the first, undefined when there are none.
   */
  appendTlog(entries: readonly TlogEntryInput[]): number | undefined {
    if (entries.length === 0) return undefined;
    const first = (this.#nextTlog.get() as { next_idx: number }).next_idx;
    let next = first;
    for (const e of entries) this.#insertTlog.run(next++, e.lookupKey, e.entry);
    this.#setTlog.run(next);
    return first;
  }

  /** Stores a checkpoint (inside the caller's transaction). */
  putCheckpoint(c: TlogCheckpointRow): void {
    this.#putCheckpoint.run(c.serverId, c.treeSize, Buffer.from(c.rootHash.buffer, c.rootHash.byteOffset, c.rootHash.byteLength), c.note, c.createdAtMs);
  }

  /** The stored ID of `ctx`, creating the context row on first use. */
  contextId(ctx: IssuanceContext): number {
    let id = this.#ids.get(ctx.key);
    if (id === undefined) {
      const row = this.#upsert.get(ctx.kind, ctx.spiffeId, ctx.entryId, ctx.agentId, ctx.caKeyId, ctx.selectors, ctx.requestedBy, ctx.audience) as { context_id: number };
      id = row.context_id;
      if (this.#ids.size >= MAX_CACHED_IDS) this.#ids.clear();
      this.#ids.set(ctx.key, id);
    }
    return id;
  }

  /** Inserts the credential rows of a normalised batch; `contextOf` resolves a row's context reference. */
  insertRows(rows: readonly (string | number | null)[], contextOf: (ref: number) => IssuanceContext): void {
    for (let i = 0; i < rows.length; i += ISSUANCE_ROW_WIDTH) {
      this.#insert.run(this.contextId(contextOf(rows[i] as number)), rows[i + 1], rows[i + 2], rows[i + 3], rows[i + 4], rows[i + 5]);
    }
  }

  /** Forgets every remembered ID (after contexts were pruned under us). */
  forget(): void {
    this.#ids.clear();
  }
}

/**
 * Runs `write` (which inserts through `inserter`) in an IMMEDIATE transaction.
 * A failed transaction may have remembered IDs of contexts it rolled back, so
 * they are forgotten. A foreign-key failure means a remembered context was
 * pruned by another connection (context IDs are never reused): the
 * transaction is run once more.
 */
export function insertIssuanceRows(db: BetterSqlite3.Database, inserter: IssuanceInserter, write: () => void): void {
  const txn = db.transaction(write);
  try {
    txn.immediate();
  } catch (e) {
    inserter.forget();
    if ((e as { code?: string }).code !== "SQLITE_CONSTRAINT_FOREIGNKEY") throw e;
    try {
      txn.immediate();
    } catch (again) {
      inserter.forget();
      throw again;
    }
  }
}
