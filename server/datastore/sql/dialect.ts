/**
 * What differs between the SQL engines behind the shared datastore code, kept
 * to a few small helpers: column types (ASCII identifiers, long text, bytes,
 * the 64-bit sequence, auto-increment keys), table options, how an insert
 * yields its generated key (RETURNING or the driver's insert ID), how errors
 * are classified for retry, and the few statements with no portable form.
 */
import { sql, type CreateTableBuilder, type InsertQueryBuilder, type InsertResult, type Kysely, type RawBuilder } from "kysely";
import type { SqlSchema } from "./schema.js";

/** How the shared code treats a database error. */
export type SqlErrorClass =
  /** Serialization failure, deadlock or lock wait: the transaction may be run again. */
  | "retry"
  /** A UNIQUE or PRIMARY KEY constraint refused the write. */
  | "unique"
  /** A FOREIGN KEY constraint refused the write. */
  | "foreign-key"
  /** The database is unreachable, shutting down, or a statement timed out. */
  | "unavailable"
  | "other";

/** One SQL engine's differences. */
export interface SqlDialect {
  /** Engine name, as in messages and `database_type`. */
  readonly name: "postgres" | "mysql";
  /** Whether schema changes roll back with their transaction (PostgreSQL), or commit statement by statement (MySQL). */
  readonly transactionalDdl: boolean;
  /** Column type of ASCII identifiers (SPIFFE IDs, trust domains, hashes), compared byte for byte. */
  ascii(length: number): RawBuilder<unknown>;
  /** Column type of UTF-8 text of at most `length` characters, compared byte for byte, short enough for an index key. */
  text(length: number): RawBuilder<unknown>;
  /** Column type of unbounded UTF-8 text (documents, JSON arrays). */
  readonly longText: RawBuilder<unknown>;
  /** Column type of byte strings (DER). */
  readonly bytes: RawBuilder<unknown>;
  /** Column type of an unsigned 64-bit integer kept exactly (the bundle sequence), read back as decimal text. */
  readonly uint64: RawBuilder<unknown>;
  /** Column type of a generated 64-bit key (the column is the table's primary key). */
  readonly autoKey: RawBuilder<unknown>;
  /** Adds engine table options (MySQL: InnoDB, utf8mb4 with binary collation). */
  table<T extends string, C extends string>(builder: CreateTableBuilder<T, C>): CreateTableBuilder<T, C>;
  /** Index over a selector child table's (type, value); MySQL needs a key prefix on the value. */
  selectorIndex(table: string, name: string): RawBuilder<unknown>;
  /** Runs an insert and returns the generated key in `column`. */
  insertId<TB extends keyof SqlSchema>(query: InsertQueryBuilder<SqlSchema, TB, InsertResult>, column: string): Promise<number>;
  /** Classifies an error thrown by the driver. */
  classify(error: unknown): SqlErrorClass;
  /** The highest change-event ID ever assigned, from the key generator (used when every event row was pruned). */
  lastAssignedEventId(db: Kysely<SqlSchema>): Promise<number>;
  /** Deletes up to `limit` issuance rows that expired before `before`; returns how many. */
  deleteExpiredIssuances(db: Kysely<SqlSchema>, before: number, limit: number): Promise<number>;
  /** This dialect adapted to the server `db` reaches (MySQL and MariaDB name their collations differently). */
  forServer(db: Kysely<SqlSchema>): Promise<SqlDialect>;
  /** Runs `fn` holding an exclusive lock for schema migrations (across every server sharing the database). */
  withMigrationLock<T>(db: Kysely<SqlSchema>, fn: (db: Kysely<SqlSchema>) => Promise<T>): Promise<T>;
}

function errorCode(e: unknown): { code: string | undefined; errno: number | undefined } {
  const o = (e ?? {}) as { code?: unknown; errno?: unknown };
  return { code: typeof o.code === "string" ? o.code : undefined, errno: typeof o.errno === "number" ? o.errno : undefined };
}

const NETWORK_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EHOSTUNREACH", "PROTOCOL_CONNECTION_LOST"]);

/** `pg` reports a connection lost mid-query (server restart, killed backend) without a code. */
const PG_CONNECTION_LOST = /^(Connection terminated|Client has encountered a connection error|Client was closed)/;

function toNumber(v: unknown): number {
  const n = typeof v === "bigint" ? Number(v) : typeof v === "string" ? Number(v) : (v as number);
  return Number.isFinite(n) ? n : 0;
}

/** PostgreSQL (`pg`). */
export const POSTGRES_DIALECT: SqlDialect = {
  name: "postgres",
  transactionalDdl: true,
  ascii: (length) => sql.raw(`varchar(${length}) COLLATE "C"`),
  text: (length) => sql.raw(`varchar(${length}) COLLATE "C"`),
  longText: sql.raw(`text COLLATE "C"`),
  bytes: sql.raw("bytea"),
  uint64: sql.raw("numeric(20, 0)"),
  autoKey: sql.raw("bigserial"),
  table: (builder) => builder,
  selectorIndex: (table, name) => sql`CREATE INDEX ${sql.id(name)} ON ${sql.id(table)} (type, value)`,
  forServer: async () => POSTGRES_DIALECT,
  async insertId(query, column) {
    const row = await query.returning(sql<number>`${sql.ref(column)}`.as("generated_id")).executeTakeFirstOrThrow();
    return toNumber(row.generated_id);
  },
  classify(e) {
    const { code } = errorCode(e);
    if (code === undefined) return e instanceof Error && PG_CONNECTION_LOST.test(e.message) ? "unavailable" : "other";
    if (code === "40001" || code === "40P01" || code === "55P03") return "retry";
    if (code === "23505") return "unique";
    if (code === "23503") return "foreign-key";
    // 57014 statement timeout; 08xxx connection; 57P0x shutdown; 53300 too many connections.
    if (code === "57014" || code.startsWith("08") || code.startsWith("57P") || code === "53300" || NETWORK_CODES.has(code)) return "unavailable";
    return "other";
  },
  async lastAssignedEventId(db) {
    const r = await sql<{ v: unknown }>`SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS v FROM change_events_event_id_seq`.execute(db);
    return toNumber(r.rows[0]?.v);
  },
  async deleteExpiredIssuances(db, before, limit) {
    const r = await sql`DELETE FROM issuances WHERE row_id IN (SELECT row_id FROM issuances WHERE not_after < ${before} LIMIT ${limit})`.execute(db);
    return toNumber(r.numAffectedRows);
  },
  async withMigrationLock(db, fn) {
    // A transaction-scoped advisory lock; PostgreSQL DDL is transactional, so the whole run is one transaction.
    return db.transaction().execute(async (trx) => {
      await sql`SELECT pg_advisory_xact_lock(7362510014)`.execute(trx);
      return fn(trx);
    });
  },
};

/**
 * Binary collations that compare trailing spaces too, by preference. `utf8mb4_bin`
 * is PAD SPACE: it finds `unix:user:root ` when asked for `unix:user:root`.
 */
const NO_PAD_BIN_COLLATIONS = ["utf8mb4_0900_bin", "utf8mb4_nopad_bin"] as const;

/** MySQL 8 and MariaDB 10.5+ (`mysql2`), before {@link SqlDialect.forServer} picked the server's collation. */
export const MYSQL_DIALECT: SqlDialect = mysqlDialect("utf8mb4_0900_bin");

/** The MySQL dialect with `collation` (utf8mb4, binary, NO PAD) as the tables' default. */
function mysqlDialect(collation: (typeof NO_PAD_BIN_COLLATIONS)[number]): SqlDialect {
  return {
    name: "mysql",
    transactionalDdl: false,
    // ASCII columns: 1 byte per character, so a 2,048-character SPIFFE ID fits in an index key (3,072 bytes).
    ascii: (length) => sql.raw(`varchar(${length}) CHARACTER SET ascii COLLATE ascii_bin`),
    text: (length) => sql.raw(`varchar(${length})`),
    longText: sql.raw("longtext"),
    bytes: sql.raw("longblob"),
    uint64: sql.raw("decimal(20, 0)"),
    autoKey: sql.raw("bigint AUTO_INCREMENT"),
    // Binary NO PAD collation: selector values and other text compare byte for byte, trailing spaces included, as on the other engines.
    table: (builder) => builder.modifyEnd(sql`ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=${sql.raw(collation)}`),
    // utf8mb4 takes up to 4 bytes a character: index the value's first 512 characters (the rest is compared on the row).
    selectorIndex: (table, name) => sql`CREATE INDEX ${sql.id(name)} ON ${sql.id(table)} (type, value(512))`,
    async insertId(query) {
      const r = await query.executeTakeFirstOrThrow();
      return toNumber(r.insertId);
    },
    classify(e) {
      const { code, errno } = errorCode(e);
      // 1213 deadlock, 1205 lock wait timeout, 1020 record changed (MariaDB snapshot isolation).
      if (errno === 1213 || errno === 1205 || errno === 1020) return "retry";
      if (errno === 1062 || errno === 1586) return "unique";
      if (errno === 1451 || errno === 1452) return "foreign-key";
      // 1969 MariaDB max_statement_time, 3024 MySQL max_execution_time, 1040 too many connections, 2002/2003/2006/2013 connection.
      if (errno === 1969 || errno === 3024 || errno === 1040 || errno === 1053 || errno === 2002 || errno === 2003 || errno === 2006 || errno === 2013) return "unavailable";
      if (code !== undefined && NETWORK_CODES.has(code)) return "unavailable";
      // 1927 MariaDB connection killed; mysql2 marks errors that closed the connection `fatal`.
      if (errno === 1927 || (e as { fatal?: unknown } | null)?.fatal === true) return "unavailable";
      return "other";
    },
    async lastAssignedEventId(db) {
      // InnoDB keeps AUTO_INCREMENT across restarts (MariaDB 10.2.4+, MySQL 8); information_schema shows the next value.
      const r = await sql<{ v: unknown }>`SELECT AUTO_INCREMENT AS v FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'change_events'`.execute(db);
      const next = toNumber(r.rows[0]?.v);
      return next > 0 ? next - 1 : 0;
    },
    async deleteExpiredIssuances(db, before, limit) {
      const r = await sql`DELETE FROM issuances WHERE not_after < ${before} ORDER BY row_id LIMIT ${sql.raw(String(Math.trunc(limit)))}`.execute(db);
      return toNumber(r.numAffectedRows);
    },
    async forServer(db) {
      // MySQL 8.0.17+ has utf8mb4_0900_bin, MariaDB utf8mb4_nopad_bin.
      const r = await sql<{ c: string }>`SELECT COLLATION_NAME AS c FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN (${sql.join([...NO_PAD_BIN_COLLATIONS])})`.execute(db);
      const found = NO_PAD_BIN_COLLATIONS.find((c) => r.rows.some((row) => row.c === c));
      if (found === undefined) throw new Error(`the server has neither ${NO_PAD_BIN_COLLATIONS.join(" nor ")} (MySQL 8.0.17+ or MariaDB 10.5+ is needed)`);
      return mysqlDialect(found);
    },
    async withMigrationLock(db, fn) {
      // MySQL DDL commits implicitly: a named lock on one connection serialises migrating servers instead.
      return db.connection().execute(async (conn) => {
        const got = await sql<{ ok: unknown }>`SELECT GET_LOCK('sigil_schema_migrations', 60) AS ok`.execute(conn);
        if (toNumber(got.rows[0]?.ok) !== 1) throw new Error("could not take the schema migration lock within 60 s");
        try {
          return await fn(conn);
        } finally {
          await sql`SELECT RELEASE_LOCK('sigil_schema_migrations')`.execute(conn);
        }
      });
    },
  };
}

/** TLS to the database server, as PEM text (files are read by the caller). */
export interface SqlTlsOptions {
  /** CA certificates to verify the server with (default: Node's bundled roots). */
  readonly ca?: string;
  /** Client certificate chain, for servers requiring client authentication. */
  readonly cert?: string;
  /** The client certificate's private key. */
  readonly key?: string;
  /** Verify the server's certificate and name (default true). */
  readonly rejectUnauthorized?: boolean;
}

/** The TLS options object both `pg` and `mysql2` take. */
export function tlsConnectionOptions(tls: SqlTlsOptions): { ca?: string; cert?: string; key?: string; rejectUnauthorized: boolean } {
  return {
    ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
    ...(tls.cert !== undefined ? { cert: tls.cert } : {}),
    ...(tls.key !== undefined ? { key: tls.key } : {}),
    rejectUnauthorized: tls.rejectUnauthorized ?? true,
  };
}
