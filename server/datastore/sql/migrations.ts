/**
 * The network SQL engines' schema, written once with Kysely's schema builder
 * (engine differences come from {@link SqlDialect}), as ordered versioned
 * migrations recorded in `schema_migrations`. A released migration is never
 * edited: a schema change is a new migration at the end.
 *
 * The SQLite driver keeps its own migrations (`sqlite-migrations.ts`): its
 * schema is older than this layer and uses SQLite-only features (STRICT
 * tables, WITHOUT ROWID, partial indexes).
 */
import { sql, type Kysely } from "kysely";
import { SigilError } from "../../../spiffe/errors.js";
import type { SqlDialect } from "./dialect.js";
import type { SqlSchema } from "./schema.js";

/** One schema step of the SQL engines. */
export interface SqlMigration {
  /** 1, 2, 3 … without gaps. */
  readonly version: number;
  /** Short description, recorded with the version. */
  readonly name: string;
  /** Applies the step. */
  up(db: Kysely<SqlSchema>, dialect: SqlDialect): Promise<void>;
}

const NOT_NULL = <C extends { notNull(): C }>(c: C): C => c.notNull();

/** Every SQL migration, in version order. */
export const SQL_MIGRATIONS: readonly SqlMigration[] = [
  {
    version: 1,
    name: "initial schema",
    async up(db, d) {
      const s = db.schema;
      await d
        .table(
          s
            .createTable("bundles")
            .addColumn("trust_domain", d.ascii(255), (c) => c.primaryKey())
            .addColumn("document", d.longText, NOT_NULL)
            .addColumn("sequence", d.uint64, NOT_NULL)
            .addColumn("created_at", "bigint", NOT_NULL)
            .addColumn("updated_at", "bigint", NOT_NULL),
        )
        .execute();

      await d
        .table(
          s
            .createTable("registration_entries")
            .addColumn("row_id", d.autoKey, (c) => c.primaryKey())
            .addColumn("id", d.ascii(255), NOT_NULL)
            .addColumn("spiffe_id", d.ascii(2048), NOT_NULL)
            .addColumn("parent_id", d.ascii(2048), NOT_NULL)
            .addColumn("selectors_hash", d.ascii(64), NOT_NULL)
            .addColumn("identity_hash", d.ascii(64), NOT_NULL)
            .addColumn("selector_count", "integer", NOT_NULL)
            .addColumn("federates_with_count", "integer", NOT_NULL)
            .addColumn("x509_svid_ttl", "integer", NOT_NULL)
            .addColumn("jwt_svid_ttl", "integer", NOT_NULL)
            .addColumn("dns_names", d.longText, NOT_NULL)
            .addColumn("admin", "smallint", NOT_NULL)
            .addColumn("downstream", "smallint", NOT_NULL)
            .addColumn("hint", d.longText, NOT_NULL)
            .addColumn("expires_at", "bigint")
            .addColumn("created_at", "bigint", NOT_NULL)
            .addColumn("updated_at", "bigint", NOT_NULL)
            .addColumn("revision", "bigint", NOT_NULL)
            .addUniqueConstraint("registration_entries_id", ["id"])
            // Two servers racing to create the same entry: the database lets exactly one in.
            .addUniqueConstraint("registration_entries_identity", ["identity_hash"])
            .addCheckConstraint("registration_entries_selector_count", sql`selector_count > 0`),
        )
        .execute();
      await s.createIndex("registration_entries_spiffe_id").on("registration_entries").column("spiffe_id").execute();
      await s.createIndex("registration_entries_parent_id").on("registration_entries").column("parent_id").execute();
      await s.createIndex("registration_entries_expires_at").on("registration_entries").column("expires_at").execute();

      for (const [table, owner] of [
        ["entry_selectors", "registration_entries"],
        ["agent_selectors", "attested_agents"],
      ] as const) {
        if (owner === "attested_agents") {
          await d
            .table(
              s
                .createTable("attested_agents")
                .addColumn("row_id", d.autoKey, (c) => c.primaryKey())
                .addColumn("spiffe_id", d.ascii(2048), NOT_NULL)
                .addColumn("attestation_type", d.ascii(128), NOT_NULL)
                .addColumn("selector_count", "integer", NOT_NULL)
                .addColumn("cert_serial", d.ascii(128), NOT_NULL)
                .addColumn("cert_not_after", "bigint", NOT_NULL)
                .addColumn("new_cert_serial", d.ascii(128))
                .addColumn("new_cert_not_after", "bigint")
                .addColumn("can_reattest", "smallint", NOT_NULL)
                .addColumn("banned", "smallint", NOT_NULL)
                .addColumn("created_at", "bigint", NOT_NULL)
                .addColumn("updated_at", "bigint", NOT_NULL)
                .addUniqueConstraint("attested_agents_spiffe_id", ["spiffe_id"]),
            )
            .execute();
          await s.createIndex("attested_agents_attestation_type").on("attested_agents").column("attestation_type").execute();
          await s.createIndex("attested_agents_cert_not_after").on("attested_agents").column("cert_not_after").execute();
        }
        await d
          .table(
            s
              .createTable(table)
              .addColumn("owner_row", "bigint", NOT_NULL)
              .addColumn("type", d.text(64), NOT_NULL)
              .addColumn("value", d.text(1024), NOT_NULL)
              .addForeignKeyConstraint(`${table}_owner`, ["owner_row"], owner, ["row_id"], (fk) => fk.onDelete("cascade")),
          )
          .execute();
        await s.createIndex(`${table}_owner_row`).on(table).column("owner_row").execute();
        await d.selectorIndex(table, `${table}_type_value`).execute(db);
      }

      await d
        .table(
          s
            .createTable("entry_federates_with")
            .addColumn("owner_row", "bigint", NOT_NULL)
            .addColumn("trust_domain", d.ascii(255), NOT_NULL)
            .addPrimaryKeyConstraint("entry_federates_with_pk", ["owner_row", "trust_domain"])
            .addForeignKeyConstraint("entry_federates_with_owner", ["owner_row"], "registration_entries", ["row_id"], (fk) => fk.onDelete("cascade"))
            .addForeignKeyConstraint("entry_federates_with_bundle", ["trust_domain"], "bundles", ["trust_domain"]),
        )
        .execute();
      await s.createIndex("entry_federates_with_trust_domain").on("entry_federates_with").column("trust_domain").execute();

      await d
        .table(
          s
            .createTable("join_tokens")
            .addColumn("token_hash", d.ascii(64), (c) => c.primaryKey())
            .addColumn("expires_at", "bigint", NOT_NULL)
            .addColumn("agent_id", d.ascii(2048))
            .addColumn("created_at", "bigint", NOT_NULL),
        )
        .execute();
      await s.createIndex("join_tokens_expires_at").on("join_tokens").column("expires_at").execute();
      await s.createIndex("join_tokens_agent_id").on("join_tokens").column("agent_id").execute();

      await d
        .table(
          s
            .createTable("ca_journal")
            .addColumn("kind", d.ascii(8), NOT_NULL)
            .addColumn("slot_id", d.ascii(32), NOT_NULL)
            .addColumn("key_id", d.text(256), NOT_NULL)
            .addColumn("status", d.ascii(16), NOT_NULL)
            .addColumn("public_key", d.bytes, NOT_NULL)
            .addColumn("certificate", d.bytes)
            .addColumn("chain", d.longText, NOT_NULL)
            .addColumn("roots", d.longText, NOT_NULL)
            .addColumn("not_before", "bigint", NOT_NULL)
            .addColumn("not_after", "bigint", NOT_NULL)
            .addColumn("created_at", "bigint", NOT_NULL)
            .addColumn("updated_at", "bigint", NOT_NULL)
            .addPrimaryKeyConstraint("ca_journal_pk", ["kind", "slot_id"]),
        )
        .execute();

      await d
        .table(
          s
            .createTable("change_events")
            .addColumn("event_id", d.autoKey, (c) => c.primaryKey())
            .addColumn("kind", d.ascii(8), NOT_NULL)
            .addColumn("object_id", d.ascii(2048), NOT_NULL)
            .addColumn("op", d.ascii(8), NOT_NULL)
            .addColumn("at", "bigint", NOT_NULL),
        )
        .execute();
      await s.createIndex("change_events_at").on("change_events").column("at").execute();

      await d
        .table(
          s
            .createTable("federation_relationships")
            .addColumn("trust_domain", d.ascii(255), (c) => c.primaryKey())
            .addColumn("bundle_endpoint_url", d.longText, NOT_NULL)
            .addColumn("profile", d.ascii(16), NOT_NULL)
            .addColumn("endpoint_spiffe_id", d.ascii(2048), NOT_NULL)
            .addColumn("source", d.ascii(8), NOT_NULL)
            .addColumn("created_at", "bigint", NOT_NULL)
            .addColumn("updated_at", "bigint", NOT_NULL),
        )
        .execute();

      // The issuance log: contexts shared by many credentials are stored once; no foreign keys to entries
      // or agents (a record outlives them). Context IDs are never reused, so a remembered one cannot mislabel a record.
      await d
        .table(
          s
            .createTable("issuance_contexts")
            .addColumn("context_id", d.autoKey, (c) => c.primaryKey())
            .addColumn("context_hash", d.ascii(64), NOT_NULL)
            .addColumn("kind", d.ascii(16), NOT_NULL)
            .addColumn("spiffe_id", d.ascii(2048), NOT_NULL)
            .addColumn("entry_id", d.ascii(255), NOT_NULL)
            .addColumn("agent_id", d.ascii(2048), NOT_NULL)
            .addColumn("ca_key_id", d.text(256), NOT_NULL)
            .addColumn("selectors", d.longText, NOT_NULL)
            .addColumn("requested_by", d.longText, NOT_NULL)
            .addColumn("audience", d.longText, NOT_NULL)
            .addUniqueConstraint("issuance_contexts_hash", ["context_hash"]),
        )
        .execute();
      await s.createIndex("issuance_contexts_spiffe_id").on("issuance_contexts").column("spiffe_id").execute();
      await s.createIndex("issuance_contexts_entry_id").on("issuance_contexts").column("entry_id").execute();
      await s.createIndex("issuance_contexts_agent_id").on("issuance_contexts").column("agent_id").execute();
      await d
        .table(
          s
            .createTable("issuances")
            .addColumn("row_id", d.autoKey, (c) => c.primaryKey())
            .addColumn("context_id", "bigint", NOT_NULL)
            .addColumn("serial", d.ascii(128), NOT_NULL)
            .addColumn("not_before", "bigint", NOT_NULL)
            .addColumn("not_after", "bigint", NOT_NULL)
            .addColumn("issued_at", "bigint", NOT_NULL)
            .addColumn("jwt_id", d.text(256))
            .addForeignKeyConstraint("issuances_context", ["context_id"], "issuance_contexts", ["context_id"]),
        )
        .execute();
      await s.createIndex("issuances_serial").on("issuances").column("serial").execute();
      await s.createIndex("issuances_context_id").on("issuances").column("context_id").execute();
      await s.createIndex("issuances_not_after").on("issuances").column("not_after").execute();
    },
  },
  {
    version: 2,
    name: "ca journal per server",
    async up(db, d) {
      // Several servers on one database each keep their own slots; rows written before have server_id ''.
      await db.schema.alterTable("ca_journal").addColumn("server_id", d.ascii(64), (c) => c.notNull().defaultTo("")).execute();
      if (d.name === "postgres") {
        await sql`ALTER TABLE ca_journal DROP CONSTRAINT ca_journal_pk, ADD CONSTRAINT ca_journal_pk PRIMARY KEY (server_id, kind, slot_id)`.execute(db);
      } else {
        await sql`ALTER TABLE ca_journal DROP PRIMARY KEY, ADD PRIMARY KEY (server_id, kind, slot_id)`.execute(db);
      }
    },
  },
  {
    version: 3,
    name: "issuance inventory indexes",
    async up(db) {
      // The inventory ("what still chains to key K") reads contexts by CA key, then their unexpired
      // credentials. (The journal's new 'tainted' and 'revoked' statuses fit its ascii(16) column.)
      await db.schema.createIndex("issuance_contexts_ca_key_id").on("issuance_contexts").column("ca_key_id").execute();
      await db.schema.createIndex("issuance_contexts_entry_agent").on("issuance_contexts").columns(["entry_id", "agent_id", "kind"]).execute();
      await db.schema.createIndex("issuances_context_not_after").on("issuances").columns(["context_id", "not_after"]).execute();
    },
  },
  {
    version: 4,
    name: "transparency log",
    async up(db, d) {
      const s = db.schema;
      // Entries take contiguous indices from the one-row counter, locked in the issuance records' transaction.
      await d
        .table(
          s
            .createTable("tlog_entries")
            .addColumn("idx", "bigint", (c) => c.primaryKey())
            .addColumn("lookup_key", d.ascii(200), NOT_NULL)
            .addColumn("entry", d.bytes, NOT_NULL),
        )
        .execute();
      await s.createIndex("tlog_entries_lookup_key").on("tlog_entries").column("lookup_key").execute();
      await d.table(s.createTable("tlog_counter").addColumn("id", "smallint", (c) => c.primaryKey()).addColumn("next_idx", "bigint", NOT_NULL)).execute();
      await db.insertInto("tlog_counter").values({ id: 0, next_idx: 0 }).execute();
      await d
        .table(
          s
            .createTable("tlog_checkpoints")
            .addColumn("server_id", d.ascii(64), NOT_NULL)
            .addColumn("tree_size", "bigint", NOT_NULL)
            .addColumn("root_hash", d.bytes, NOT_NULL)
            .addColumn("note", d.longText, NOT_NULL)
            .addColumn("created_at", "bigint", NOT_NULL)
            .addPrimaryKeyConstraint("tlog_checkpoints_pk", ["server_id", "tree_size"]),
        )
        .execute();
      await d
        .table(
          s
            .createTable("tlog_keys")
            .addColumn("server_id", d.ascii(64), NOT_NULL)
            .addColumn("key_id", d.ascii(128), NOT_NULL)
            .addColumn("vkey", d.ascii(1024), NOT_NULL)
            .addColumn("created_at", "bigint", NOT_NULL)
            .addColumn("retired_at", "bigint")
            .addPrimaryKeyConstraint("tlog_keys_pk", ["server_id", "key_id"]),
        )
        .execute();
    },
  },
  {
    version: 5,
    name: "transparency log witness",
    async up(db, d) {
      // A witness keeps only the latest checkpoint it cosigned of each log (C2SP tlog-witness).
      await d
        .table(
          db.schema
            .createTable("tlog_witness_checkpoints")
            .addColumn("origin", d.text(255), (c) => c.primaryKey())
            .addColumn("tree_size", "bigint", NOT_NULL)
            .addColumn("root_hash", d.bytes, NOT_NULL)
            .addColumn("note", d.longText, NOT_NULL)
            .addColumn("updated_at", "bigint", NOT_NULL),
        )
        .execute();
    },
  },
];

/** What {@link migrateSql} did. */
export interface SqlMigrationResult {
  /** Schema version found (0 for an empty database). */
  readonly from: number;
  /** Schema version after migrating. */
  readonly to: number;
}

/**
 * Brings the database to the newest version in `migrations`, holding the
 * engine's migration lock so servers starting together apply each version
 * once. On PostgreSQL the run is one transaction; on MySQL each DDL statement
 * commits by itself, so a failed migration may leave part of its tables (the
 * version is recorded only after the whole step succeeded).
 *
 * @throws SigilError `ERR_INTERNAL` when the database was migrated by a newer
 * Sigil (naming both versions; nothing is changed), or a migration fails.
 */
export async function migrateSql(db: Kysely<SqlSchema>, dialect: SqlDialect, migrations: readonly SqlMigration[], now: Date): Promise<SqlMigrationResult> {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new SigilError("ERR_INTERNAL", `datastore: migration ${i + 1} has version ${m.version}; versions must run 1, 2, 3 …`);
  });
  const known = migrations.length;
  return dialect.withMigrationLock(db, async (conn) => {
    await dialect
      .table(
        conn.schema
          .createTable("schema_migrations")
          .ifNotExists()
          .addColumn("version", "integer", (c) => c.primaryKey())
          .addColumn("name", dialect.text(255), NOT_NULL)
          .addColumn("applied_at", "bigint", NOT_NULL),
      )
      .execute();
    const current = async (): Promise<number> => {
      const row = await conn.selectFrom("schema_migrations").select((eb) => eb.fn.max("version").as("v")).executeTakeFirst();
      return Number(row?.v ?? 0);
    };
    const from = await current();
    if (from > known) {
      throw new SigilError(
        "ERR_INTERNAL",
        `datastore: ${dialect.name} database schema version ${from} is newer than the newest this Sigil knows (${known}); run a Sigil version that supports schema ${from}`,
      );
    }
    for (const m of migrations) {
      if (m.version <= from) continue;
      try {
        await m.up(conn, dialect);
      } catch (e) {
        // Without transactional DDL the failed step's first tables stay, and running it again fails on them.
        const partly = dialect.transactionalDdl
          ? ""
          : `; ${dialect.name} commits each schema statement, so part of migration ${m.version} may be applied: restore the backup taken before the upgrade${m.version === 1 ? " (or, on a new database, drop its tables)" : ""} and start again`;
        throw new SigilError("ERR_INTERNAL", `datastore: migration ${m.version} (${m.name}) failed on ${dialect.name}: ${e instanceof Error ? e.message : String(e)}${partly}`, { cause: e });
      }
      await conn.insertInto("schema_migrations").values({ version: m.version, name: m.name, applied_at: now.getTime() }).execute();
    }
    return { from, to: await current() };
  });
}
