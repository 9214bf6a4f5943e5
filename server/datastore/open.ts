/**
 * Picks and opens the datastore driver for a configured engine: SQLite
 * (embedded, the default), PostgreSQL or MySQL/MariaDB.
 */
import type { Clock } from "../../common/clock.js";
import { SigilError } from "../../spiffe/errors.js";
import type { Datastore } from "./datastore.js";
import { createMysqlDatastore } from "./mysql/mysql-datastore.js";
import { createPostgresDatastore } from "./postgres/postgres-datastore.js";
import type { SqlTlsOptions } from "./sql/dialect.js";
import { createSqliteDatastore } from "./sqlite-datastore.js";

/** The datastore engines. */
export type DatastoreEngineName = "sqlite3" | "postgres" | "mysql";

/** Every {@link DatastoreEngineName}. */
export const DATASTORE_ENGINES: readonly DatastoreEngineName[] = ["sqlite3", "postgres", "mysql"];

/** What {@link openDatastore} opens. */
export interface OpenDatastoreOptions {
  readonly engine: DatastoreEngineName;
  /** sqlite3: the database file path; postgres: a `postgres://` URL; mysql: a `mysql://` URL. */
  readonly connectionString: string;
  /** Source of every stored timestamp. */
  readonly clock: Clock;
  /** sqlite3: commit issuance records from a worker thread (the server turns this on). */
  readonly issuanceWorker?: boolean;
  /** postgres/mysql: most open connections. */
  readonly maxOpenConns?: number;
  /** postgres/mysql: connection lifetime (postgres) or idle time (mysql), in seconds. */
  readonly connMaxLifetimeSeconds?: number;
  /** postgres/mysql: statement timeout in milliseconds (0: none). */
  readonly statementTimeoutMs?: number;
  /** postgres/mysql: TLS to the database server. */
  readonly tls?: SqlTlsOptions;
}

/**
 * Opens the datastore of `options.engine`, creating or migrating its schema.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` for an unknown engine or a
 * connection string of the wrong form; the drivers' errors otherwise.
 */
export async function openDatastore(options: OpenDatastoreOptions): Promise<Datastore> {
  const network = {
    connectionString: options.connectionString,
    clock: options.clock,
    ...(options.maxOpenConns !== undefined ? { maxOpenConns: options.maxOpenConns } : {}),
    ...(options.connMaxLifetimeSeconds !== undefined ? { connMaxLifetimeSeconds: options.connMaxLifetimeSeconds } : {}),
    ...(options.statementTimeoutMs !== undefined ? { statementTimeoutMs: options.statementTimeoutMs } : {}),
    ...(options.tls !== undefined ? { tls: options.tls } : {}),
  };
  switch (options.engine) {
    case "sqlite3":
      return createSqliteDatastore({ path: options.connectionString, clock: options.clock, ...(options.issuanceWorker === true ? { issuanceWorker: true } : {}) });
    case "postgres":
      return createPostgresDatastore(network);
    case "mysql":
      return createMysqlDatastore(network);
    default:
      throw new SigilError("ERR_INVALID_ARGUMENT", `datastore: unknown database type ${JSON.stringify(options.engine)}; one of ${DATASTORE_ENGINES.join(", ")}`);
  }
}
