/**
 * The `sql` DataStore: registration entries, agents, bundles, join tokens and
 * the issuance log in SQLite (embedded, the default; the file is created with
 * its schema when missing), PostgreSQL or MySQL/MariaDB (the schema is created
 * or migrated at start). The engines live in `server/datastore/`
 * (`openDatastore` picks one); this descriptor is their config seam.
 */
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import type { Clock } from "../../../common/clock.js";
import { duration } from "../../../common/config/duration.js";
import type { Datastore } from "../../../server/datastore/index.js";
import { openDatastore } from "../../../server/datastore/open.js";
import type { SqlTlsOptions } from "../../../server/datastore/sql/dialect.js";
import { SigilError } from "../../../spiffe/errors.js";
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";

/** Keys that apply to the network engines only. */
const NETWORK_KEYS = ["max_open_conns", "conn_max_lifetime", "statement_timeout", "root_ca_path", "client_cert_path", "client_key_path"] as const;

/** Configuration of the `sql` DataStore (SPIRE's option names). */
export const sqlDataStoreConfigSchema = z
  .strictObject({
    database_type: z
      .enum(["sqlite3", "postgres", "mysql"])
      .describe("Database engine: `sqlite3` (embedded, one server), `postgres` (PostgreSQL 12+) or `mysql` (MySQL 8 / MariaDB 10.5+)."),
    connection_string: z
      .string()
      .min(1)
      .describe(
        "sqlite3: the database file path (its directory is created 0700). postgres: a URL, `postgres://user:password@host:5432/database?sslmode=verify-full`. mysql: a URL, `mysql://user:password@host:3306/database`. Use `--expand-env` to keep the password out of the file.",
      ),
    max_open_conns: z.number().int().min(1).max(1000).optional().describe("postgres/mysql: most open connections of this server's pool (default 10)."),
    conn_max_lifetime: duration({ minMs: 1000 })
      .optional()
      .describe("postgres: close a connection this old; mysql: close a connection idle this long (default: never on postgres, 60s on mysql)."),
    statement_timeout: duration({ minMs: 0 }).optional().describe("postgres/mysql: cancel a statement running longer than this (default 30s; `0` for no limit)."),
    root_ca_path: z.string().min(1).optional().describe("postgres/mysql: PEM file of CA certificates to verify the database server with (turns TLS on)."),
    client_cert_path: z.string().min(1).optional().describe("postgres/mysql: PEM client certificate, for servers requiring TLS client authentication (with `client_key_path`)."),
    client_key_path: z.string().min(1).optional().describe("postgres/mysql: PEM private key of `client_cert_path`."),
  })
  .superRefine((c, ctx) => {
    if (c.database_type === "sqlite3") {
      for (const key of NETWORK_KEYS) {
        if (c[key] !== undefined) ctx.addIssue({ code: "custom", path: [key], message: `applies to postgres and mysql only (database_type is sqlite3)` });
      }
      return;
    }
    const scheme = c.database_type === "postgres" ? /^postgres(ql)?:\/\/[^/]/ : /^mysql:\/\/[^/]/;
    if (!scheme.test(c.connection_string)) {
      ctx.addIssue({
        code: "custom",
        path: ["connection_string"],
        message: `must be a ${c.database_type === "postgres" ? "postgres://" : "mysql://"} URL for database_type ${c.database_type}`,
      });
    } else if (!URL.canParse(c.connection_string)) {
      // The message never repeats the string: it may hold a password.
      ctx.addIssue({ code: "custom", path: ["connection_string"], message: "is not a valid URL (check the host, the port and that special characters in the password are %-encoded)" });
    }
    if ((c.client_cert_path === undefined) !== (c.client_key_path === undefined)) {
      ctx.addIssue({ code: "custom", path: [c.client_cert_path === undefined ? "client_cert_path" : "client_key_path"], message: "client_cert_path and client_key_path go together" });
    }
  });

/** The `sql` DataStore's configuration, as parsed. */
export type SqlDataStoreConfig = z.output<typeof sqlDataStoreConfigSchema>;

/** What the server hands the datastore when it opens it. */
export interface DataStoreDeps {
  /** Source of every stored timestamp. */
  readonly clock: Clock;
}

function readPem(key: string, file: string): string {
  try {
    return readFileSync(path.resolve(file), "utf8");
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `datastore: plugins.DataStore.sql.${key}: cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
}

/** TLS options from the config's file paths; undefined when none is set. */
function tlsOf(c: SqlDataStoreConfig): SqlTlsOptions | undefined {
  if (c.root_ca_path === undefined && c.client_cert_path === undefined) return undefined;
  return {
    ...(c.root_ca_path !== undefined ? { ca: readPem("root_ca_path", c.root_ca_path) } : {}),
    ...(c.client_cert_path !== undefined ? { cert: readPem("client_cert_path", c.client_cert_path) } : {}),
    ...(c.client_key_path !== undefined ? { key: readPem("client_key_path", c.client_key_path) } : {}),
  };
}

/** Opens the configured engine. */
export async function openSqlDataStore(config: SqlDataStoreConfig, deps: DataStoreDeps): Promise<Datastore> {
  if (config.database_type === "sqlite3") {
    const file = path.resolve(config.connection_string);
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    // Issuance records are committed from a worker thread, off the event loop.
    return openDatastore({ engine: "sqlite3", connectionString: file, clock: deps.clock, issuanceWorker: true });
  }
  const tls = tlsOf(config);
  return openDatastore({
    engine: config.database_type,
    connectionString: config.connection_string,
    clock: deps.clock,
    ...(config.max_open_conns !== undefined ? { maxOpenConns: config.max_open_conns } : {}),
    ...(config.conn_max_lifetime !== undefined ? { connMaxLifetimeSeconds: Math.ceil(config.conn_max_lifetime / 1000) } : {}),
    ...(config.statement_timeout !== undefined ? { statementTimeoutMs: Math.round(config.statement_timeout) } : {}),
    ...(tls !== undefined ? { tls } : {}),
  });
}

/** The `sql` DataStore in the plugin catalog. */
export const sqlDataStorePlugin: PluginDescriptor<"DataStore", DataStoreDeps, Promise<Datastore>> = {
  type: "DataStore",
  name: "sql",
  server: pluginHalf({
    description: "SQL datastore.",
    configSchema: sqlDataStoreConfigSchema,
    create: (config, deps: DataStoreDeps) => openSqlDataStore(config, deps),
  }),
};
