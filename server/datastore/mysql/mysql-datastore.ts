/**
 * The MySQL 8 / MariaDB datastore driver (`mysql2` through Kysely): a
 * connection pool with TLS and a statement timeout, on the shared SQL layer
 * (`../sql/sql-datastore.ts`), which holds the schema, the queries and the
 * concurrency rules. Tables use utf8mb4 with binary collation, so SPIFFE IDs
 * and selectors compare byte for byte as on the other engines.
 */
import { CompiledQuery, Kysely, MysqlDialect } from "kysely";
import { createPool } from "mysql2";
import type { Datastore } from "../datastore.js";
import { MYSQL_DIALECT, tlsConnectionOptions } from "../sql/dialect.js";
import type { SqlSchema } from "../sql/schema.js";
import { checkConnectionUrl, createNetworkDatastore, poolSetting, type NetworkDatastoreOptions } from "../sql/sql-datastore.js";

/** Options of {@link createMysqlDatastore}: `connectionString` is `mysql://user:password@host:port/database`. */
export type MysqlDatastoreOptions = NetworkDatastoreOptions;

/**
 * Opens a MySQL/MariaDB datastore, creating or migrating its schema.
 *
 * @throws SigilError `ERR_UNAVAILABLE` when the database cannot be reached;
 * `ERR_INTERNAL` when it was migrated by a newer Sigil (naming both versions).
 */
export async function createMysqlDatastore(options: MysqlDatastoreOptions): Promise<Datastore> {
  checkConnectionUrl(options.connectionString, /^mysql:$/, "mysql://");
  const max = poolSetting("max_open_conns", options.maxOpenConns, 1, 10);
  const idle = poolSetting("conn_max_lifetime", options.connMaxLifetimeSeconds, 0, 60);
  const statementTimeout = poolSetting("statement_timeout", options.statementTimeoutMs, 0, 30_000);
  const pool = createPool({
    uri: options.connectionString,
    connectionLimit: max,
    maxIdle: max,
    ...(idle > 0 ? { idleTimeout: idle * 1000 } : {}),
    connectTimeout: 10_000,
    // BIGINT as numbers (times in ms and keys stay below 2^53); DECIMAL (the bundle sequence) as text.
    supportBigNumbers: true,
    bigNumberStrings: false,
    decimalNumbers: false,
    charset: "utf8mb4_bin",
    ...(options.tls !== undefined ? { ssl: tlsConnectionOptions(options.tls) } : {}),
  });
  const db = new Kysely<SqlSchema>({
    dialect: new MysqlDialect({
      pool,
      onCreateConnection: async (conn) => {
        // Strict mode: an over-long or invalid value fails instead of being truncated.
        await conn.executeQuery(CompiledQuery.raw("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,ONLY_FULL_GROUP_BY'"));
        if (statementTimeout > 0) {
          try {
            // MariaDB: seconds, any statement.
            await conn.executeQuery(CompiledQuery.raw(`SET SESSION max_statement_time = ${statementTimeout / 1000}`));
          } catch {
            // MySQL: milliseconds, SELECT statements.
            await conn.executeQuery(CompiledQuery.raw(`SET SESSION max_execution_time = ${statementTimeout}`));
          }
        }
      },
    }),
  });
  return createNetworkDatastore(db, MYSQL_DIALECT, options);
}
