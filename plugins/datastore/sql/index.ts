/**
 * The `sql` DataStore: registration entries, agents, bundles, join tokens and
 * the issuance log in SQLite (embedded; the file is created with its schema
 * when missing). The engine lives in `server/datastore/`; this descriptor is
 * its config seam.
 */
import { mkdirSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import type { Clock } from "../../../common/clock.js";
import type { Datastore } from "../../../server/datastore/index.js";
import { createSqliteDatastore } from "../../../server/datastore/sqlite-datastore.js";
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";

/** Configuration of the `sql` DataStore (SPIRE's option names). */
export const sqlDataStoreConfigSchema = z.strictObject({
  database_type: z.enum(["sqlite3"]).describe("Database engine."),
  connection_string: z.string().min(1).describe("For sqlite3, the database file path (its directory is created 0700)."),
});

/** What the server hands the datastore when it opens it. */
export interface DataStoreDeps {
  /** Source of every stored timestamp. */
  readonly clock: Clock;
}

/** The `sql` DataStore in the plugin catalog. */
export const sqlDataStorePlugin: PluginDescriptor<"DataStore", DataStoreDeps, Promise<Datastore>> = {
  type: "DataStore",
  name: "sql",
  server: pluginHalf({
    description: "SQL datastore.",
    configSchema: sqlDataStoreConfigSchema,
    create: (config, deps: DataStoreDeps) => {
      const file = path.resolve(config.connection_string);
      mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
      // Issuance records are committed from a worker thread, off the event loop.
      return createSqliteDatastore({ path: file, clock: deps.clock, issuanceWorker: true });
    },
  }),
};
