/**
 * The PostgreSQL datastore driver (`pg` through Kysely): a connection pool
 * with TLS and a statement timeout, on the shared SQL layer
 * (`../sql/sql-datastore.ts`), which holds the schema, the queries and the
 * concurrency rules.
 */
import { CompiledQuery, Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import type { Datastore } from "../datastore.js";
import { POSTGRES_DIALECT, tlsConnectionOptions } from "../sql/dialect.js";
import { listenForChangeEvents } from "./postgres-listener.js";
import type { SqlSchema } from "../sql/schema.js";
import { checkConnectionUrl, createNetworkDatastore, poolSetting, type NetworkDatastoreOptions } from "../sql/sql-datastore.js";

/** Options of {@link createPostgresDatastore}: `connectionString` is `postgres://user:password@host:port/database?…`; with `tls`, its `ssl*` parameters are ignored. */
export type PostgresDatastoreOptions = NetworkDatastoreOptions;

const INT8_OID = 20;

/** BIGINT as a JavaScript number (times in ms and row keys stay far below 2^53); NUMERIC stays text. */
function parseInt8(text: string): number | string {
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : text;
}

const TYPES = {
  getTypeParser: ((oid: number, format?: "text" | "binary") => (oid === INT8_OID ? parseInt8 : pg.types.getTypeParser(oid, format))) as typeof pg.types.getTypeParser,
};

/**
 * The URL without its libpq TLS parameters (`pg` lets them override the TLS
 * options object, which would drop a configured CA).
 */
function withoutSslParams(connectionString: string): string {
  const url = new URL(connectionString);
  for (const key of ["ssl", "sslmode", "sslrootcert", "sslcert", "sslkey"]) url.searchParams.delete(key);
  return url.toString();
}

/**
 * Opens a PostgreSQL datastore, creating or migrating its schema.
 *
 * @throws SigilError `ERR_UNAVAILABLE` when the database cannot be reached;
 * `ERR_INTERNAL` when it was migrated by a newer Sigil (naming both versions).
 */
export async function createPostgresDatastore(options: PostgresDatastoreOptions): Promise<Datastore> {
  checkConnectionUrl(options.connectionString, /^postgres(ql)?:$/, "postgres://");
  const max = poolSetting("max_open_conns", options.maxOpenConns, 1, 10);
  const lifetime = poolSetting("conn_max_lifetime", options.connMaxLifetimeSeconds, 0, 0);
  const statementTimeout = poolSetting("statement_timeout", options.statementTimeoutMs, 0, 30_000);
  const pool = new pg.Pool({
    connectionString: options.tls === undefined ? options.connectionString : withoutSslParams(options.connectionString),
    max,
    maxLifetimeSeconds: lifetime,
    connectionTimeoutMillis: 10_000,
    types: TYPES,
    ...(statementTimeout > 0 ? { statement_timeout: statementTimeout } : {}),
    ...(options.tls !== undefined ? { ssl: tlsConnectionOptions(options.tls) } : {}),
  });
  // An idle connection dropped by the server: the pool replaces it; the next query reports any lasting problem.
  pool.on("error", () => undefined);
  // A checked-out connection lost mid-query also emits "error": the query already fails with it, and unheard it would crash the server.
  pool.on("connect", (client) => client.on("error", () => undefined));
  const db = new Kysely<SqlSchema>({
    dialect: new PostgresDialect({
      pool,
      // Timestamps are integers, so no session time zone matters; name the application for pg_stat_activity.
      onCreateConnection: async (conn) => {
        await conn.executeQuery(CompiledQuery.raw("SET application_name = 'sigil-server'"));
      },
    }),
  });
  // The change feed's NOTIFY listener connects as the pool does, on its own connection.
  const listenerConnection: pg.ClientConfig = {
    connectionString: options.tls === undefined ? options.connectionString : withoutSslParams(options.connectionString),
    connectionTimeoutMillis: 10_000,
    ...(options.tls !== undefined ? { ssl: tlsConnectionOptions(options.tls) } : {}),
  };
  return createNetworkDatastore(db, POSTGRES_DIALECT, options, (wake) => listenForChangeEvents({ connection: listenerConnection }, wake));
}
