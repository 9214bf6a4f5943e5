/**
 * The server's datastore: registration entries, attested agents, join tokens,
 * bundles, the CA key journal, the issuance log and the change feed, behind the async
 * {@link Datastore} interface, with SQLite (better-sqlite3) as the embedded
 * default driver and PostgreSQL (`postgres/`) and MySQL/MariaDB (`mysql/`) on
 * a shared Kysely layer (`sql/`: schema, migrations, queries; see
 * `sql/sql-datastore.ts` for their concurrency rules: SERIALIZABLE writes
 * retried on conflicts, uniqueness enforced by UNIQUE keys). `openDatastore`
 * picks the driver. Every driver passes the same contract suite
 * (test/unit/server/datastore).
 *
 * ## Durability and concurrency (SQLite driver)
 *
 * - **WAL journal, `synchronous = FULL`.** A commit is reported only after the
 *   WAL is fsynced. `NORMAL` (safe against corruption with WAL) can lose the
 *   last commits on power loss or an OS crash, and here a lost commit is a
 *   security event, not just lost work: a consumed join token would become
 *   usable again, a deleted entry or a banned agent would come back. The cost
 *   is one fsync per write transaction; batch writes (`createEntries`) share
 *   one. A process crash (`kill -9`) loses nothing committed under either
 *   setting; the crash test checks that.
 * - **One transaction per write call, opened IMMEDIATE.** The write lock is
 *   taken at BEGIN, so read-then-write transactions (uniqueness checks,
 *   join-token claims, compare-and-set on bundle sequences) never fail on lock
 *   upgrade and are serialised across every connection and process sharing the
 *   file; waits are bounded by the busy timeout (then `ERR_UNAVAILABLE`).
 * - **Change events in the same transaction as the change.** Every entry and
 *   agent write appends its event row before COMMIT, so the feed never shows a
 *   change that did not happen nor misses one that did. Writers are
 *   serialised, so in SQLite event IDs become visible in increasing order with
 *   no gaps left by in-flight transactions (a PostgreSQL driver must handle
 *   such gaps, as SPIRE's `event_timeout` does).
 * - **Foreign keys on, STRICT tables, CHECK constraints**: selectors and
 *   federated trust domains are child rows deleted with their owner; an entry
 *   cannot federate with a trust domain that has no bundle.
 * - **Join tokens** are stored as their SHA-256; consuming one is a single
 *   `DELETE … RETURNING` inside the write transaction, so exactly one of any
 *   number of concurrent consumers gets it.
 * - **Issuance log** (`recordIssuances`): a batch is one transaction (one
 *   fsync) through a statement prepared once, validated whole before the
 *   write lock is taken, with no read-back and no change events: it sits on
 *   the SVID-signing path. Records outlive the entries and agents they name
 *   and are pruned only once expired (`pruneIssuances`).
 * - **Migrations** are versioned (`schema_migrations`), one transaction each;
 *   a database with a newer schema than the code knows is refused.
 *
 * Validation runs at this boundary too (SPIFFE IDs, selectors, TTLs, DNS
 * names, hints, trust-domain names): a refused call writes nothing.
 *
 * @example
 * ```ts
 * const ds = await createSqliteDatastore({ path: "/var/lib/sigil/datastore.sqlite3", clock: systemClock });
 * const entry = await ds.createEntry({
 *   spiffeId: "spiffe://example.org/web",
 *   parentId: "spiffe://example.org/spire/agent/join_token/abc",
 *   selectors: [parseSelector("unix:uid:1000")],
 * });
 * ```
 */
export type { AgentChanges, AgentField, AgentFilter, AgentInput, AttestedAgent, ListAgentsRequest } from "./agent.js";
export { AGENT_FIELDS } from "./agent.js";
export type { BundleDeleteMode, BundleInput, SetBundleOptions, StoredBundle } from "./bundle.js";
export type { CaJournalInput, CaJournalRecord, CaKeyKind, CaSlotStatus } from "./ca-journal.js";
export type { ChangeEvent, ChangeKind, ChangeListener, ChangeOp } from "./change-event.js";
export type { Datastore } from "./datastore.js";
export type {
  BundleEndpointProfileName,
  FederationRelationship,
  FederationRelationshipInput,
  FederationRelationshipWriteOptions,
  RelationshipSource,
} from "./federation-relationship.js";
export { BUNDLE_ENDPOINT_PROFILES } from "./federation-relationship.js";
export type {
  BatchItemResult,
  EntryChanges,
  EntryField,
  EntryFilter,
  EntryInput,
  ListEntriesRequest,
  RegistrationEntry,
} from "./entry.js";
export { ENTRY_FIELDS } from "./entry.js";
export type { InventorySvid, IssuanceInput, IssuanceInventory, IssuanceInventoryRequest, IssuanceKind, IssuanceRecord, ListIssuancesRequest } from "./issuance.js";
export { INVENTORY_DEFAULT_LIMIT, INVENTORY_MAX_LIMIT, ISSUANCE_KINDS, MAX_ISSUANCE_BATCH } from "./issuance.js";
export type { ConsumedJoinToken, JoinTokenInput } from "./join-token.js";
export type { Migration, MigrationResult } from "./migrate.js";
export { migrate } from "./migrate.js";
export type { Page, PageRequest } from "./page.js";
export type { TlogCheckpointRecord, TlogEntryInput, TlogKeyRecord, TlogStoredEntry, WitnessCheckpointRecord } from "./tlog.js";
export { MAX_TLOG_READ } from "./tlog.js";
export { MAX_PAGE_SIZE } from "./page.js";
export type { FederatesWithFilter, SelectorFilter, SetMatch } from "./set-filter.js";
export type { SqliteDatastoreOptions } from "./sqlite-datastore.js";
export { createSqliteDatastore, DEFAULT_BUSY_TIMEOUT_MS } from "./sqlite-datastore.js";
export { SQLITE_MIGRATIONS } from "./sqlite-migrations.js";
export type { MysqlDatastoreOptions } from "./mysql/mysql-datastore.js";
export { createMysqlDatastore } from "./mysql/mysql-datastore.js";
export type { DatastoreEngineName, OpenDatastoreOptions } from "./open.js";
export { DATASTORE_ENGINES, openDatastore } from "./open.js";
export type { PostgresDatastoreOptions } from "./postgres/postgres-datastore.js";
export { createPostgresDatastore } from "./postgres/postgres-datastore.js";
export type { SqlTlsOptions } from "./sql/dialect.js";
export { MAX_DNS_NAME_BYTES, MAX_ENTRY_ID_LENGTH, MAX_HINT_BYTES, MAX_JOIN_TOKEN_LENGTH, MAX_TTL_SECONDS } from "./validate.js";
