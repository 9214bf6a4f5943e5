/**
 * The SQLite datastore driver (better-sqlite3). See `index.ts` for the
 * durability and concurrency design; this file is the implementation.
 */
import { IssuanceNormalizer, type IssuanceContext } from "./issuance-batch.js";
import {
  insertIssuanceRows,
  IssuanceInserter,
  ISSUANCE_SELECT_SQL,
  PRUNE_CHUNK_ROWS,
  PRUNE_ISSUANCES_CHUNK_SQL,
  PRUNE_ORPHAN_CONTEXTS_SQL,
  PUT_TLOG_CHECKPOINT_SQL,
} from "./sqlite-issuance-log.js";
import { IssuanceWriter } from "./issuance-writer.js";
import { checkTlogCheckpoint, checkTlogEntries, checkTlogKey, checkTlogRange, checkWitnessCheckpoint, checkWitnessOrigin, type TlogCheckpointRecord, type TlogEntryInput, type TlogKeyRecord, type TlogStoredEntry, type WitnessCheckpointRecord } from "./tlog.js";
import { randomBytes } from "node:crypto";
import Database from "better-sqlite3";
import type BetterSqlite3 from "better-sqlite3";
import type { Clock } from "../../common/clock.js";
import { SigilError } from "../../spiffe/errors.js";
import { AGENT_FIELDS, type AgentChanges, type AgentField, type AgentFilter, type AgentInput, type AttestedAgent, type ListAgentsRequest } from "./agent.js";
import type { BundleDeleteMode, BundleInput, SetBundleOptions, StoredBundle } from "./bundle.js";
import type { CaJournalInput, CaJournalRecord, CaKeyKind } from "./ca-journal.js";
import type { ChangeEvent, ChangeKind, ChangeListener, ChangeOp } from "./change-event.js";
import { ChangeNotifier } from "./change-notifier.js";
import type { Datastore } from "./datastore.js";
import type { FederationRelationship, FederationRelationshipInput, FederationRelationshipWriteOptions } from "./federation-relationship.js";
import {
  ENTRY_FIELDS,
  type BatchItemResult,
  type EntryChanges,
  type EntryField,
  type EntryFilter,
  type EntryInput,
  type ListEntriesRequest,
  type RegistrationEntry,
} from "./entry.js";
import {
  checkInventoryRequest,
  foldInventory,
  countOnlyInventory,
  LIVE_INVENTORY_CONDITION,
  MAX_ISSUANCE_BATCH,
  toInventorySvid,
  type IssuanceInput,
  type IssuanceInventory,
  type IssuanceInventoryRequest,
  type IssuanceKind,
  type IssuanceRecord,
  type ListIssuancesRequest,
} from "./issuance.js";
import type { ConsumedJoinToken, JoinTokenInput } from "./join-token.js";
import { migrate } from "./migrate.js";
import { checkPageSize, decodePageToken, encodePageToken, MAX_PAGE_SIZE, type Page, type PageRequest } from "./page.js";
import { agentCondition, entryCondition, type SqlCondition } from "./sqlite-filters.js";
import {
  applyMask,
  checkDeleteMode,
  notFound,
  relationshipChanged,
  resolveMask,
  toAgent,
  toBundle,
  toEntry,
  toIssuance,
  toJournal,
  toRelationship,
  usableJoinToken,
  type AgentRowBase,
  type BundleRow,
  type CaJournalRow,
  type EntryRowBase,
  type FederationRelationshipRow,
  type IssuanceRow,
  type JoinTokenRow,
} from "./rows.js";
import { SQLITE_MIGRATIONS } from "./sqlite-migrations.js";
import {
  checkEntryId,
  checkJoinToken,
  checkSequence,
  checkSerialHex,
  checkSpiffeId,
  checkTime,
  checkTrustDomainName,
  invalid,
  joinTokenKey,
  normalizeAgent,
  normalizeBundle,
  normalizeCaJournal,
  normalizeEntry,
  normalizeFederationRelationship,
  normalizeJoinToken,
  type NormalizedAgent,
  type NormalizedEntry,
} from "./validate.js";

/** Options of {@link createSqliteDatastore}. */
export interface SqliteDatastoreOptions {
  /** Database file; created (with its schema) when missing. */
  readonly path: string;
  /** Source of every stored timestamp. */
  readonly clock: Clock;
  /** How long a write waits for another connection's lock before failing with `ERR_UNAVAILABLE` (default 5000 ms). */
  readonly busyTimeoutMs?: number;
  /** Generates entry IDs (default: 128 random bits, base64url). Must return URL-safe IDs. */
  readonly newEntryId?: () => string;
  /**
   * Write issuance records from a worker thread with its own connection, so
   * the commit does not stall the event loop (the server turns this on; it
   * needs a file path, not `:memory:`).
   */
  readonly issuanceWorker?: boolean;
  /** Receives errors thrown by change listeners (default: `process.emitWarning`). */
  readonly onListenerError?: (error: unknown, event: ChangeEvent) => void;
}

/**
 * Page size of a database this driver creates (bytes). Larger than SQLite's
 * 4 KiB default because of the transparency log: its ~1.4 KB entry rows are
 * appended in the issuance transactions, and with 4 KiB pages each group
 * commit writes (and checkpoints) several times as many WAL frames, each with
 * its own system calls. Measured on the issuance writer's statements (one
 * 1.4 KB row plus its lookup index entry, synchronous = FULL, 100 rows a
 * transaction): 8.0 µs of CPU a row with 4 KiB pages, 4.8 µs with 16 KiB;
 * small issuance rows cost the same either way (2.3 µs). See
 * docs/transparency.md, "Cost". An existing database keeps its page size.
 */
export const NEW_DATABASE_PAGE_SIZE = 16_384;

/** Default busy timeout, in milliseconds. */
export const DEFAULT_BUSY_TIMEOUT_MS = 5000;

interface EntryRow extends EntryRowBase {
  selectors_hash: string;
  selector_count: number;
  federates_with_count: number;
}

interface AgentRow extends AgentRowBase {
  selector_count: number;
}

interface EventRow {
  event_id: number;
  kind: ChangeKind;
  object_id: string;
  op: ChangeOp;
  at: number;
}

interface MemberRow {
  owner_row: number;
  type: string;
  value: string;
}

const STATEMENT_CACHE_LIMIT = 256;

function defaultEntryId(): string {
  return randomBytes(16).toString("base64url");
}

/** The registration_entries columns an entry's fields fill, bound in this one order by INSERT and UPDATE. */
const ENTRY_COLUMNS = [
  "spiffe_id",
  "parent_id",
  "selectors_hash",
  "selector_count",
  "federates_with_count",
  "x509_svid_ttl",
  "jwt_svid_ttl",
  "dns_names",
  "admin",
  "downstream",
  "hint",
  "expires_at",
] as const;

/** Values of {@link ENTRY_COLUMNS} for a normalized entry, in the same order. */
function entryColumnValues(n: NormalizedEntry): unknown[] {
  return [n.spiffeId, n.parentId, n.selectorsHash, n.selectors.length, n.federatesWith.length, n.x509SvidTtl, n.jwtSvidTtl, JSON.stringify(n.dnsNames), n.admin ? 1 : 0, n.downstream ? 1 : 0, n.hint, n.expiresAt];
}

const INSERT_ENTRY_SQL = `INSERT INTO registration_entries (id, ${ENTRY_COLUMNS.join(", ")}, created_at, updated_at, revision)
  VALUES (?, ${ENTRY_COLUMNS.map(() => "?").join(", ")}, ?, ?, 0) RETURNING row_id`;

const UPDATE_ENTRY_SQL = `UPDATE registration_entries SET ${ENTRY_COLUMNS.map((c) => `${c} = ?`).join(", ")}, updated_at = ?, revision = revision + 1 WHERE row_id = ?`;

/**
 * Opens (creating and migrating when needed) a SQLite datastore.
 *
 * @throws SigilError `ERR_INTERNAL` when the file's schema is newer than this
 * code knows, or the database cannot be opened in WAL mode.
 */
export async function createSqliteDatastore(options: SqliteDatastoreOptions): Promise<Datastore> {
  return SqliteDatastore.open(options);
}

class SqliteDatastore implements Datastore {
  readonly #db: BetterSqlite3.Database;
  readonly #clock: Clock;
  readonly #busyTimeoutMs: number;
  readonly #newEntryId: () => string;
  readonly #notifier: ChangeNotifier;
  readonly #statements = new Map<string, BetterSqlite3.Statement>();
  /** Validates issuance records, remembering contexts already checked. */
  readonly #issuanceNormalizer = new IssuanceNormalizer();
  /** Issuance inserts on this connection, prepared once (kept out of the bounded statement cache: they are on the hot path). */
  #issuanceInserter: IssuanceInserter | undefined;
  /** Runs its argument in a transaction; nested calls become savepoints. */
  readonly #txn: BetterSqlite3.Transaction<(fn: () => unknown) => unknown>;
  #closed = false;

  private constructor(db: BetterSqlite3.Database, options: SqliteDatastoreOptions, busyTimeoutMs: number) {
    this.#db = db;
    this.#clock = options.clock;
    this.#busyTimeoutMs = busyTimeoutMs;
    this.#newEntryId = options.newEntryId ?? defaultEntryId;
    this.#notifier = new ChangeNotifier(options.onListenerError);
    this.#txn = db.transaction((fn: () => unknown): unknown => fn());
    if (options.issuanceWorker && options.path !== ":memory:") this.#issuanceWriter = new IssuanceWriter(options.path, busyTimeoutMs);
  }

  readonly #issuanceWriter: IssuanceWriter | undefined;

  static open(options: SqliteDatastoreOptions): SqliteDatastore {
    const busyTimeoutMs = options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
    if (!Number.isInteger(busyTimeoutMs) || busyTimeoutMs < 0) throw invalid("busyTimeoutMs must be a non-negative integer");
    if (typeof options.path !== "string" || options.path.length === 0) throw invalid("path must be a non-empty string");
    let db: BetterSqlite3.Database;
    try {
      db = new Database(options.path, { timeout: busyTimeoutMs });
    } catch (e) {
      throw new SigilError("ERR_INTERNAL", `datastore: cannot open ${options.path}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    try {
      // A new database gets 16 KiB pages (the page size is fixed once the first table exists).
      if (options.path !== ":memory:" && db.pragma("page_count", { simple: true }) === 0) db.pragma(`page_size = ${NEW_DATABASE_PAGE_SIZE}`);
      const mode = db.pragma("journal_mode = WAL", { simple: true });
      if (mode !== "wal" && options.path !== ":memory:") {
        throw new SigilError("ERR_INTERNAL", `datastore: ${options.path} cannot use WAL journal mode (got ${String(mode)})`);
      }
      // Every commit is fsynced before it is reported: see the design note in index.ts.
      db.pragma("synchronous = FULL");
      db.pragma("foreign_keys = ON");
      migrate(db, SQLITE_MIGRATIONS, options.clock.now());
    } catch (e) {
      db.close();
      throw e instanceof SigilError ? e : new SigilError("ERR_INTERNAL", `datastore: cannot open ${options.path}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    return new SqliteDatastore(db, options, busyTimeoutMs);
  }

  // ── plumbing ───────────────────────────────────────────────────────────

  /** `fn` in a transaction, or in a savepoint when one is already open. */
  #tx<T>(fn: () => T): T {
    return this.#txn(fn) as T;
  }

  #stmt(sql: string): BetterSqlite3.Statement {
    let s = this.#statements.get(sql);
    if (s === undefined) {
      if (this.#statements.size >= STATEMENT_CACHE_LIMIT) this.#statements.clear();
      s = this.#db.prepare(sql);
      this.#statements.set(sql, s);
    }
    return s;
  }

  #get<R>(sql: string, ...params: unknown[]): R | undefined {
    return this.#stmt(sql).get(...params) as R | undefined;
  }

  #all<R>(sql: string, ...params: unknown[]): R[] {
    return this.#stmt(sql).all(...params) as R[];
  }

  #exec(sql: string, ...params: unknown[]): BetterSqlite3.RunResult {
    return this.#stmt(sql).run(...params);
  }

  /** Runs a read, mapping driver errors to SigilErrors. */
  #read<T>(fn: () => T): T {
    if (this.#closed) throw new SigilError("ERR_UNAVAILABLE", "datastore: closed");
    try {
      return fn();
    } catch (e) {
      throw this.#wrap(e);
    }
  }

  /**
   * Runs a write in one IMMEDIATE transaction (the write lock is taken at
   * BEGIN, so a transaction that reads then writes never fails on lock
   * upgrade), then tells listeners about the events it committed.
   */
  #write<T>(fn: (now: number, events: ChangeEvent[]) => T): T {
    const events: ChangeEvent[] = [];
    const result = this.#read(() => this.#txn.immediate(() => fn(this.#clock.now().getTime(), events)) as T);
    this.#notifier.notify(events);
    return result;
  }

  #wrap(e: unknown): SigilError {
    if (e instanceof SigilError) return e;
    const code = (e as { code?: unknown } | null)?.code;
    const message = e instanceof Error ? e.message : String(e);
    if (code === "SQLITE_BUSY" || code === "SQLITE_LOCKED" || (typeof code === "string" && code.startsWith("SQLITE_BUSY_"))) {
      return new SigilError("ERR_UNAVAILABLE", `datastore: database is locked (waited ${this.#busyTimeoutMs} ms): ${message}`, { cause: e });
    }
    return new SigilError("ERR_INTERNAL", `datastore: ${message}`, { cause: e });
  }

  #event(events: ChangeEvent[], kind: ChangeKind, objectId: string, op: ChangeOp, at: number): void {
    const row = this.#get<{ event_id: number }>(
      "INSERT INTO change_events (kind, object_id, op, at) VALUES (?, ?, ?, ?) RETURNING event_id",
      kind,
      objectId,
      op,
      at,
    );
    if (row === undefined) throw new SigilError("ERR_INTERNAL", "datastore: change event insert returned no ID");
    events.push({ eventId: row.event_id, kind, objectId, op, at: new Date(at) });
  }

  #page<R extends { row_id: number }, T>(list: "entries" | "agents", table: string, where: SqlCondition, req: PageRequest, load: (rows: R[]) => T[]): Page<T> {
    const size = checkPageSize(req.pageSize);
    const after = req.pageToken === undefined ? 0 : decodePageToken(list, req.pageToken);
    const limit = size === undefined ? "" : " LIMIT ?";
    const params = size === undefined ? [after, ...where.params] : [after, ...where.params, size + 1];
    const rows = this.#all<R>(`SELECT t.* FROM ${table} t WHERE t.row_id > ? AND (${where.sql}) ORDER BY t.row_id${limit}`, ...params);
    if (size !== undefined && rows.length > size) {
      const pageRows = rows.slice(0, size);
      const last = pageRows[pageRows.length - 1] as R;
      return { items: load(pageRows), nextPageToken: encodePageToken(list, last.row_id) };
    }
    return { items: load(rows) };
  }

  #members(table: string, column: string, rowIds: readonly number[]): Map<number, MemberRow[]> {
    const out = new Map<number, MemberRow[]>();
    if (rowIds.length === 0) return out;
    const rows = this.#all<MemberRow>(
      `SELECT owner_row, ${column} FROM ${table} WHERE owner_row IN (SELECT value FROM json_each(?))`,
      JSON.stringify(rowIds),
    );
    for (const r of rows) {
      let list = out.get(r.owner_row);
      if (list === undefined) out.set(r.owner_row, (list = []));
      list.push(r);
    }
    return out;
  }

  // ── entries ────────────────────────────────────────────────────────────

  #loadEntries(rows: readonly EntryRow[]): RegistrationEntry[] {
    const ids = rows.map((r) => r.row_id);
    const selectors = this.#members("entry_selectors", "type, value", ids);
    const federates = this.#members("entry_federates_with", "trust_domain AS value, '' AS type", ids);
    return rows.map((r) => toEntry(r, selectors.get(r.row_id), federates.get(r.row_id)?.map((m) => m.value)));
  }

  #entryRow(id: string): EntryRow | undefined {
    return this.#get<EntryRow>("SELECT * FROM registration_entries WHERE id = ?", id);
  }

  #loadEntry(row: EntryRow): RegistrationEntry {
    return this.#loadEntries([row])[0] as RegistrationEntry;
  }

  /** Refuses a second entry with the same SPIFFE ID, parent ID and selector set. */
  #checkEntryUnique(n: NormalizedEntry, selfRow: number | undefined): void {
    const other = this.#get<{ id: string; row_id: number }>(
      "SELECT id, row_id FROM registration_entries WHERE spiffe_id = ? AND parent_id = ? AND selectors_hash = ?",
      n.spiffeId,
      n.parentId,
      n.selectorsHash,
    );
    if (other !== undefined && other.row_id !== selfRow) {
      throw new SigilError(
        "ERR_ALREADY_EXISTS",
        `datastore: entry ${other.id} already has SPIFFE ID ${n.spiffeId}, parent ID ${n.parentId} and the same selectors`,
      );
    }
  }

  #checkBundlesExist(trustDomains: readonly string[]): void {
    for (const td of trustDomains) {
      if (this.#get("SELECT 1 AS one FROM bundles WHERE trust_domain = ?", td) === undefined) {
        throw invalid(`entry federates with ${td}, which has no stored bundle`);
      }
    }
  }

  #writeEntryMembers(rowId: number, n: NormalizedEntry): void {
    this.#exec("DELETE FROM entry_selectors WHERE owner_row = ?", rowId);
    this.#exec("DELETE FROM entry_federates_with WHERE owner_row = ?", rowId);
    for (const s of n.selectors) this.#exec("INSERT INTO entry_selectors (owner_row, type, value) VALUES (?, ?, ?)", rowId, s.type, s.value);
    for (const td of n.federatesWith) this.#exec("INSERT INTO entry_federates_with (owner_row, trust_domain) VALUES (?, ?)", rowId, td);
  }

  #insertEntry(input: EntryInput, now: number, events: ChangeEvent[]): RegistrationEntry {
    const n = normalizeEntry(input);
    const id = input.id === undefined ? this.#newEntryId() : checkEntryId(input.id);
    if (input.id === undefined) checkEntryId(id);
    if (this.#entryRow(id) !== undefined) throw new SigilError("ERR_ALREADY_EXISTS", `datastore: entry ${id} already exists`);
    this.#checkEntryUnique(n, undefined);
    this.#checkBundlesExist(n.federatesWith);
    const inserted = this.#get<{ row_id: number }>(INSERT_ENTRY_SQL, id, ...entryColumnValues(n), now, now) as { row_id: number };
    this.#writeEntryMembers(inserted.row_id, n);
    this.#event(events, "entry", id, "create", now);
    return this.#loadEntry(this.#entryRow(id) as EntryRow);
  }

  async createEntry(input: EntryInput): Promise<RegistrationEntry> {
    normalizeEntry(input); // validate before taking the write lock
    return this.#write((now, events) => this.#insertEntry(input, now, events));
  }

  async createEntries(inputs: readonly EntryInput[]): Promise<Array<BatchItemResult<RegistrationEntry>>> {
    if (!Array.isArray(inputs)) throw invalid("createEntries needs an array");
    return this.#write((now, events) =>
      inputs.map((input): BatchItemResult<RegistrationEntry> => {
        const itemEvents: ChangeEvent[] = [];
        try {
          // A savepoint per item: a failing item rolls back alone.
          const value = this.#tx(() => this.#insertEntry(input, now, itemEvents));
          events.push(...itemEvents);
          return { ok: true, value };
        } catch (e) {
          return { ok: false, error: this.#wrap(e) };
        }
      }),
    );
  }

  async getEntry(id: string): Promise<RegistrationEntry | undefined> {
    if (typeof id !== "string") throw invalid("entry id must be a string");
    return this.#read(() => {
      const row = this.#entryRow(id);
      return row === undefined ? undefined : this.#loadEntry(row);
    });
  }

  async updateEntry(id: string, changes: EntryChanges, mask?: readonly EntryField[]): Promise<RegistrationEntry> {
    if (typeof id !== "string") throw invalid("entry id must be a string");
    const fields = resolveMask("entry", ENTRY_FIELDS, changes, mask);
    return this.#write((now, events) => {
      const row = this.#entryRow(id);
      if (row === undefined) throw notFound(`entry ${id}`);
      const { id: _id, createdAt: _c, updatedAt: _u, revision: _r, ...current } = this.#loadEntry(row);
      const n = normalizeEntry(applyMask("entry", current as EntryInput, changes, fields, ["spiffeId", "parentId", "selectors"]));
      this.#checkEntryUnique(n, row.row_id);
      this.#checkBundlesExist(n.federatesWith);
      this.#exec(UPDATE_ENTRY_SQL, ...entryColumnValues(n), now, row.row_id);
      if (fields.includes("selectors") || fields.includes("federatesWith")) this.#writeEntryMembers(row.row_id, n);
      this.#event(events, "entry", id, "update", now);
      return this.#loadEntry(this.#entryRow(id) as EntryRow);
    });
  }

  #deleteEntryRow(row: EntryRow, now: number, events: ChangeEvent[]): RegistrationEntry {
    const entry = this.#loadEntry(row);
    this.#exec("DELETE FROM registration_entries WHERE row_id = ?", row.row_id);
    this.#event(events, "entry", row.id, "delete", now);
    return entry;
  }

  async deleteEntry(id: string): Promise<RegistrationEntry> {
    if (typeof id !== "string") throw invalid("entry id must be a string");
    return this.#write((now, events) => {
      const row = this.#entryRow(id);
      if (row === undefined) throw notFound(`entry ${id}`);
      return this.#deleteEntryRow(row, now, events);
    });
  }

  async listEntries(request: ListEntriesRequest = {}): Promise<Page<RegistrationEntry>> {
    const where = entryCondition(request.filter);
    return this.#read(() => this.#page<EntryRow, RegistrationEntry>("entries", "registration_entries", where, request, (rows) => this.#loadEntries(rows)));
  }

  async countEntries(filter?: EntryFilter): Promise<number> {
    const where = entryCondition(filter);
    return this.#read(() => (this.#get<{ n: number }>(`SELECT COUNT(*) AS n FROM registration_entries t WHERE ${where.sql}`, ...where.params) as { n: number }).n);
  }

  async pruneEntries(before: Date): Promise<number> {
    const t = checkTime("prune before", before);
    return this.#write((now, events) => {
      const rows = this.#all<EntryRow>("SELECT * FROM registration_entries WHERE expires_at IS NOT NULL AND expires_at < ? ORDER BY row_id", t);
      for (const row of rows) this.#deleteEntryRow(row, now, events);
      return rows.length;
    });
  }

  // ── agents ─────────────────────────────────────────────────────────────

  #loadAgents(rows: readonly AgentRow[]): AttestedAgent[] {
    const selectors = this.#members("agent_selectors", "type, value", rows.map((r) => r.row_id));
    return rows.map((r) => toAgent(r, selectors.get(r.row_id)));
  }

  #agentRow(spiffeId: string): AgentRow | undefined {
    return this.#get<AgentRow>("SELECT * FROM attested_agents WHERE spiffe_id = ?", spiffeId);
  }

  #loadAgent(row: AgentRow): AttestedAgent {
    return this.#loadAgents([row])[0] as AttestedAgent;
  }

  #writeAgentSelectors(rowId: number, n: NormalizedAgent): void {
    this.#exec("DELETE FROM agent_selectors WHERE owner_row = ?", rowId);
    for (const s of n.selectors) this.#exec("INSERT INTO agent_selectors (owner_row, type, value) VALUES (?, ?, ?)", rowId, s.type, s.value);
  }

  async createAgent(input: AgentInput): Promise<AttestedAgent> {
    const n = normalizeAgent(input);
    const tokenKey = input.joinToken === undefined ? undefined : joinTokenKey(checkJoinToken(input.joinToken));
    return this.#write((now, events) => {
      // Spent first: a refused token writes nothing, and a failure below puts it back (rollback).
      if (tokenKey !== undefined) this.#spendJoinToken(tokenKey, now);
      if (this.#agentRow(n.spiffeId) !== undefined) throw new SigilError("ERR_ALREADY_EXISTS", `datastore: agent ${n.spiffeId} already exists`);
      const inserted = this.#get<{ row_id: number }>(
        `INSERT INTO attested_agents (spiffe_id, attestation_type, selector_count, cert_serial, cert_not_after, new_cert_serial,
           new_cert_not_after, can_reattest, banned, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) RETURNING row_id`,
        n.spiffeId,
        n.attestationType,
        n.selectors.length,
        n.certSerial,
        n.certNotAfter,
        n.newCertSerial,
        n.newCertNotAfter,
        n.canReattest ? 1 : 0,
        now,
        now,
      ) as { row_id: number };
      this.#writeAgentSelectors(inserted.row_id, n);
      this.#event(events, "agent", n.spiffeId, "create", now);
      return this.#loadAgent(this.#agentRow(n.spiffeId) as AgentRow);
    });
  }

  async getAgent(spiffeId: string): Promise<AttestedAgent | undefined> {
    const id = checkSpiffeId("agent spiffeId", spiffeId);
    return this.#read(() => {
      const row = this.#agentRow(id);
      return row === undefined ? undefined : this.#loadAgent(row);
    });
  }

  async listAgents(request: ListAgentsRequest = {}): Promise<Page<AttestedAgent>> {
    const where = agentCondition(request.filter);
    return this.#read(() => this.#page<AgentRow, AttestedAgent>("agents", "attested_agents", where, request, (rows) => this.#loadAgents(rows)));
  }

  async countAgents(filter?: AgentFilter): Promise<number> {
    const where = agentCondition(filter);
    return this.#read(() => (this.#get<{ n: number }>(`SELECT COUNT(*) AS n FROM attested_agents t WHERE ${where.sql}`, ...where.params) as { n: number }).n);
  }

  #updateAgent(spiffeId: string, changes: AgentChanges, fields: readonly AgentField[]): AttestedAgent {
    const id = checkSpiffeId("agent spiffeId", spiffeId);
    return this.#write((now, events) => {
      const row = this.#agentRow(id);
      if (row === undefined) throw notFound(`agent ${id}`);
      const { createdAt: _c, updatedAt: _u, ...current } = this.#loadAgent(row);
      const n = normalizeAgent(applyMask("agent", current as AgentInput & { banned: boolean }, changes, fields, ["attestationType", "certSerial", "certNotAfter"]));
      this.#exec(
        `UPDATE attested_agents SET attestation_type = ?, selector_count = ?, cert_serial = ?, cert_not_after = ?, new_cert_serial = ?,
           new_cert_not_after = ?, can_reattest = ?, banned = ?, updated_at = ?
         WHERE row_id = ?`,
        n.attestationType,
        n.selectors.length,
        n.certSerial,
        n.certNotAfter,
        n.newCertSerial,
        n.newCertNotAfter,
        n.canReattest ? 1 : 0,
        n.banned ? 1 : 0,
        now,
        row.row_id,
      );
      if (fields.includes("selectors")) this.#writeAgentSelectors(row.row_id, n);
      this.#event(events, "agent", id, "update", now);
      return this.#loadAgent(this.#agentRow(id) as AgentRow);
    });
  }

  async updateAgent(spiffeId: string, changes: AgentChanges, mask?: readonly AgentField[]): Promise<AttestedAgent> {
    return this.#updateAgent(spiffeId, changes, resolveMask("agent", AGENT_FIELDS, changes, mask));
  }

  async banAgent(spiffeId: string): Promise<AttestedAgent> {
    const changes: AgentChanges = { banned: true, certSerial: "", newCertSerial: null, newCertNotAfter: null };
    return this.#updateAgent(spiffeId, changes, ["banned", "certSerial", "newCertSerial", "newCertNotAfter"]);
  }

  async deleteAgent(spiffeId: string): Promise<AttestedAgent> {
    const id = checkSpiffeId("agent spiffeId", spiffeId);
    return this.#write((now, events) => {
      const row = this.#agentRow(id);
      if (row === undefined) throw notFound(`agent ${id}`);
      const agent = this.#loadAgent(row);
      this.#exec("DELETE FROM attested_agents WHERE row_id = ?", row.row_id);
      this.#event(events, "agent", id, "delete", now);
      return agent;
    });
  }

  // ── join tokens ────────────────────────────────────────────────────────

  async createJoinToken(input: JoinTokenInput): Promise<void> {
    const t = normalizeJoinToken(input);
    this.#write((now) => {
      const r = this.#exec(
        "INSERT INTO join_tokens (token_hash, expires_at, agent_id, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (token_hash) DO NOTHING",
        t.key,
        t.expiresAt,
        t.agentId,
        now,
      );
      if (r.changes === 0) throw new SigilError("ERR_ALREADY_EXISTS", "datastore: join token already exists");
    });
  }

  async consumeJoinToken(token: string, now?: Date): Promise<ConsumedJoinToken> {
    const key = joinTokenKey(checkJoinToken(token));
    const at = now === undefined ? this.#clock.now().getTime() : checkTime("consume time", now);
    return this.#write(() => this.#spendJoinToken(key, at));
  }

  async peekJoinToken(token: string, now?: Date): Promise<ConsumedJoinToken> {
    const key = joinTokenKey(checkJoinToken(token));
    const at = now === undefined ? this.#clock.now().getTime() : checkTime("peek time", now);
    return this.#read(() => usableJoinToken(this.#get<JoinTokenRow>("SELECT expires_at, agent_id FROM join_tokens WHERE token_hash = ?", key), at));
  }

  /** Inside a write: deletes the token if usable at `at`, or throws (and the transaction's rollback keeps an expired one). */
  #spendJoinToken(key: string, at: number): ConsumedJoinToken {
    // The DELETE is the claim: whichever transaction deletes the row owns the token.
    return usableJoinToken(this.#get<JoinTokenRow>("DELETE FROM join_tokens WHERE token_hash = ? RETURNING expires_at, agent_id", key), at);
  }

  async hasPendingJoinTokenFor(agentId: string, now?: Date): Promise<boolean> {
    const id = checkSpiffeId("agent ID", agentId);
    const at = now === undefined ? this.#clock.now().getTime() : checkTime("query time", now);
    // Tokens without a chosen ID yield spiffe://<td>/spire/agent/join_token/<token>: look that one up by its hash.
    const m = /\/spire\/agent\/join_token\/([A-Za-z0-9._-]+)$/.exec(id);
    const byDefault = m ? this.#read(() => this.#get("SELECT 1 AS one FROM join_tokens WHERE token_hash = ? AND agent_id IS NULL AND expires_at > ?", joinTokenKey(m[1] as string), at)) : undefined;
    if (byDefault !== undefined) return true;
    return this.#read(() => this.#get("SELECT 1 AS one FROM join_tokens WHERE agent_id = ? AND expires_at > ?", id, at)) !== undefined;
  }

  async pruneJoinTokens(now: Date): Promise<number> {
    const t = checkTime("prune time", now);
    return this.#write(() => this.#exec("DELETE FROM join_tokens WHERE expires_at <= ?", t).changes);
  }

  // ── bundles ────────────────────────────────────────────────────────────

  async getBundle(trustDomain: string): Promise<StoredBundle | undefined> {
    const td = checkTrustDomainName("bundle trustDomain", trustDomain);
    return this.#read(() => {
      const row = this.#get<BundleRow>("SELECT * FROM bundles WHERE trust_domain = ?", td);
      return row === undefined ? undefined : toBundle(row);
    });
  }

  async listBundles(): Promise<StoredBundle[]> {
    return this.#read(() => this.#all<BundleRow>("SELECT * FROM bundles ORDER BY trust_domain").map(toBundle));
  }

  async setBundle(input: BundleInput, options: SetBundleOptions = {}): Promise<StoredBundle> {
    const b = normalizeBundle(input);
    const expected = options.expectedSequence === undefined || options.expectedSequence === null ? options.expectedSequence : checkSequence("expectedSequence", options.expectedSequence);
    const relationshipAt = options.relationshipUpdatedAt === undefined ? undefined : checkTime("relationshipUpdatedAt", options.relationshipUpdatedAt);
    return this.#write((now, events) => {
      if (relationshipAt !== undefined) {
        const rel = this.#get<{ updated_at: number }>("SELECT updated_at FROM federation_relationships WHERE trust_domain = ?", b.trustDomain);
        if (rel === undefined || rel.updated_at !== relationshipAt) throw relationshipChanged(b.trustDomain);
      }
      const current = this.#get<BundleRow>("SELECT * FROM bundles WHERE trust_domain = ?", b.trustDomain);
      if (expected !== undefined && (current?.sequence ?? null) !== expected) {
        throw invalid(
          `bundle for ${b.trustDomain} ${current === undefined ? "does not exist" : `has sequence ${current.sequence}`}, expected ${expected === null ? "no bundle" : `sequence ${expected}`}`,
        );
      }
      const row = this.#get<BundleRow>(
        `INSERT INTO bundles (trust_domain, document, sequence, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (trust_domain) DO UPDATE SET document = excluded.document, sequence = excluded.sequence, updated_at = excluded.updated_at
         RETURNING *`,
        b.trustDomain,
        b.document,
        b.sequence,
        now,
        now,
      ) as BundleRow;
      this.#event(events, "bundle", b.trustDomain, current === undefined ? "create" : "update", now);
      return toBundle(row);
    });
  }

  async deleteBundle(trustDomain: string, mode: BundleDeleteMode = "restrict"): Promise<void> {
    const td = checkTrustDomainName("bundle trustDomain", trustDomain);
    checkDeleteMode(mode);
    this.#write((now, events) => {
      if (!this.#deleteBundleRow(td, mode, now, events)) throw notFound(`bundle for ${td}`);
    });
  }

  /** Deletes a stored bundle (dissociating or refusing its users, per `mode`); false when none is stored. */
  #deleteBundleRow(td: string, mode: BundleDeleteMode, now: number, events: ChangeEvent[]): boolean {
    if (this.#get("SELECT 1 AS one FROM bundles WHERE trust_domain = ?", td) === undefined) return false;
    const users = this.#all<{ row_id: number; id: string }>(
      `SELECT e.row_id, e.id FROM entry_federates_with f JOIN registration_entries e ON e.row_id = f.owner_row
       WHERE f.trust_domain = ? ORDER BY e.row_id`,
      td,
    );
    if (users.length > 0 && mode === "restrict") {
      throw new SigilError("ERR_FAILED_PRECONDITION", `datastore: bundle for ${td} is still federated with by ${users.length} entries (first: ${(users[0] as { id: string }).id}); use mode "dissociate" or update them first`);
    }
    for (const u of users) {
      this.#exec("DELETE FROM entry_federates_with WHERE owner_row = ? AND trust_domain = ?", u.row_id, td);
      this.#exec(
        "UPDATE registration_entries SET federates_with_count = federates_with_count - 1, revision = revision + 1, updated_at = ? WHERE row_id = ?",
        now,
        u.row_id,
      );
      this.#event(events, "entry", u.id, "update", now);
    }
    this.#exec("DELETE FROM bundles WHERE trust_domain = ?", td);
    this.#event(events, "bundle", td, "delete", now);
    return true;
  }

  // ── federation relationships ───────────────────────────────────────────

  /** Writes a relationship row (`create`: refuse an existing one, `update`: refuse a missing one, `put`: either) and its initial bundle. */
  #writeRelationship(kind: "create" | "update" | "put", input: FederationRelationshipInput, options: FederationRelationshipWriteOptions): FederationRelationship {
    const r = normalizeFederationRelationship(input);
    const initial = options.initialBundle === undefined ? undefined : normalizeBundle({ trustDomain: r.trustDomain, document: options.initialBundle.document, sequence: options.initialBundle.sequence });
    const onlyIfAbsent = options.initialBundle?.onlyIfAbsent === true;
    return this.#write((now, events) => {
      const exists = this.#get("SELECT 1 AS one FROM federation_relationships WHERE trust_domain = ?", r.trustDomain) !== undefined;
      if (kind === "create" && exists) throw new SigilError("ERR_ALREADY_EXISTS", `datastore: a federation relationship with ${r.trustDomain} already exists`);
      if (kind === "update" && !exists) throw notFound(`federation relationship with ${r.trustDomain}`);
      const row = this.#get<FederationRelationshipRow>(
        `INSERT INTO federation_relationships (trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, source, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (trust_domain) DO UPDATE SET bundle_endpoint_url = excluded.bundle_endpoint_url, profile = excluded.profile,
           endpoint_spiffe_id = excluded.endpoint_spiffe_id, source = excluded.source, updated_at = excluded.updated_at
         RETURNING *`,
        r.trustDomain,
        r.bundleEndpointUrl,
        r.profile,
        r.endpointSpiffeId,
        r.source,
        now,
        now,
      ) as FederationRelationshipRow;
      const held = initial === undefined ? false : this.#get("SELECT 1 AS one FROM bundles WHERE trust_domain = ?", r.trustDomain) !== undefined;
      if (initial !== undefined && !(onlyIfAbsent && held)) {
        this.#exec(
          `INSERT INTO bundles (trust_domain, document, sequence, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (trust_domain) DO UPDATE SET document = excluded.document, sequence = excluded.sequence, updated_at = excluded.updated_at`,
          initial.trustDomain,
          initial.document,
          initial.sequence,
          now,
          now,
        );
        this.#event(events, "bundle", initial.trustDomain, held ? "update" : "create", now);
      }
      return toRelationship(row);
    });
  }

  async createFederationRelationship(input: FederationRelationshipInput, options: FederationRelationshipWriteOptions = {}): Promise<FederationRelationship> {
    return this.#writeRelationship("create", input, options);
  }

  async updateFederationRelationship(input: FederationRelationshipInput, options: FederationRelationshipWriteOptions = {}): Promise<FederationRelationship> {
    return this.#writeRelationship("update", input, options);
  }

  async putFederationRelationship(input: FederationRelationshipInput, options: FederationRelationshipWriteOptions = {}): Promise<FederationRelationship> {
    return this.#writeRelationship("put", input, options);
  }

  async getFederationRelationship(trustDomain: string): Promise<FederationRelationship | undefined> {
    const td = checkTrustDomainName("federation relationship trustDomain", trustDomain);
    return this.#read(() => {
      const row = this.#get<FederationRelationshipRow>("SELECT * FROM federation_relationships WHERE trust_domain = ?", td);
      return row === undefined ? undefined : toRelationship(row);
    });
  }

  async listFederationRelationships(): Promise<FederationRelationship[]> {
    return this.#read(() => this.#all<FederationRelationshipRow>("SELECT * FROM federation_relationships ORDER BY trust_domain").map(toRelationship));
  }

  async deleteFederationRelationship(trustDomain: string, mode: BundleDeleteMode = "restrict"): Promise<FederationRelationship> {
    const td = checkTrustDomainName("federation relationship trustDomain", trustDomain);
    checkDeleteMode(mode);
    return this.#write((now, events) => {
      const row = this.#get<FederationRelationshipRow>("SELECT * FROM federation_relationships WHERE trust_domain = ?", td);
      if (row === undefined) throw notFound(`federation relationship with ${td}`);
      this.#deleteBundleRow(td, mode, now, events);
      this.#exec("DELETE FROM federation_relationships WHERE trust_domain = ?", td);
      return toRelationship(row);
    });
  }

  // ── CA journal ─────────────────────────────────────────────────────────

  async upsertCaJournal(input: CaJournalInput): Promise<CaJournalRecord> {
    const j = normalizeCaJournal(input);
    return this.#write((now) => {
      const row = this.#get<CaJournalRow>(
        `INSERT INTO ca_journal (server_id, kind, slot_id, key_id, status, public_key, certificate, chain, roots, not_before, not_after, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (server_id, kind, slot_id) DO UPDATE SET
           key_id = excluded.key_id, status = excluded.status, public_key = excluded.public_key, certificate = excluded.certificate,
           chain = excluded.chain, roots = excluded.roots,
           not_before = excluded.not_before, not_after = excluded.not_after,
           created_at = CASE WHEN ca_journal.key_id = excluded.key_id THEN ca_journal.created_at ELSE excluded.created_at END,
           updated_at = excluded.updated_at
         RETURNING *`,
        j.serverId,
        j.kind,
        j.slotId,
        j.keyId,
        j.status,
        j.publicKeyDer,
        j.certDer,
        j.chainDers,
        j.rootDers,
        j.notBefore,
        j.notAfter,
        now,
        now,
      ) as CaJournalRow;
      return toJournal(row);
    });
  }

  async listCaJournal(kind?: CaKeyKind): Promise<CaJournalRecord[]> {
    if (kind !== undefined && kind !== "x509" && kind !== "jwt") throw invalid('ca journal kind must be "x509" or "jwt"');
    return this.#read(() => {
      const rows =
        kind === undefined
          ? this.#all<CaJournalRow>("SELECT * FROM ca_journal ORDER BY server_id, kind, slot_id")
          : this.#all<CaJournalRow>("SELECT * FROM ca_journal WHERE kind = ? ORDER BY server_id, slot_id", kind);
      return rows.map(toJournal);
    });
  }

  // ── issuance log ───────────────────────────────────────────────────────

  async recordIssuances(records: readonly IssuanceInput[], logEntries?: readonly TlogEntryInput[]): Promise<number | undefined> {
    if (!Array.isArray(records)) throw invalid("recordIssuances needs an array");
    if (records.length > MAX_ISSUANCE_BATCH) throw invalid(`recordIssuances takes at most ${MAX_ISSUANCE_BATCH} records, got ${records.length}`);
    // Validate the whole batch before taking the write lock: one bad record refuses all.
    const batch = this.#issuanceNormalizer.normalize(records);
    const log = checkTlogEntries(logEntries);
    if (this.#issuanceWriter && (records.length > 0 || log.length > 0)) {
      if (this.#closed) throw new SigilError("ERR_UNAVAILABLE", "datastore: closed");
      return this.#issuanceWriter.write(batch, log);
    }
    return this.#read(() => {
      if (batch.rows.length === 0 && log.length === 0) return undefined; // still refuse when closed
      const inserter = (this.#issuanceInserter ??= new IssuanceInserter(this.#db));
      let first: number | undefined;
      insertIssuanceRows(this.#db, inserter, () => {
        inserter.insertRows(batch.rows, (i) => batch.contexts[i] as IssuanceContext);
        first = inserter.appendTlog(log);
      });
      return first;
    });
  }

  // ── transparency log ───────────────────────────────────────────────────

  async tlogSize(): Promise<number> {
    return this.#read(() => (this.#get<{ next_idx: number }>("SELECT next_idx FROM tlog_counter WHERE id = 0") as { next_idx: number }).next_idx);
  }

  async readTlogEntries(start: number, end: number): Promise<Uint8Array[]> {
    checkTlogRange(start, end);
    return this.#read(() => this.#all<{ entry: Buffer }>("SELECT entry FROM tlog_entries WHERE idx >= ? AND idx < ? ORDER BY idx", start, end).map((r) => r.entry));
  }

  async findTlogEntry(lookupKey: string): Promise<TlogStoredEntry | undefined> {
    if (typeof lookupKey !== "string") throw invalid("log lookup key must be a string");
    return this.#read(() => {
      const r = this.#get<{ idx: number; entry: Buffer }>("SELECT idx, entry FROM tlog_entries WHERE lookup_key = ? ORDER BY idx LIMIT 1", lookupKey);
      return r === undefined ? undefined : { index: r.idx, entry: r.entry };
    });
  }

  async putTlogCheckpoint(c: TlogCheckpointRecord): Promise<void> {
    checkTlogCheckpoint(c);
    // With the writer thread, a checkpoint joins its next group commit: the
    // event loop never waits on the fsync or on the write lock the writer holds.
    if (this.#issuanceWriter) {
      if (this.#closed) throw new SigilError("ERR_UNAVAILABLE", "datastore: closed");
      return this.#issuanceWriter.putCheckpoint({ serverId: c.serverId, treeSize: c.treeSize, rootHash: Uint8Array.from(c.rootHash), note: c.note, createdAtMs: c.createdAt.getTime() });
    }
    this.#read(() => this.#exec(PUT_TLOG_CHECKPOINT_SQL, c.serverId, c.treeSize, Buffer.from(c.rootHash), c.note, c.createdAt.getTime()));
  }

  async latestTlogCheckpoint(serverId: string): Promise<TlogCheckpointRecord | undefined> {
    return this.#read(() => {
      const r = this.#get<{ server_id: string; tree_size: number; root_hash: Buffer; note: string; created_at: number }>(
        "SELECT * FROM tlog_checkpoints WHERE server_id = ? ORDER BY tree_size DESC LIMIT 1",
        serverId,
      );
      return r === undefined ? undefined : { serverId: r.server_id, treeSize: r.tree_size, rootHash: r.root_hash, note: r.note, createdAt: new Date(r.created_at) };
    });
  }

  async putTlogKey(k: TlogKeyRecord): Promise<void> {
    checkTlogKey(k);
    this.#read(() =>
      this.#exec(
        `INSERT INTO tlog_keys (server_id, key_id, vkey, created_at, retired_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (server_id, key_id) DO UPDATE SET vkey = excluded.vkey, retired_at = excluded.retired_at`,
        k.serverId, k.keyId, k.vkey, k.createdAt.getTime(), k.retiredAt?.getTime() ?? null,
      ),
    );
  }

  async listTlogKeys(): Promise<TlogKeyRecord[]> {
    return this.#read(() =>
      this.#all<{ server_id: string; key_id: string; vkey: string; created_at: number; retired_at: number | null }>("SELECT * FROM tlog_keys ORDER BY created_at, server_id, key_id").map((r) => ({
        serverId: r.server_id,
        keyId: r.key_id,
        vkey: r.vkey,
        createdAt: new Date(r.created_at),
        retiredAt: r.retired_at === null ? null : new Date(r.retired_at),
      })),
    );
  }

  async latestWitnessCheckpoint(origin: string): Promise<WitnessCheckpointRecord | undefined> {
    checkWitnessOrigin(origin);
    return this.#read(() => {
      const r = this.#get<{ origin: string; tree_size: number; root_hash: Buffer; note: string; updated_at: number }>("SELECT * FROM tlog_witness_checkpoints WHERE origin = ?", origin);
      return r === undefined ? undefined : { origin: r.origin, treeSize: r.tree_size, rootHash: r.root_hash, note: r.note, updatedAt: new Date(r.updated_at) };
    });
  }

  async advanceWitnessCheckpoint(next: WitnessCheckpointRecord, previous: { readonly treeSize: number; readonly rootHash: Uint8Array } | undefined): Promise<boolean> {
    checkWitnessCheckpoint(next);
    // One statement each: the compare and the write cannot be split by another writer.
    const changes = this.#read(() =>
      previous === undefined
        ? this.#exec(
            "INSERT INTO tlog_witness_checkpoints (origin, tree_size, root_hash, note, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO NOTHING",
            next.origin, next.treeSize, Buffer.from(next.rootHash), next.note, next.updatedAt.getTime(),
          ).changes
        : this.#exec(
            "UPDATE tlog_witness_checkpoints SET tree_size = ?, root_hash = ?, note = ?, updated_at = ? WHERE origin = ? AND tree_size = ? AND root_hash = ?",
            next.treeSize, Buffer.from(next.rootHash), next.note, next.updatedAt.getTime(), next.origin, previous.treeSize, Buffer.from(previous.rootHash),
          ).changes,
    );
    return changes === 1;
  }

  async issuanceInventory(request: IssuanceInventoryRequest): Promise<IssuanceInventory> {
    const { caKeyId, now, limit, countOnly } = checkInventoryRequest(request);
    if (countOnly) {
      const counted = this.#read(() =>
        this.#all<{ n: number }>(`SELECT COUNT(*) AS n FROM issuance_contexts c JOIN issuances i ON i.context_id = c.context_id WHERE ${LIVE_INVENTORY_CONDITION}`, caKeyId, now),
      );
      return countOnlyInventory(caKeyId, Number(counted[0]?.n ?? 0));
    }
    // One statement: the live set (the costly part: a later credential of the same entry is looked
    // for per candidate) is computed once, then both grouped and listed. Two statements evaluated it
    // twice: 1.09 s at 1,000,000 records (bench/inventory.bench.ts) against the 1 s target.
    type Row = { part: 0 | 1; agent_id: string; spiffe_id: string; n: number | null; serial: string; kind: IssuanceKind; entry_id: string; not_after: number; row_id: number };
    const rows = this.#read(() =>
      this.#all<Row>(
        `WITH live AS MATERIALIZED (
           SELECT i.serial, c.kind, c.spiffe_id, c.entry_id, c.agent_id, i.not_after, i.row_id
           FROM issuance_contexts c JOIN issuances i ON i.context_id = c.context_id WHERE ${LIVE_INVENTORY_CONDITION})
         SELECT 0 AS part, agent_id, spiffe_id, COUNT(*) AS n, NULL AS serial, NULL AS kind, NULL AS entry_id, NULL AS not_after, NULL AS row_id
           FROM live GROUP BY agent_id, spiffe_id
         UNION ALL
         SELECT * FROM (SELECT 1, agent_id, spiffe_id, NULL, serial, kind, entry_id, not_after, row_id FROM live ORDER BY not_after, row_id LIMIT ?)`,
        caKeyId,
        now,
        limit,
      ),
    );
    const groups = rows.filter((r) => r.part === 0).map((r) => ({ agentId: r.agent_id, spiffeId: r.spiffe_id, n: Number(r.n) }));
    const svids = rows
      .filter((r) => r.part === 1)
      .sort((a, b) => a.not_after - b.not_after || a.row_id - b.row_id)
      .map(toInventorySvid);
    return foldInventory(caKeyId, groups, svids);
  }

  async listIssuances(request: ListIssuancesRequest = {}): Promise<Page<IssuanceRecord>> {
    if (request === null || typeof request !== "object") throw invalid("listIssuances request must be an object");
    const size = checkPageSize(request.pageSize);
    const conditions: string[] = [];
    const params: unknown[] = [];
    if (request.pageToken !== undefined) {
      conditions.push("i.row_id < ?");
      params.push(decodePageToken("issuances", request.pageToken));
    }
    if (request.spiffeId !== undefined) {
      conditions.push("c.spiffe_id = ?");
      params.push(checkSpiffeId("issuance filter spiffeId", request.spiffeId));
    }
    if (request.entryId !== undefined) {
      conditions.push("c.entry_id = ?");
      params.push(checkEntryId(request.entryId));
    }
    if (request.agentId !== undefined) {
      conditions.push("c.agent_id = ?");
      params.push(checkSpiffeId("issuance filter agentId", request.agentId));
    }
    if (request.serial !== undefined) {
      conditions.push("i.serial = ?");
      params.push(checkSerialHex("issuance filter serial", request.serial));
    }
    if (request.liveAt !== undefined) {
      const t = checkTime("issuance filter liveAt", request.liveAt);
      conditions.push("i.not_before <= ? AND i.not_after > ?");
      params.push(t, t);
    }
    if (size !== undefined) params.push(size + 1);
    const sql =
      ISSUANCE_SELECT_SQL +
      (conditions.length === 0 ? "" : ` WHERE ${conditions.join(" AND ")}`) +
      " ORDER BY i.row_id DESC" +
      (size === undefined ? "" : " LIMIT ?");
    return this.#read(() => {
      const rows = this.#all<IssuanceRow>(sql, ...params);
      if (size !== undefined && rows.length > size) {
        const pageRows = rows.slice(0, size);
        const last = pageRows[pageRows.length - 1] as IssuanceRow;
        return { items: pageRows.map(toIssuance), nextPageToken: encodePageToken("issuances", last.row_id) };
      }
      return { items: rows.map(toIssuance) };
    });
  }

  async pruneIssuances(expiredBefore: Date): Promise<number> {
    const t = checkTime("prune expiredBefore", expiredBefore);
    // In chunks, yielding between them: other writers (the issuance writer
    // thread, API calls) get the lock in between, however much has expired.
    let removed = 0;
    for (;;) {
      const n = this.#write(() => this.#exec(PRUNE_ISSUANCES_CHUNK_SQL, t).changes);
      removed += n;
      if (n < PRUNE_CHUNK_ROWS) break;
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (removed > 0) {
      this.#write(() => this.#exec(PRUNE_ORPHAN_CONTEXTS_SQL));
      this.#issuanceInserter?.forget();
    }
    return removed;
  }

  // ── change feed ────────────────────────────────────────────────────────

  async listEvents(afterEventId: number, limit: number): Promise<ChangeEvent[]> {
    if (!Number.isSafeInteger(afterEventId) || afterEventId < 0) throw invalid("afterEventId must be a non-negative integer");
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE_SIZE) throw invalid(`event limit must be an integer from 1 to ${MAX_PAGE_SIZE}`);
    return this.#read(() =>
      this.#all<EventRow>("SELECT * FROM change_events WHERE event_id > ? ORDER BY event_id LIMIT ?", afterEventId, limit).map((r) => ({
        eventId: r.event_id,
        kind: r.kind,
        objectId: r.object_id,
        op: r.op,
        at: new Date(r.at),
      })),
    );
  }

  async lastEventId(): Promise<number> {
    // sqlite_sequence keeps the highest ID ever assigned, even after pruning.
    return this.#read(() => this.#get<{ seq: number }>("SELECT seq FROM sqlite_sequence WHERE name = 'change_events'")?.seq ?? 0);
  }

  async pruneEvents(before: Date): Promise<number> {
    const t = checkTime("prune before", before);
    return this.#write(() => this.#exec("DELETE FROM change_events WHERE at < ?", t).changes);
  }

  subscribe(listener: ChangeListener): () => void {
    return this.#notifier.subscribe(listener);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#issuanceWriter?.close();
    this.#notifier.clear();
    this.#statements.clear();
    this.#issuanceInserter = undefined;
    this.#db.close();
  }
}
