/**
 * The `Datastore` on a network SQL engine (PostgreSQL, MySQL/MariaDB) through
 * Kysely, written once; engine differences come from {@link SqlDialect}.
 *
 * ## Concurrency
 *
 * - **Every write is one SERIALIZABLE transaction**, run again (up to
 *   `maxAttempts` times, with jittered backoff) when the engine reports a
 *   serialization failure (PostgreSQL 40001), a deadlock (40P01, MySQL 1213)
 *   or a lock wait timeout, so read-then-write steps (uniqueness checks,
 *   compare-and-set on bundle sequences, masked updates) behave as on SQLite,
 *   whose writers are serialised by the file lock.
 * - **The database has the last word on uniqueness**: entry IDs, the entry
 *   identity (a UNIQUE hash of SPIFFE ID, parent ID and selector set), agent
 *   IDs, join tokens and bundles are UNIQUE or PRIMARY KEY columns. A
 *   constraint violation from a concurrent writer runs the transaction again,
 *   whose checks then see the committed row and answer `ERR_ALREADY_EXISTS`
 *   naming it; two servers racing get exactly one success.
 * - **Join tokens**: consumed by `SELECT … FOR UPDATE` then `DELETE` in one
 *   transaction (MySQL has no `DELETE … RETURNING`); the loser of a race sees
 *   no row.
 * - **Change events** are written in the same transaction as the change.
 *   Listeners hear changes made through this instance only; the
 *   cross-server feed (`../change-feed.ts`) reads the table by sequence and
 *   tolerates IDs committed out of order. On PostgreSQL each writing
 *   transaction also sends `pg_notify(sigil_change_events, <last event ID>)`,
 *   delivered at commit to every server's `watchEvents` connection.
 * - Reads that take several statements (an entry and its selectors) run in one
 *   REPEATABLE READ transaction, so they see one snapshot.
 */
import { createHash, randomBytes } from "node:crypto";
import { sql, type Kysely, type RawBuilder, type Transaction } from "kysely";
import type { Clock } from "../../../common/clock.js";
import { SigilError } from "../../../spiffe/errors.js";
import { AGENT_FIELDS, type AgentChanges, type AgentField, type AgentFilter, type AgentInput, type AttestedAgent, type ListAgentsRequest } from "../agent.js";
import type { BundleDeleteMode, BundleInput, SetBundleOptions, StoredBundle } from "../bundle.js";
import type { CaJournalInput, CaJournalRecord, CaKeyKind } from "../ca-journal.js";
import type { ChangeEvent, ChangeKind, ChangeListener, ChangeOp } from "../change-event.js";
import { ChangeNotifier } from "../change-notifier.js";
import type { Datastore } from "../datastore.js";
import {
  ENTRY_FIELDS,
  type BatchItemResult,
  type EntryChanges,
  type EntryField,
  type EntryFilter,
  type EntryInput,
  type ListEntriesRequest,
  type RegistrationEntry,
} from "../entry.js";
import type { FederationRelationship, FederationRelationshipInput, FederationRelationshipWriteOptions } from "../federation-relationship.js";
import { IssuanceNormalizer, ISSUANCE_ROW_WIDTH, type IssuanceContext } from "../issuance-batch.js";
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
} from "../issuance.js";
import type { ConsumedJoinToken, JoinTokenInput } from "../join-token.js";
import { checkTlogCheckpoint, checkTlogEntries, checkTlogKey, checkTlogRange, checkWitnessCheckpoint, checkWitnessOrigin, type TlogCheckpointRecord, type TlogEntryInput, type TlogKeyRecord, type TlogStoredEntry, type WitnessCheckpointRecord } from "../tlog.js";
import { checkPageSize, decodePageToken, encodePageToken, MAX_PAGE_SIZE, type Page, type PageRequest } from "../page.js";
import {
  applyMask,
  checkDeleteMode,
  groupByOwner,
  joinTokenNotFound,
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
  type IssuanceRow,
} from "../rows.js";
import { agentCondition, entryCondition, UNFILTERED, type SqlCondition } from "../sqlite-filters.js";
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
} from "../validate.js";
import type { SqlDialect, SqlErrorClass, SqlTlsOptions } from "./dialect.js";
import { migrateSql, SQL_MIGRATIONS } from "./migrations.js";
import type { AgentTable, EntryTable, SqlSchema } from "./schema.js";
import { CHANGE_EVENTS_CHANNEL } from "../postgres/postgres-listener.js";

/** Options of {@link createSqlDatastore}. */
export interface SqlDatastoreOptions {
  /** A Kysely instance on the engine; the datastore owns it and destroys it on close. */
  readonly db: Kysely<SqlSchema>;
  readonly dialect: SqlDialect;
  /** Source of every stored timestamp. */
  readonly clock: Clock;
  /** Attempts of a write transaction that keeps failing on serialization failures or deadlocks (default 16). */
  readonly maxAttempts?: number;
  /** Generates entry IDs (default: 128 random bits, base64url). */
  readonly newEntryId?: () => string;
  /** Receives errors thrown by change listeners (default: `process.emitWarning`). */
  readonly onListenerError?: (error: unknown, event: ChangeEvent) => void;
  /** The engine's commit announcements ({@link Datastore.watchEvents}); with it, each write transaction also sends `pg_notify`. */
  readonly watchEvents?: (wake: (eventId: number | undefined) => void) => Promise<() => Promise<void>>;
}

/** Options every network driver (PostgreSQL, MySQL) takes. */
export interface NetworkDatastoreOptions {
  /** The engine's URL (`postgres://…`, `mysql://…`). */
  readonly connectionString: string;
  /** Source of every stored timestamp. */
  readonly clock: Clock;
  /** Most open connections (default 10). */
  readonly maxOpenConns?: number;
  /** PostgreSQL: close a connection this old (default: never); MySQL: close a connection idle this long (default 60), in seconds. */
  readonly connMaxLifetimeSeconds?: number;
  /** Cancel a statement running longer than this, in milliseconds (default 30,000; 0: no limit). */
  readonly statementTimeoutMs?: number;
  /** TLS to the database server, verifying its certificate and name. */
  readonly tls?: SqlTlsOptions;
  /** Attempts of a write transaction on serialization failures and deadlocks (default 16). */
  readonly maxAttempts?: number;
  readonly newEntryId?: () => string;
  readonly onListenerError?: (error: unknown, event: ChangeEvent) => void;
}

/** A pool setting: an integer of at least `min`, or `fallback` when absent. */
export function poolSetting(what: string, v: number | undefined, min: number, fallback: number): number {
  if (v === undefined) return fallback;
  if (!Number.isInteger(v) || v < min) throw invalid(`${what} must be an integer of at least ${min}`);
  return v;
}

/**
 * Checks a network driver's `connection_string`: a URL of `scheme` (a RegExp of
 * the scheme with its `:`). The message never repeats the string, which may
 * hold a password; the drivers' own URL errors would carry it along.
 */
export function checkConnectionUrl(connectionString: unknown, scheme: RegExp, expected: string): URL {
  if (typeof connectionString !== "string") throw invalid(`connection_string must be a ${expected} URL`);
  let url: URL;
  try {
    url = new URL(connectionString);
  } catch {
    throw invalid(`connection_string is not a valid ${expected} URL (check the host, the port and that special characters in the password are %-encoded)`);
  }
  if (!scheme.test(url.protocol) || url.hostname === "") throw invalid(`connection_string must be a ${expected} URL with a host`);
  return url;
}

/** Opens a network driver's datastore on `db` with the shared options. */
export function createNetworkDatastore(
  db: Kysely<SqlSchema>,
  dialect: SqlDialect,
  options: NetworkDatastoreOptions,
  watchEvents?: SqlDatastoreOptions["watchEvents"],
): Promise<Datastore> {
  return createSqlDatastore({
    db,
    dialect,
    clock: options.clock,
    ...(watchEvents !== undefined ? { watchEvents } : {}),
    ...(options.maxAttempts !== undefined ? { maxAttempts: options.maxAttempts } : {}),
    ...(options.newEntryId !== undefined ? { newEntryId: options.newEntryId } : {}),
    ...(options.onListenerError !== undefined ? { onListenerError: options.onListenerError } : {}),
  });
}

/** Default attempts of a write transaction. */
export const DEFAULT_MAX_ATTEMPTS = 16;

/** Rows deleted per pruning statement. */
const PRUNE_CHUNK_ROWS = 5_000;
/** Issuance rows per INSERT statement. */
const INSERT_CHUNK_ROWS = 500;
/** Context IDs remembered at most. */
const MAX_CACHED_CONTEXT_IDS = 50_000;

type Db = Kysely<SqlSchema>;
type EntryRow = Omit<EntryTable, "row_id"> & { row_id: number };
type AgentRow = Omit<AgentTable, "row_id"> & { row_id: number };

/** Writes collect their change events here; listeners hear them after commit. */
type Events = ChangeEvent[];
/** Row IDs `after < row_id <= last`: a page of an unfiltered listing holds every row between. */
interface RowSpan {
  readonly after: number;
  readonly last: number;
}

function defaultEntryId(): string {
  return randomBytes(16).toString("base64url");
}

function sha256(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

/** The UNIQUE key of an entry's identity: SPIFFE ID, parent ID and selector set. */
function identityHash(n: NormalizedEntry): string {
  return sha256(JSON.stringify([n.spiffeId, n.parentId, n.selectorsHash]));
}

/** A filter condition with `?` placeholders as a Kysely fragment with bound values. */
function conditionSql(c: SqlCondition): RawBuilder<unknown> {
  const parts = c.sql.split("?");
  const frags: RawBuilder<unknown>[] = [sql.raw(parts[0] ?? "")];
  for (let i = 1; i < parts.length; i++) frags.push(sql`${c.params[i - 1]}`, sql.raw(parts[i] ?? ""));
  return sql.join(frags, sql.raw(""));
}

/**
 * The `registration_entries` column values of a validated entry (besides its
 * keys, times and revision). Exported for bench/scale/, which bulk-loads rows
 * exactly as this datastore writes them.
 */
export function entryValues(n: NormalizedEntry): Omit<EntryTable, "row_id" | "id" | "created_at" | "updated_at" | "revision"> {
  return {
    spiffe_id: n.spiffeId,
    parent_id: n.parentId,
    selectors_hash: n.selectorsHash,
    identity_hash: identityHash(n),
    selector_count: n.selectors.length,
    federates_with_count: n.federatesWith.length,
    x509_svid_ttl: n.x509SvidTtl,
    jwt_svid_ttl: n.jwtSvidTtl,
    dns_names: JSON.stringify(n.dnsNames),
    admin: n.admin ? 1 : 0,
    downstream: n.downstream ? 1 : 0,
    hint: n.hint,
    expires_at: n.expiresAt,
  };
}

function agentValues(n: NormalizedAgent): Omit<AgentTable, "row_id" | "spiffe_id" | "created_at" | "updated_at"> {
  return {
    attestation_type: n.attestationType,
    selector_count: n.selectors.length,
    cert_serial: n.certSerial,
    cert_not_after: n.certNotAfter,
    new_cert_serial: n.newCertSerial,
    new_cert_not_after: n.newCertNotAfter,
    can_reattest: n.canReattest ? 1 : 0,
    banned: n.banned ? 1 : 0,
  };
}

/**
 * Opens a datastore on `options.db`, migrating its schema first.
 *
 * @throws SigilError `ERR_INTERNAL` when the database was migrated by a newer
 * Sigil (naming both versions), `ERR_UNAVAILABLE` when it cannot be reached.
 */
export async function createSqlDatastore(options: SqlDatastoreOptions): Promise<Datastore> {
  const maxAttempts = options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > 100) throw invalid("maxAttempts must be an integer from 1 to 100");
  let dialect: SqlDialect;
  try {
    dialect = await options.dialect.forServer(options.db);
    await migrateSql(options.db, dialect, SQL_MIGRATIONS, options.clock.now());
  } catch (e) {
    await options.db.destroy().catch(() => undefined);
    if (e instanceof SigilError) throw e;
    const cls = options.dialect.classify(e);
    throw new SigilError(cls === "unavailable" ? "ERR_UNAVAILABLE" : "ERR_INTERNAL", `datastore: cannot open the ${options.dialect.name} database: ${describe(e)}`, { cause: e });
  }
  return new SqlDatastore({ ...options, dialect }, maxAttempts);
}

function describe(e: unknown): string {
  if (e instanceof AggregateError && e.errors.length > 0) return e.errors.map(describe).join("; ");
  return e instanceof Error ? e.message || (e as { code?: string }).code || e.name : String(e);
}

class SqlDatastore implements Datastore {
  readonly #db: Db;
  readonly #dialect: SqlDialect;
  readonly #clock: Clock;
  readonly #maxAttempts: number;
  readonly #newEntryId: () => string;
  readonly #notifier: ChangeNotifier;
  readonly #watchEvents: SqlDatastoreOptions["watchEvents"];
  readonly #watchers = new Set<() => Promise<void>>();
  readonly #issuanceNormalizer = new IssuanceNormalizer();
  /** Context IDs by context key; IDs are never reused, so a stale one fails its foreign key instead of mislabelling. */
  readonly #contextIds = new Map<string, number>();
  #closed = false;

  constructor(options: SqlDatastoreOptions, maxAttempts: number) {
    this.#db = options.db;
    this.#dialect = options.dialect;
    this.#clock = options.clock;
    this.#maxAttempts = maxAttempts;
    this.#newEntryId = options.newEntryId ?? defaultEntryId;
    this.#notifier = new ChangeNotifier(options.onListenerError);
    this.#watchEvents = options.watchEvents;
  }

  // ── plumbing ───────────────────────────────────────────────────────────

  #checkOpen(): void {
    if (this.#closed) throw new SigilError("ERR_UNAVAILABLE", "datastore: closed");
  }

  #wrap(e: unknown, cls: SqlErrorClass = this.#dialect.classify(e)): SigilError {
    if (e instanceof SigilError) return e;
    const message = describe(e);
    switch (cls) {
      case "unavailable":
        return new SigilError("ERR_UNAVAILABLE", `datastore: ${this.#dialect.name} unavailable: ${message}`, { cause: e });
      case "retry":
        return new SigilError("ERR_UNAVAILABLE", `datastore: ${this.#dialect.name} transaction kept conflicting with others (${this.#maxAttempts} attempts): ${message}`, { cause: e });
      case "unique":
        return new SigilError("ERR_ALREADY_EXISTS", `datastore: a concurrent write stored the same object: ${message}`, { cause: e });
      default:
        return new SigilError("ERR_INTERNAL", `datastore: ${message}`, { cause: e });
    }
  }

  /** A read; `snapshot` runs it in one REPEATABLE READ transaction (several statements, one view). */
  async #read<T>(fn: (db: Db) => Promise<T>, snapshot = false): Promise<T> {
    this.#checkOpen();
    try {
      return snapshot ? await this.#db.transaction().setIsolationLevel("repeatable read").execute(fn) : await fn(this.#db);
    } catch (e) {
      throw this.#wrap(e);
    }
  }

  /**
   * A write in one SERIALIZABLE transaction, run again on serialization
   * failures, deadlocks and constraint violations caused by concurrent
   * writers (the next attempt's checks see their rows); listeners hear the
   * committed events.
   */
  async #write<T>(fn: (trx: Transaction<SqlSchema>, now: number, events: Events, attempt: number) => Promise<T>): Promise<T> {
    this.#checkOpen();
    for (let attempt = 1; ; attempt++) {
      const events: Events = [];
      try {
        const now = this.#clock.now().getTime();
        const result = await this.#db
          .transaction()
          .setIsolationLevel("serializable")
          .execute(async (trx) => {
            const r = await fn(trx, now, events, attempt);
            const last = events[events.length - 1];
            // Delivered to the other servers' feeds when this transaction commits.
            if (last !== undefined && this.#watchEvents !== undefined) await sql`SELECT pg_notify(${CHANGE_EVENTS_CHANNEL}, ${String(last.eventId)})`.execute(trx);
            return r;
          });
        this.#notifier.notify(events);
        return result;
      } catch (e) {
        if (e instanceof SigilError) throw e;
        const cls = this.#dialect.classify(e);
        if ((cls === "retry" || cls === "unique" || cls === "foreign-key") && attempt < this.#maxAttempts && !this.#closed) {
          await new Promise((resolve) => setTimeout(resolve, Math.random() * Math.min(250, 5 * 2 ** attempt)));
          continue;
        }
        throw this.#wrap(e, cls);
      }
    }
  }

  async #event(trx: Db, events: Events, kind: ChangeKind, objectId: string, op: ChangeOp, at: number): Promise<void> {
    const eventId = await this.#dialect.insertId(trx.insertInto("change_events").values({ kind, object_id: objectId, op, at }), "event_id");
    events.push({ eventId, kind, objectId, op, at: new Date(at) });
  }

  async #page<R extends { row_id: number }, T>(
    db: Db,
    list: "entries" | "agents",
    table: "registration_entries" | "attested_agents",
    where: SqlCondition,
    req: PageRequest,
    load: (rows: R[], span: RowSpan | undefined) => Promise<T[]>,
  ): Promise<Page<T>> {
    const size = checkPageSize(req.pageSize);
    const after = req.pageToken === undefined ? 0 : decodePageToken(list, req.pageToken);
    const limit = size === undefined ? sql`` : sql`LIMIT ${sql.raw(String(size + 1))}`;
    const result = await sql<R>`SELECT t.* FROM ${sql.table(table)} t WHERE t.row_id > ${after} AND (${conditionSql(where)}) ORDER BY t.row_id ${limit}`.execute(db);
    // Rows are the driver's fresh objects: normalised in place rather than copied (a full listing is hundreds of thousands).
    const rows = result.rows;
    for (const r of rows) r.row_id = Number(r.row_id);
    const more = size !== undefined && rows.length > size;
    if (more) rows.length = size;
    const last = rows[rows.length - 1];
    // Unfiltered, the page is every row in (after, last]: child rows can be read by that range, not by a list of IDs.
    const span = where.params.length === 0 && where.sql === UNFILTERED && last !== undefined ? { after, last: last.row_id } : undefined;
    const items = await load(rows, span);
    return more && last !== undefined ? { items, nextPageToken: encodePageToken(list, last.row_id) } : { items };
  }

  // ── entries ────────────────────────────────────────────────────────────

  /** The entries of `rows`; `span`: the rows are every row in it, so their selectors and trust domains are read by range. */
  async #loadEntries(db: Db, rows: readonly EntryRow[], span?: RowSpan): Promise<RegistrationEntry[]> {
    if (rows.length === 0) return [];
    const ids = span === undefined ? rows.map((r) => Number(r.row_id)) : [];
    const [selectors, federates] = await Promise.all([
      (span === undefined
        ? db.selectFrom("entry_selectors").select(["owner_row", "type", "value"]).where("owner_row", "in", ids)
        : db.selectFrom("entry_selectors").select(["owner_row", "type", "value"]).where("owner_row", ">", span.after).where("owner_row", "<=", span.last)
      ).execute(),
      (span === undefined
        ? db.selectFrom("entry_federates_with").select(["owner_row", "trust_domain"]).where("owner_row", "in", ids)
        : db.selectFrom("entry_federates_with").select(["owner_row", "trust_domain"]).where("owner_row", ">", span.after).where("owner_row", "<=", span.last)
      ).execute(),
    ]);
    const sel = groupByOwner(selectors);
    const fed = groupByOwner(federates);
    return rows.map((r) => toEntry(r, sel.get(Number(r.row_id)), fed.get(Number(r.row_id))?.map((f) => f.trust_domain)));
  }

  async #entryRow(db: Db, id: string): Promise<EntryRow | undefined> {
    const row = await db.selectFrom("registration_entries").selectAll().where("id", "=", id).executeTakeFirst();
    return row === undefined ? undefined : { ...row, row_id: Number(row.row_id) };
  }

  async #loadEntry(db: Db, row: EntryRow): Promise<RegistrationEntry> {
    return (await this.#loadEntries(db, [row]))[0] as RegistrationEntry;
  }

  /** Refuses a second entry with the same SPIFFE ID, parent ID and selector set (the UNIQUE identity hash backs this under races). */
  async #checkEntryUnique(db: Db, n: NormalizedEntry, selfRow: number | undefined): Promise<void> {
    const other = await db.selectFrom("registration_entries").select(["id", "row_id"]).where("identity_hash", "=", identityHash(n)).executeTakeFirst();
    if (other !== undefined && Number(other.row_id) !== selfRow) {
      throw new SigilError("ERR_ALREADY_EXISTS", `datastore: entry ${other.id} already has SPIFFE ID ${n.spiffeId}, parent ID ${n.parentId} and the same selectors`);
    }
  }

  async #checkBundlesExist(db: Db, trustDomains: readonly string[]): Promise<void> {
    if (trustDomains.length === 0) return;
    const rows = await db.selectFrom("bundles").select("trust_domain").where("trust_domain", "in", [...trustDomains]).execute();
    const held = new Set(rows.map((r) => r.trust_domain));
    for (const td of trustDomains) if (!held.has(td)) throw invalid(`entry federates with ${td}, which has no stored bundle`);
  }

  async #writeEntryMembers(db: Db, rowId: number, n: NormalizedEntry, replace: boolean): Promise<void> {
    if (replace) {
      await db.deleteFrom("entry_selectors").where("owner_row", "=", rowId).execute();
      await db.deleteFrom("entry_federates_with").where("owner_row", "=", rowId).execute();
    }
    if (n.selectors.length > 0) await db.insertInto("entry_selectors").values(n.selectors.map((s) => ({ owner_row: rowId, type: s.type, value: s.value }))).execute();
    if (n.federatesWith.length > 0) await db.insertInto("entry_federates_with").values(n.federatesWith.map((td) => ({ owner_row: rowId, trust_domain: td }))).execute();
  }

  async #insertEntry(trx: Db, input: EntryInput, now: number, events: Events): Promise<RegistrationEntry> {
    const n = normalizeEntry(input);
    const id = input.id === undefined ? this.#newEntryId() : checkEntryId(input.id);
    if (input.id === undefined) checkEntryId(id);
    if ((await this.#entryRow(trx, id)) !== undefined) throw new SigilError("ERR_ALREADY_EXISTS", `datastore: entry ${id} already exists`);
    await this.#checkEntryUnique(trx, n, undefined);
    await this.#checkBundlesExist(trx, n.federatesWith);
    const rowId = await this.#dialect.insertId(
      trx.insertInto("registration_entries").values({ id, ...entryValues(n), created_at: now, updated_at: now, revision: 0 }),
      "row_id",
    );
    await this.#writeEntryMembers(trx, rowId, n, false);
    await this.#event(trx, events, "entry", id, "create", now);
    return this.#loadEntry(trx, (await this.#entryRow(trx, id)) as EntryRow);
  }

  async createEntry(input: EntryInput): Promise<RegistrationEntry> {
    normalizeEntry(input); // validate before opening a transaction
    return this.#write((trx, now, events) => this.#insertEntry(trx, input, now, events));
  }

  async createEntries(inputs: readonly EntryInput[]): Promise<Array<BatchItemResult<RegistrationEntry>>> {
    if (!Array.isArray(inputs)) throw invalid("createEntries needs an array");
    if (inputs.length === 0) {
      this.#checkOpen();
      return [];
    }
    return this.#write(async (trx, now, events) => {
      const results: Array<BatchItemResult<RegistrationEntry>> = [];
      for (const input of inputs) {
        const itemEvents: Events = [];
        // A savepoint per item: a refused item rolls back alone. Database errors (conflicts) fail the
        // whole attempt, which runs again and then refuses the item by its checks.
        await sql`SAVEPOINT sigil_item`.execute(trx);
        try {
          const value = await this.#insertEntry(trx, input, now, itemEvents);
          await sql`RELEASE SAVEPOINT sigil_item`.execute(trx);
          events.push(...itemEvents);
          results.push({ ok: true, value });
        } catch (e) {
          if (!(e instanceof SigilError)) throw e;
          await sql`ROLLBACK TO SAVEPOINT sigil_item`.execute(trx);
          results.push({ ok: false, error: e });
        }
      }
      return results;
    });
  }

  async getEntry(id: string): Promise<RegistrationEntry | undefined> {
    if (typeof id !== "string") throw invalid("entry id must be a string");
    return this.#read(async (db) => {
      const row = await this.#entryRow(db, id);
      return row === undefined ? undefined : this.#loadEntry(db, row);
    }, true);
  }

  async updateEntry(id: string, changes: EntryChanges, mask?: readonly EntryField[]): Promise<RegistrationEntry> {
    if (typeof id !== "string") throw invalid("entry id must be a string");
    const fields = resolveMask("entry", ENTRY_FIELDS, changes, mask);
    return this.#write(async (trx, now, events) => {
      const row = await this.#entryRow(trx, id);
      if (row === undefined) throw notFound(`entry ${id}`);
      const { id: _id, createdAt: _c, updatedAt: _u, revision: _r, ...current } = await this.#loadEntry(trx, row);
      const n = normalizeEntry(applyMask("entry", current as EntryInput, changes, fields, ["spiffeId", "parentId", "selectors"]));
      await this.#checkEntryUnique(trx, n, row.row_id);
      await this.#checkBundlesExist(trx, n.federatesWith);
      await trx
        .updateTable("registration_entries")
        .set({ ...entryValues(n), updated_at: now, revision: sql<number>`revision + 1` })
        .where("row_id", "=", row.row_id)
        .execute();
      if (fields.includes("selectors") || fields.includes("federatesWith")) await this.#writeEntryMembers(trx, row.row_id, n, true);
      await this.#event(trx, events, "entry", id, "update", now);
      return this.#loadEntry(trx, (await this.#entryRow(trx, id)) as EntryRow);
    });
  }

  async #deleteEntryRow(trx: Db, row: EntryRow, now: number, events: Events): Promise<RegistrationEntry> {
    const entry = await this.#loadEntry(trx, row);
    await trx.deleteFrom("registration_entries").where("row_id", "=", row.row_id).execute();
    await this.#event(trx, events, "entry", row.id, "delete", now);
    return entry;
  }

  async deleteEntry(id: string): Promise<RegistrationEntry> {
    if (typeof id !== "string") throw invalid("entry id must be a string");
    return this.#write(async (trx, now, events) => {
      const row = await this.#entryRow(trx, id);
      if (row === undefined) throw notFound(`entry ${id}`);
      return this.#deleteEntryRow(trx, row, now, events);
    });
  }

  async listEntries(request: ListEntriesRequest = {}): Promise<Page<RegistrationEntry>> {
    const where = entryCondition(request.filter, "list");
    return this.#read((db) => this.#page<EntryRow, RegistrationEntry>(db, "entries", "registration_entries", where, request, (rows, span) => this.#loadEntries(db, rows, span)), true);
  }

  async countEntries(filter?: EntryFilter): Promise<number> {
    const where = entryCondition(filter, "list");
    return this.#read(async (db) => Number((await sql<{ n: unknown }>`SELECT COUNT(*) AS n FROM registration_entries t WHERE ${conditionSql(where)}`.execute(db)).rows[0]?.n ?? 0));
  }

  async pruneEntries(before: Date): Promise<number> {
    const t = checkTime("prune before", before);
    return this.#write(async (trx, now, events) => {
      const rows = await trx.selectFrom("registration_entries").selectAll().where("expires_at", "is not", null).where("expires_at", "<", t).orderBy("row_id").execute();
      for (const row of rows) await this.#deleteEntryRow(trx, { ...row, row_id: Number(row.row_id) }, now, events);
      return rows.length;
    });
  }

  // ── agents ─────────────────────────────────────────────────────────────

  async #loadAgents(db: Db, rows: readonly AgentRow[]): Promise<AttestedAgent[]> {
    if (rows.length === 0) return [];
    const selectors = groupByOwner(
      await db
        .selectFrom("agent_selectors")
        .select(["owner_row", "type", "value"])
        .where("owner_row", "in", rows.map((r) => Number(r.row_id)))
        .execute(),
    );
    return rows.map((r) => toAgent(r, selectors.get(Number(r.row_id))));
  }

  async #agentRow(db: Db, spiffeId: string): Promise<AgentRow | undefined> {
    const row = await db.selectFrom("attested_agents").selectAll().where("spiffe_id", "=", spiffeId).executeTakeFirst();
    return row === undefined ? undefined : { ...row, row_id: Number(row.row_id) };
  }

  async #loadAgent(db: Db, row: AgentRow): Promise<AttestedAgent> {
    return (await this.#loadAgents(db, [row]))[0] as AttestedAgent;
  }

  async #writeAgentSelectors(db: Db, rowId: number, n: NormalizedAgent, replace: boolean): Promise<void> {
    if (replace) await db.deleteFrom("agent_selectors").where("owner_row", "=", rowId).execute();
    if (n.selectors.length > 0) await db.insertInto("agent_selectors").values(n.selectors.map((s) => ({ owner_row: rowId, type: s.type, value: s.value }))).execute();
  }

  async createAgent(input: AgentInput): Promise<AttestedAgent> {
    const n = normalizeAgent(input);
    const tokenKey = input.joinToken === undefined ? undefined : joinTokenKey(checkJoinToken(input.joinToken));
    return this.#write(async (trx, now, events) => {
      // Spent first: a refused token writes nothing, and a failure below puts it back (rollback).
      if (tokenKey !== undefined) await this.#spendJoinToken(trx, tokenKey, now);
      if ((await this.#agentRow(trx, n.spiffeId)) !== undefined) throw new SigilError("ERR_ALREADY_EXISTS", `datastore: agent ${n.spiffeId} already exists`);
      const rowId = await this.#dialect.insertId(
        trx.insertInto("attested_agents").values({ spiffe_id: n.spiffeId, ...agentValues(n), banned: 0, created_at: now, updated_at: now }),
        "row_id",
      );
      await this.#writeAgentSelectors(trx, rowId, n, false);
      await this.#event(trx, events, "agent", n.spiffeId, "create", now);
      return this.#loadAgent(trx, (await this.#agentRow(trx, n.spiffeId)) as AgentRow);
    });
  }

  async getAgent(spiffeId: string): Promise<AttestedAgent | undefined> {
    const id = checkSpiffeId("agent spiffeId", spiffeId);
    return this.#read(async (db) => {
      const row = await this.#agentRow(db, id);
      return row === undefined ? undefined : this.#loadAgent(db, row);
    }, true);
  }

  async listAgents(request: ListAgentsRequest = {}): Promise<Page<AttestedAgent>> {
    const where = agentCondition(request.filter, "list");
    return this.#read((db) => this.#page<AgentRow, AttestedAgent>(db, "agents", "attested_agents", where, request, (rows) => this.#loadAgents(db, rows)), true);
  }

  async countAgents(filter?: AgentFilter): Promise<number> {
    const where = agentCondition(filter, "list");
    return this.#read(async (db) => Number((await sql<{ n: unknown }>`SELECT COUNT(*) AS n FROM attested_agents t WHERE ${conditionSql(where)}`.execute(db)).rows[0]?.n ?? 0));
  }

  async #updateAgent(spiffeId: string, changes: AgentChanges, fields: readonly AgentField[]): Promise<AttestedAgent> {
    const id = checkSpiffeId("agent spiffeId", spiffeId);
    return this.#write(async (trx, now, events) => {
      const row = await this.#agentRow(trx, id);
      if (row === undefined) throw notFound(`agent ${id}`);
      const { createdAt: _c, updatedAt: _u, ...current } = await this.#loadAgent(trx, row);
      const n = normalizeAgent(applyMask("agent", current as AgentInput & { banned: boolean }, changes, fields, ["attestationType", "certSerial", "certNotAfter"]));
      await trx.updateTable("attested_agents").set({ ...agentValues(n), updated_at: now }).where("row_id", "=", row.row_id).execute();
      if (fields.includes("selectors")) await this.#writeAgentSelectors(trx, row.row_id, n, true);
      await this.#event(trx, events, "agent", id, "update", now);
      return this.#loadAgent(trx, (await this.#agentRow(trx, id)) as AgentRow);
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
    return this.#write(async (trx, now, events) => {
      const row = await this.#agentRow(trx, id);
      if (row === undefined) throw notFound(`agent ${id}`);
      const agent = await this.#loadAgent(trx, row);
      await trx.deleteFrom("attested_agents").where("row_id", "=", row.row_id).execute();
      await this.#event(trx, events, "agent", id, "delete", now);
      return agent;
    });
  }

  // ── join tokens ────────────────────────────────────────────────────────

  async createJoinToken(input: JoinTokenInput): Promise<void> {
    const t = normalizeJoinToken(input);
    await this.#write(async (trx, now) => {
      const held = await trx.selectFrom("join_tokens").select("token_hash").where("token_hash", "=", t.key).executeTakeFirst();
      if (held !== undefined) throw new SigilError("ERR_ALREADY_EXISTS", "datastore: join token already exists");
      await trx.insertInto("join_tokens").values({ token_hash: t.key, expires_at: t.expiresAt, agent_id: t.agentId, created_at: now }).execute();
    });
  }

  async consumeJoinToken(token: string, now?: Date): Promise<ConsumedJoinToken> {
    const key = joinTokenKey(checkJoinToken(token));
    const at = now === undefined ? this.#clock.now().getTime() : checkTime("consume time", now);
    return this.#write((trx) => this.#spendJoinToken(trx, key, at));
  }

  async peekJoinToken(token: string, now?: Date): Promise<ConsumedJoinToken> {
    const key = joinTokenKey(checkJoinToken(token));
    const at = now === undefined ? this.#clock.now().getTime() : checkTime("peek time", now);
    return this.#read(async (db) => usableJoinToken(await db.selectFrom("join_tokens").select(["expires_at", "agent_id"]).where("token_hash", "=", key).executeTakeFirst(), at));
  }

  /** Inside a write: deletes the token if usable at `at`, or throws. */
  async #spendJoinToken(trx: Transaction<SqlSchema>, key: string, at: number): Promise<ConsumedJoinToken> {
    // Lock the row, then delete it: of two servers racing, the second finds no row (or conflicts and retries).
    const token = usableJoinToken(await trx.selectFrom("join_tokens").select(["expires_at", "agent_id"]).where("token_hash", "=", key).forUpdate().executeTakeFirst(), at);
    const deleted = await trx.deleteFrom("join_tokens").where("token_hash", "=", key).executeTakeFirst();
    if (Number(deleted.numDeletedRows) !== 1) throw joinTokenNotFound();
    return token;
  }

  async hasPendingJoinTokenFor(agentId: string, now?: Date): Promise<boolean> {
    const id = checkSpiffeId("agent ID", agentId);
    const at = now === undefined ? this.#clock.now().getTime() : checkTime("query time", now);
    const m = /\/spire\/agent\/join_token\/([A-Za-z0-9._-]+)$/.exec(id);
    return this.#read(async (db) => {
      if (m) {
        const byDefault = await db
          .selectFrom("join_tokens")
          .select("token_hash")
          .where("token_hash", "=", joinTokenKey(m[1] as string))
          .where("agent_id", "is", null)
          .where("expires_at", ">", at)
          .executeTakeFirst();
        if (byDefault !== undefined) return true;
      }
      return (await db.selectFrom("join_tokens").select("token_hash").where("agent_id", "=", id).where("expires_at", ">", at).executeTakeFirst()) !== undefined;
    });
  }

  async pruneJoinTokens(now: Date): Promise<number> {
    const t = checkTime("prune time", now);
    return this.#write(async (trx) => Number((await trx.deleteFrom("join_tokens").where("expires_at", "<=", t).executeTakeFirst()).numDeletedRows));
  }

  // ── bundles ────────────────────────────────────────────────────────────

  async getBundle(trustDomain: string): Promise<StoredBundle | undefined> {
    const td = checkTrustDomainName("bundle trustDomain", trustDomain);
    return this.#read(async (db) => {
      const row = await db.selectFrom("bundles").selectAll().where("trust_domain", "=", td).executeTakeFirst();
      return row === undefined ? undefined : toBundle(row);
    });
  }

  async listBundles(): Promise<StoredBundle[]> {
    return this.#read(async (db) => (await db.selectFrom("bundles").selectAll().orderBy("trust_domain").execute()).map(toBundle));
  }

  /** Inserts or replaces a bundle row (keeping `created_at`) and its change event, given what is stored now. */
  async #putBundle(trx: Db, events: Events, b: { trustDomain: string; document: string; sequence: string }, current: { created_at: number } | undefined, now: number): Promise<StoredBundle> {
    await this.#event(trx, events, "bundle", b.trustDomain, current === undefined ? "create" : "update", now);
    if (current === undefined) {
      await trx.insertInto("bundles").values({ trust_domain: b.trustDomain, document: b.document, sequence: b.sequence, created_at: now, updated_at: now }).execute();
    } else {
      await trx.updateTable("bundles").set({ document: b.document, sequence: b.sequence, updated_at: now }).where("trust_domain", "=", b.trustDomain).execute();
    }
    return { trustDomain: b.trustDomain, document: b.document, sequence: b.sequence, createdAt: new Date(Number(current?.created_at ?? now)), updatedAt: new Date(now) };
  }

  async setBundle(input: BundleInput, options: SetBundleOptions = {}): Promise<StoredBundle> {
    const b = normalizeBundle(input);
    const expected = options.expectedSequence === undefined || options.expectedSequence === null ? options.expectedSequence : checkSequence("expectedSequence", options.expectedSequence);
    const relationshipAt = options.relationshipUpdatedAt === undefined ? undefined : checkTime("relationshipUpdatedAt", options.relationshipUpdatedAt);
    return this.#write(async (trx, now, events) => {
      if (relationshipAt !== undefined) {
        const rel = await trx.selectFrom("federation_relationships").select("updated_at").where("trust_domain", "=", b.trustDomain).forUpdate().executeTakeFirst();
        if (rel === undefined || Number(rel.updated_at) !== relationshipAt) throw relationshipChanged(b.trustDomain);
      }
      const current = await trx.selectFrom("bundles").select(["sequence", "created_at"]).where("trust_domain", "=", b.trustDomain).forUpdate().executeTakeFirst();
      const held = current === undefined ? undefined : String(current.sequence);
      if (expected !== undefined && (held ?? null) !== expected) {
        throw invalid(`bundle for ${b.trustDomain} ${held === undefined ? "does not exist" : `has sequence ${held}`}, expected ${expected === null ? "no bundle" : `sequence ${expected}`}`);
      }
      return this.#putBundle(trx, events, b, current, now);
    });
  }

  async deleteBundle(trustDomain: string, mode: BundleDeleteMode = "restrict"): Promise<void> {
    const td = checkTrustDomainName("bundle trustDomain", trustDomain);
    checkDeleteMode(mode);
    await this.#write(async (trx, now, events) => {
      if (!(await this.#deleteBundleRow(trx, td, mode, now, events))) throw notFound(`bundle for ${td}`);
    });
  }

  /** Deletes a stored bundle (dissociating or refusing its users, per `mode`); false when none is stored. */
  async #deleteBundleRow(trx: Db, td: string, mode: BundleDeleteMode, now: number, events: Events): Promise<boolean> {
    if ((await trx.selectFrom("bundles").select("trust_domain").where("trust_domain", "=", td).forUpdate().executeTakeFirst()) === undefined) return false;
    const users = await trx
      .selectFrom("entry_federates_with as f")
      .innerJoin("registration_entries as e", "e.row_id", "f.owner_row")
      .select(["e.row_id", "e.id"])
      .where("f.trust_domain", "=", td)
      .orderBy("e.row_id")
      .execute();
    if (users.length > 0 && mode === "restrict") {
      throw new SigilError(
        "ERR_FAILED_PRECONDITION",
        `datastore: bundle for ${td} is still federated with by ${users.length} entries (first: ${(users[0] as { id: string }).id}); use mode "dissociate" or update them first`,
      );
    }
    for (const u of users) {
      const rowId = Number(u.row_id);
      await trx.deleteFrom("entry_federates_with").where("owner_row", "=", rowId).where("trust_domain", "=", td).execute();
      await trx
        .updateTable("registration_entries")
        .set({ federates_with_count: sql<number>`federates_with_count - 1`, revision: sql<number>`revision + 1`, updated_at: now })
        .where("row_id", "=", rowId)
        .execute();
      await this.#event(trx, events, "entry", u.id, "update", now);
    }
    await trx.deleteFrom("bundles").where("trust_domain", "=", td).execute();
    await this.#event(trx, events, "bundle", td, "delete", now);
    return true;
  }

  // ── federation relationships ───────────────────────────────────────────

  async #writeRelationship(kind: "create" | "update" | "put", input: FederationRelationshipInput, options: FederationRelationshipWriteOptions): Promise<FederationRelationship> {
    const r = normalizeFederationRelationship(input);
    const initial = options.initialBundle === undefined ? undefined : normalizeBundle({ trustDomain: r.trustDomain, document: options.initialBundle.document, sequence: options.initialBundle.sequence });
    const onlyIfAbsent = options.initialBundle?.onlyIfAbsent === true;
    return this.#write(async (trx, now, events) => {
      const existing = await trx.selectFrom("federation_relationships").select("created_at").where("trust_domain", "=", r.trustDomain).forUpdate().executeTakeFirst();
      if (kind === "create" && existing !== undefined) throw new SigilError("ERR_ALREADY_EXISTS", `datastore: a federation relationship with ${r.trustDomain} already exists`);
      if (kind === "update" && existing === undefined) throw notFound(`federation relationship with ${r.trustDomain}`);
      const values = { bundle_endpoint_url: r.bundleEndpointUrl, profile: r.profile, endpoint_spiffe_id: r.endpointSpiffeId, source: r.source, updated_at: now };
      if (existing === undefined) {
        await trx.insertInto("federation_relationships").values({ trust_domain: r.trustDomain, ...values, created_at: now }).execute();
      } else {
        await trx.updateTable("federation_relationships").set(values).where("trust_domain", "=", r.trustDomain).execute();
      }
      if (initial !== undefined) {
        const current = await trx.selectFrom("bundles").select("created_at").where("trust_domain", "=", r.trustDomain).forUpdate().executeTakeFirst();
        if (!(onlyIfAbsent && current !== undefined)) await this.#putBundle(trx, events, initial, current, now);
      }
      return toRelationship({ trust_domain: r.trustDomain, ...values, created_at: Number(existing?.created_at ?? now) });
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
    return this.#read(async (db) => {
      const row = await db.selectFrom("federation_relationships").selectAll().where("trust_domain", "=", td).executeTakeFirst();
      return row === undefined ? undefined : toRelationship(row);
    });
  }

  async listFederationRelationships(): Promise<FederationRelationship[]> {
    return this.#read(async (db) => (await db.selectFrom("federation_relationships").selectAll().orderBy("trust_domain").execute()).map(toRelationship));
  }

  async deleteFederationRelationship(trustDomain: string, mode: BundleDeleteMode = "restrict"): Promise<FederationRelationship> {
    const td = checkTrustDomainName("federation relationship trustDomain", trustDomain);
    checkDeleteMode(mode);
    return this.#write(async (trx, now, events) => {
      const row = await trx.selectFrom("federation_relationships").selectAll().where("trust_domain", "=", td).forUpdate().executeTakeFirst();
      if (row === undefined) throw notFound(`federation relationship with ${td}`);
      await this.#deleteBundleRow(trx, td, mode, now, events);
      await trx.deleteFrom("federation_relationships").where("trust_domain", "=", td).execute();
      return toRelationship(row);
    });
  }

  // ── CA journal ─────────────────────────────────────────────────────────

  async upsertCaJournal(input: CaJournalInput): Promise<CaJournalRecord> {
    const j = normalizeCaJournal(input);
    return this.#write(async (trx, now) => {
      const existing = await trx
        .selectFrom("ca_journal")
        .select(["key_id", "created_at"])
        .where("server_id", "=", j.serverId)
        .where("kind", "=", j.kind)
        .where("slot_id", "=", j.slotId)
        .forUpdate()
        .executeTakeFirst();
      const values = {
        key_id: j.keyId,
        status: j.status,
        public_key: j.publicKeyDer,
        certificate: j.certDer,
        chain: j.chainDers,
        roots: j.rootDers,
        not_before: j.notBefore,
        not_after: j.notAfter,
        updated_at: now,
      };
      // A status change of the same key keeps when the key was first recorded.
      const createdAt = existing !== undefined && existing.key_id === j.keyId ? Number(existing.created_at) : now;
      if (existing === undefined) {
        await trx.insertInto("ca_journal").values({ server_id: j.serverId, kind: j.kind, slot_id: j.slotId, ...values, created_at: createdAt }).execute();
      } else {
        await trx
          .updateTable("ca_journal")
          .set({ ...values, created_at: createdAt })
          .where("server_id", "=", j.serverId)
          .where("kind", "=", j.kind)
          .where("slot_id", "=", j.slotId)
          .execute();
      }
      return toJournal({ server_id: j.serverId, kind: j.kind, slot_id: j.slotId, ...values, created_at: createdAt });
    });
  }

  async listCaJournal(kind?: CaKeyKind): Promise<CaJournalRecord[]> {
    if (kind !== undefined && kind !== "x509" && kind !== "jwt") throw invalid('ca journal kind must be "x509" or "jwt"');
    return this.#read(async (db) => {
      let q = db.selectFrom("ca_journal").selectAll();
      if (kind !== undefined) q = q.where("kind", "=", kind);
      return (await q.orderBy("server_id").orderBy("kind").orderBy("slot_id").execute()).map(toJournal);
    });
  }

  // ── issuance log ───────────────────────────────────────────────────────

  /** The stored ID of `ctx` (created on first use), remembering it in `fresh` until the transaction commits. */
  async #contextId(trx: Db, ctx: IssuanceContext, fresh: Map<string, number>): Promise<number> {
    const known = this.#contextIds.get(ctx.key) ?? fresh.get(ctx.key);
    if (known !== undefined) return known;
    const hash = sha256(ctx.key);
    const row = await trx.selectFrom("issuance_contexts").select("context_id").where("context_hash", "=", hash).executeTakeFirst();
    const id =
      row !== undefined
        ? Number(row.context_id)
        : await this.#dialect.insertId(
            trx.insertInto("issuance_contexts").values({
              context_hash: hash,
              kind: ctx.kind,
              spiffe_id: ctx.spiffeId,
              entry_id: ctx.entryId,
              agent_id: ctx.agentId,
              ca_key_id: ctx.caKeyId,
              selectors: ctx.selectors,
              requested_by: ctx.requestedBy,
              audience: ctx.audience,
            }),
            "context_id",
          );
    fresh.set(ctx.key, id);
    return id;
  }

  async recordIssuances(records: readonly IssuanceInput[], logEntries?: readonly TlogEntryInput[]): Promise<number | undefined> {
    if (!Array.isArray(records)) throw invalid("recordIssuances needs an array");
    if (records.length > MAX_ISSUANCE_BATCH) throw invalid(`recordIssuances takes at most ${MAX_ISSUANCE_BATCH} records, got ${records.length}`);
    // Validate the whole batch before writing: one bad record refuses all.
    const batch = this.#issuanceNormalizer.normalize(records);
    const log = checkTlogEntries(logEntries);
    this.#checkOpen();
    if (batch.rows.length === 0 && log.length === 0) return undefined;
    const fresh = new Map<string, number>();
    const first = await this.#write(async (trx, _now, _events, attempt) => {
      fresh.clear();
      // A retried attempt may be retrying because a remembered context was pruned by another server.
      if (attempt > 1) this.#contextIds.clear();
      const ids: number[] = [];
      for (const ctx of batch.contexts) ids.push(await this.#contextId(trx, ctx, fresh));
      const rows = batch.rows;
      for (let start = 0; start < rows.length; start += INSERT_CHUNK_ROWS * ISSUANCE_ROW_WIDTH) {
        const values = [];
        for (let i = start; i < Math.min(rows.length, start + INSERT_CHUNK_ROWS * ISSUANCE_ROW_WIDTH); i += ISSUANCE_ROW_WIDTH) {
          values.push({
            context_id: ids[rows[i] as number] as number,
            serial: rows[i + 1] as string,
            not_before: rows[i + 2] as number,
            not_after: rows[i + 3] as number,
            issued_at: rows[i + 4] as number,
            jwt_id: rows[i + 5] as string | null,
          });
        }
        await trx.insertInto("issuances").values(values).execute();
      }
      return this.#appendTlog(trx, log);
    });
    if (this.#contextIds.size + fresh.size > MAX_CACHED_CONTEXT_IDS) this.#contextIds.clear();
    for (const [k, v] of fresh) this.#contextIds.set(k, v);
    return first;
  }

  /**
   * Appends log entries at the next indices. The counter row is locked last,
   * so concurrent writers (on any server) wait for it only briefly and take
   * indices in commit order. Returns the index of the first (undefined without entries).
   */
  async #appendTlog(trx: Transaction<SqlSchema>, log: readonly TlogEntryInput[]): Promise<number | undefined> {
    if (log.length === 0) return undefined;
    const row = await trx.selectFrom("tlog_counter").select("next_idx").where("id", "=", 0).forUpdate().executeTakeFirst();
    if (row === undefined) throw new SigilError("ERR_INTERNAL", "datastore: the tlog_counter row is missing");
    const first = Number(row.next_idx);
    for (let start = 0; start < log.length; start += INSERT_CHUNK_ROWS) {
      const values = log.slice(start, start + INSERT_CHUNK_ROWS).map((e, i) => ({ idx: first + start + i, lookup_key: e.lookupKey, entry: Buffer.from(e.entry.buffer, e.entry.byteOffset, e.entry.byteLength) }));
      await trx.insertInto("tlog_entries").values(values).execute();
    }
    await trx.updateTable("tlog_counter").set({ next_idx: first + log.length }).where("id", "=", 0).execute();
    return first;
  }

  // ── transparency log ───────────────────────────────────────────────────

  async tlogSize(): Promise<number> {
    return this.#read(async (db) => {
      const row = await db.selectFrom("tlog_counter").select("next_idx").where("id", "=", 0).executeTakeFirst();
      return row === undefined ? 0 : Number(row.next_idx);
    });
  }

  async readTlogEntries(start: number, end: number): Promise<Uint8Array[]> {
    checkTlogRange(start, end);
    if (end === start) return [];
    return this.#read(async (db) => {
      const rows = await db.selectFrom("tlog_entries").select("entry").where("idx", ">=", start).where("idx", "<", end).orderBy("idx").execute();
      return rows.map((r) => r.entry);
    });
  }

  async findTlogEntry(lookupKey: string): Promise<TlogStoredEntry | undefined> {
    if (typeof lookupKey !== "string") throw invalid("log lookup key must be a string");
    return this.#read(async (db) => {
      const r = await db.selectFrom("tlog_entries").select(["idx", "entry"]).where("lookup_key", "=", lookupKey).orderBy("idx").limit(1).executeTakeFirst();
      return r === undefined ? undefined : { index: Number(r.idx), entry: r.entry };
    });
  }

  async putTlogCheckpoint(c: TlogCheckpointRecord): Promise<void> {
    checkTlogCheckpoint(c);
    await this.#write(async (trx) => {
      await trx.deleteFrom("tlog_checkpoints").where("server_id", "=", c.serverId).where("tree_size", "=", c.treeSize).execute();
      await trx
        .insertInto("tlog_checkpoints")
        .values({ server_id: c.serverId, tree_size: c.treeSize, root_hash: Buffer.from(c.rootHash), note: c.note, created_at: c.createdAt.getTime() })
        .execute();
    });
  }

  async latestTlogCheckpoint(serverId: string): Promise<TlogCheckpointRecord | undefined> {
    return this.#read(async (db) => {
      const r = await db.selectFrom("tlog_checkpoints").selectAll().where("server_id", "=", serverId).orderBy("tree_size", "desc").limit(1).executeTakeFirst();
      return r === undefined ? undefined : { serverId: r.server_id, treeSize: Number(r.tree_size), rootHash: r.root_hash, note: r.note, createdAt: new Date(Number(r.created_at)) };
    });
  }

  async putTlogKey(k: TlogKeyRecord): Promise<void> {
    checkTlogKey(k);
    await this.#write(async (trx) => {
      await trx.deleteFrom("tlog_keys").where("server_id", "=", k.serverId).where("key_id", "=", k.keyId).execute();
      await trx
        .insertInto("tlog_keys")
        .values({ server_id: k.serverId, key_id: k.keyId, vkey: k.vkey, created_at: k.createdAt.getTime(), retired_at: k.retiredAt?.getTime() ?? null })
        .execute();
    });
  }

  async listTlogKeys(): Promise<TlogKeyRecord[]> {
    return this.#read(async (db) => {
      const rows = await db.selectFrom("tlog_keys").selectAll().orderBy("created_at").orderBy("server_id").orderBy("key_id").execute();
      return rows.map((r) => ({ serverId: r.server_id, keyId: r.key_id, vkey: r.vkey, createdAt: new Date(Number(r.created_at)), retiredAt: r.retired_at === null ? null : new Date(Number(r.retired_at)) }));
    });
  }

  async latestWitnessCheckpoint(origin: string): Promise<WitnessCheckpointRecord | undefined> {
    checkWitnessOrigin(origin);
    return this.#read(async (db) => {
      const r = await db.selectFrom("tlog_witness_checkpoints").selectAll().where("origin", "=", origin).executeTakeFirst();
      return r === undefined ? undefined : { origin: r.origin, treeSize: Number(r.tree_size), rootHash: r.root_hash, note: r.note, updatedAt: new Date(Number(r.updated_at)) };
    });
  }

  async advanceWitnessCheckpoint(next: WitnessCheckpointRecord, previous: { readonly treeSize: number; readonly rootHash: Uint8Array } | undefined): Promise<boolean> {
    checkWitnessCheckpoint(next);
    // Read and write in one serializable transaction: a concurrent advance makes one of them retry and see the other.
    return this.#write(async (trx) => {
      const cur = await trx.selectFrom("tlog_witness_checkpoints").select(["tree_size", "root_hash"]).where("origin", "=", next.origin).executeTakeFirst();
      if (previous === undefined ? cur !== undefined : cur === undefined || Number(cur.tree_size) !== previous.treeSize || !Buffer.from(cur.root_hash).equals(Buffer.from(previous.rootHash))) return false;
      const row = { tree_size: next.treeSize, root_hash: Buffer.from(next.rootHash), note: next.note, updated_at: next.updatedAt.getTime() };
      if (cur === undefined) await trx.insertInto("tlog_witness_checkpoints").values({ origin: next.origin, ...row }).execute();
      else await trx.updateTable("tlog_witness_checkpoints").set(row).where("origin", "=", next.origin).execute();
      return true;
    });
  }

  async issuanceInventory(request: IssuanceInventoryRequest): Promise<IssuanceInventory> {
    const { caKeyId, now, limit, countOnly } = checkInventoryRequest(request);
    // The shared condition's `?` placeholders become this dialect's bound values.
    const parts = LIVE_INVENTORY_CONDITION.split("?");
    const values: unknown[] = [caKeyId, now];
    const condition = sql.join(
      parts.flatMap((p, i) => (i < values.length ? [sql.raw(p), sql`${values[i]}`] : [sql.raw(p)])),
      sql.raw(""),
    );
    const from = sql`FROM issuance_contexts c JOIN issuances i ON i.context_id = c.context_id WHERE ${condition}`;
    return this.#read(async (db) => {
      if (countOnly) {
        const counted = await sql<{ n: number | string }>`SELECT COUNT(*) AS n ${from}`.execute(db);
        return countOnlyInventory(caKeyId, Number(counted.rows[0]?.n ?? 0));
      }
      const groups = await sql<{ agentId: string; spiffeId: string; n: number | string }>`SELECT c.agent_id AS ${sql.ref("agentId")}, c.spiffe_id AS ${sql.ref("spiffeId")}, COUNT(*) AS n ${from} GROUP BY c.agent_id, c.spiffe_id`.execute(db);
      const rows =
        limit === 0
          ? []
          : (
              await sql<{ serial: string; kind: IssuanceKind; spiffe_id: string; entry_id: string; agent_id: string; not_after: number | string }>`SELECT i.serial, c.kind, c.spiffe_id, c.entry_id, c.agent_id, i.not_after ${from} ORDER BY i.not_after, i.row_id LIMIT ${limit}`.execute(db)
            ).rows;
      return foldInventory(
        caKeyId,
        groups.rows.map((g) => ({ agentId: g.agentId, spiffeId: g.spiffeId, n: Number(g.n) })),
        rows.map(toInventorySvid),
      );
    });
  }

  async listIssuances(request: ListIssuancesRequest = {}): Promise<Page<IssuanceRecord>> {
    if (request === null || typeof request !== "object") throw invalid("listIssuances request must be an object");
    const size = checkPageSize(request.pageSize);
    const after = request.pageToken === undefined ? undefined : decodePageToken("issuances", request.pageToken);
    const spiffeId = request.spiffeId === undefined ? undefined : checkSpiffeId("issuance filter spiffeId", request.spiffeId);
    const entryId = request.entryId === undefined ? undefined : checkEntryId(request.entryId);
    const agentId = request.agentId === undefined ? undefined : checkSpiffeId("issuance filter agentId", request.agentId);
    const serial = request.serial === undefined ? undefined : checkSerialHex("issuance filter serial", request.serial);
    const liveAt = request.liveAt === undefined ? undefined : checkTime("issuance filter liveAt", request.liveAt);
    return this.#read(async (db) => {
      let q = db
        .selectFrom("issuances as i")
        .innerJoin("issuance_contexts as c", "c.context_id", "i.context_id")
        .select([
          "i.row_id",
          "i.serial",
          "c.kind",
          "c.spiffe_id",
          "c.entry_id",
          "c.agent_id",
          "c.ca_key_id",
          "i.not_before",
          "i.not_after",
          "i.issued_at",
          "c.selectors",
          "c.requested_by",
          "i.jwt_id",
          "c.audience",
        ]);
      if (after !== undefined) q = q.where("i.row_id", "<", after);
      if (spiffeId !== undefined) q = q.where("c.spiffe_id", "=", spiffeId);
      if (entryId !== undefined) q = q.where("c.entry_id", "=", entryId);
      if (agentId !== undefined) q = q.where("c.agent_id", "=", agentId);
      if (serial !== undefined) q = q.where("i.serial", "=", serial);
      if (liveAt !== undefined) q = q.where("i.not_before", "<=", liveAt).where("i.not_after", ">", liveAt);
      q = q.orderBy("i.row_id", "desc");
      if (size !== undefined) q = q.limit(size + 1);
      const rows = (await q.execute()).map((r): IssuanceRow => ({ ...r, row_id: Number(r.row_id) }));
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
    this.#checkOpen();
    // In chunks, each its own statement, so a large prune never holds locks for long.
    let removed = 0;
    try {
      for (;;) {
        const n = await this.#dialect.deleteExpiredIssuances(this.#db, t, PRUNE_CHUNK_ROWS);
        removed += n;
        if (n < PRUNE_CHUNK_ROWS) break;
      }
      if (removed > 0) {
        await sql`DELETE FROM issuance_contexts WHERE NOT EXISTS (SELECT 1 FROM issuances i WHERE i.context_id = issuance_contexts.context_id)`.execute(this.#db);
        this.#contextIds.clear();
      }
    } catch (e) {
      throw this.#wrap(e);
    }
    return removed;
  }

  // ── change feed ────────────────────────────────────────────────────────

  async listEvents(afterEventId: number, limit: number): Promise<ChangeEvent[]> {
    if (!Number.isSafeInteger(afterEventId) || afterEventId < 0) throw invalid("afterEventId must be a non-negative integer");
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE_SIZE) throw invalid(`event limit must be an integer from 1 to ${MAX_PAGE_SIZE}`);
    return this.#read(async (db) =>
      (await db.selectFrom("change_events").selectAll().where("event_id", ">", afterEventId).orderBy("event_id").limit(limit).execute()).map((r) => ({
        eventId: Number(r.event_id),
        kind: r.kind,
        objectId: r.object_id,
        op: r.op,
        at: new Date(Number(r.at)),
      })),
    );
  }

  async lastEventId(): Promise<number> {
    return this.#read(async (db) => {
      const row = await db.selectFrom("change_events").select((eb) => eb.fn.max("event_id").as("v")).executeTakeFirst();
      if (row?.v !== null && row?.v !== undefined) return Number(row.v);
      // Every event was pruned: the key generator still knows the highest ID handed out.
      return this.#dialect.lastAssignedEventId(db);
    });
  }

  async pruneEvents(before: Date): Promise<number> {
    const t = checkTime("prune before", before);
    return this.#write(async (trx) => Number((await trx.deleteFrom("change_events").where("at", "<", t).executeTakeFirst()).numDeletedRows));
  }

  subscribe(listener: ChangeListener): () => void {
    return this.#notifier.subscribe(listener);
  }

  async watchEvents(wake: (eventId: number | undefined) => void): Promise<(() => Promise<void>) | undefined> {
    this.#checkOpen();
    const start = this.#watchEvents;
    if (start === undefined) return undefined;
    try {
      const stop = await start(wake);
      this.#watchers.add(stop);
      return async () => {
        this.#watchers.delete(stop);
        await stop();
      };
    } catch (e) {
      throw this.#wrap(e);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#notifier.clear();
    this.#contextIds.clear();
    const watchers = [...this.#watchers];
    this.#watchers.clear();
    await Promise.all(watchers.map((stop) => stop().catch(() => undefined)));
    await this.#db.destroy();
  }
}
