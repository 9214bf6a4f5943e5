/**
 * The `sql` DataStore's config: the engine picks the driver, and options of
 * the network engines are checked with the key path in every message.
 */
import { describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { parseServerConfig } from "../../../../server/config/load.js";
import { openSqlDataStore, sqlDataStoreConfigSchema } from "../../../../plugins/datastore/sql/index.js";
import { openDatastore } from "../../../../server/datastore/open.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { createTestDatabase, datastoreEngines } from "../../../support/datastore.js";

const config = (sql: string): string => `server:
  trust_domain: example.org
plugins:
  DataStore:
    sql:
${sql
  .trim()
  .split("\n")
  .map((l) => `      ${l.trim()}`)
  .join("\n")}
  KeyManager:
    memory:
  NodeAttestor:
    join_token: {}
`;

function errorOf(text: string): string {
  try {
    parseServerConfig(text, "yaml", { source: "s.yaml" });
  } catch (e) {
    expect(isSigilError(e, "ERR_INVALID_ARGUMENT"), String(e)).toBe(true);
    return (e as Error).message;
  }
  throw new Error("expected an error");
}

const engines = (await datastoreEngines()).filter((e): e is "postgres" | "mysql" => e !== "sqlite");

describe("sql DataStore config", () => {
  it("accepts the three engines with their options; durations become milliseconds", () => {
    const pg = sqlDataStoreConfigSchema.parse({
      database_type: "postgres",
      connection_string: "postgresql://sigil:pw@db:5432/sigil?sslmode=verify-full",
      max_open_conns: 20,
      conn_max_lifetime: "30m",
      statement_timeout: "10s",
    });
    expect(pg).toMatchObject({ max_open_conns: 20, conn_max_lifetime: 1_800_000, statement_timeout: 10_000 });
    expect(sqlDataStoreConfigSchema.parse({ database_type: "mysql", connection_string: "mysql://root@db:3306/sigil" }).database_type).toBe("mysql");
    expect(() => parseServerConfig(config("database_type: sqlite3\nconnection_string: ./ds.sqlite3"))).not.toThrow();
  });

  it("names the key of each problem", () => {
    expect(errorOf(config("database_type: oracle\nconnection_string: x"))).toContain("plugins.DataStore.sql.database_type");
    expect(errorOf(config("database_type: postgres\nconnection_string: mysql://db/x"))).toContain("plugins.DataStore.sql.connection_string: must be a postgres:// URL for database_type postgres");
    expect(errorOf(config("database_type: mysql\nconnection_string: /var/lib/ds.sqlite3"))).toContain("plugins.DataStore.sql.connection_string: must be a mysql:// URL");
    expect(errorOf(config("database_type: sqlite3\nconnection_string: ds.sqlite3\nmax_open_conns: 5"))).toContain(
      "plugins.DataStore.sql.max_open_conns: applies to postgres and mysql only",
    );
    expect(errorOf(config("database_type: postgres\nconnection_string: postgres://db/x\nclient_cert_path: c.pem"))).toContain("plugins.DataStore.sql.client_key_path");
    expect(errorOf(config("database_type: postgres\nconnection_string: postgres://db/x\nstatement_timeout: 5"))).toContain("plugins.DataStore.sql.statement_timeout");
  });

  it("a connection_string that is no URL is refused naming the key, never repeating the password", async () => {
    for (const [type, cs] of [
      ["postgres", "postgres://sigil:S3cretPW@db:notaport/x"],
      ["mysql", "mysql://root:S3cretPW@db:notaport/x"],
    ] as const) {
      const message = errorOf(config(`database_type: ${type}\nconnection_string: "${cs}"`));
      expect(message).toContain("plugins.DataStore.sql.connection_string: is not a valid URL");
      expect(message).not.toContain("S3cretPW");
      // The drivers check it too (the datastore may be opened without the config schema), with no cause carrying the string.
      const err = await openDatastore({ engine: type, connectionString: cs, clock: new ManualClock(new Date()) }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isSigilError(err, "ERR_INVALID_ARGUMENT"), String(err)).toBe(true);
      expect((err as Error).message).toContain("connection_string is not a valid");
      expect(JSON.stringify(err, Object.getOwnPropertyNames(err))).not.toContain("S3cretPW");
      expect((err as Error).cause).toBeUndefined();
    }
  });

  it("an unreadable root_ca_path fails the open naming the key", async () => {
    const c = sqlDataStoreConfigSchema.parse({ database_type: "postgres", connection_string: "postgres://db/x", root_ca_path: "/nonexistent/ca.pem" });
    await expect(openSqlDataStore(c, { clock: new ManualClock(new Date()) })).rejects.toThrow(/plugins\.DataStore\.sql\.root_ca_path: cannot read/);
  });

  it.each(engines)("opens the %s driver from the config", async (engine) => {
    const { url, drop } = await createTestDatabase(engine);
    try {
      const ds = await openSqlDataStore(sqlDataStoreConfigSchema.parse({ database_type: engine, connection_string: url, max_open_conns: 2, statement_timeout: "5s" }), {
        clock: new ManualClock(new Date("2030-01-01T00:00:00Z")),
      });
      await ds.createJoinToken({ token: "t", expiresAt: new Date("2031-01-01T00:00:00Z") });
      expect(await ds.hasPendingJoinTokenFor("spiffe://example.org/spire/agent/join_token/t")).toBe(true);
      await ds.close();
    } finally {
      await drop();
    }
  });
});
