/**
 * What only the network SQL engines (PostgreSQL, MariaDB/MySQL) need beyond
 * the contract suites: two datastore instances on one database (two servers)
 * racing on the same entry, join token and bundle sequence, and the schema
 * version check.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { parseSelector } from "../../../../common/selector.js";
import type { Datastore } from "../../../../server/datastore/index.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { createMysqlDatastore } from "../../../../server/datastore/mysql/mysql-datastore.js";
import { createPostgresDatastore } from "../../../../server/datastore/postgres/postgres-datastore.js";
import { createTestDatabase, datastoreEngines, openSqlDatastore } from "../../../support/datastore.js";
import mysql from "mysql2/promise";
import pg from "pg";

const T0 = new Date("2030-01-01T00:00:00Z");
const AGENT = "spiffe://example.org/spire/agent/join_token/t1";
const sqlEngines = (await datastoreEngines()).filter((e): e is "postgres" | "mysql" => e !== "sqlite");

const codes = (results: PromiseSettledResult<unknown>[]): string[] =>
  results.map((r) => (r.status === "fulfilled" ? "ok" : isSigilError(r.reason) ? r.reason.code : `other: ${String(r.reason)}`)).sort();

describe.skipIf(sqlEngines.length === 0).each(sqlEngines)("%s: two servers on one database", (engine) => {
  const clock = new ManualClock(T0);
  let url: string;
  let drop: () => Promise<void>;
  let a: Datastore;
  let b: Datastore;

  beforeEach(async () => {
    ({ url, drop } = await createTestDatabase(engine));
    a = await openSqlDatastore(engine, url, clock);
    b = await openSqlDatastore(engine, url, clock);
  });

  afterEach(async () => {
    await a.close();
    await b.close();
    await drop();
  });

  it("the same entry created at once through both: exactly one succeeds, the other gets ERR_ALREADY_EXISTS", async () => {
    for (let round = 0; round < 5; round++) {
      const input = { spiffeId: `spiffe://example.org/race/${round}`, parentId: AGENT, selectors: [parseSelector(`unix:uid:${round}`)] };
      const results = await Promise.allSettled([a.createEntry(input), b.createEntry(input), a.createEntry(input), b.createEntry(input)]);
      expect(codes(results)).toEqual(["ERR_ALREADY_EXISTS", "ERR_ALREADY_EXISTS", "ERR_ALREADY_EXISTS", "ok"]);
    }
    expect(await a.countEntries()).toBe(5);
    // Each success wrote exactly one create event.
    expect((await b.listEvents(0, 100)).filter((e) => e.op === "create")).toHaveLength(5);
  });

  it("the same chosen entry ID created at once with different selectors: exactly one succeeds", async () => {
    const results = await Promise.allSettled(
      [a, b, a, b].map((ds, i) => ds.createEntry({ id: "same-id", spiffeId: "spiffe://example.org/x", parentId: AGENT, selectors: [parseSelector(`unix:uid:${i}`)] })),
    );
    expect(codes(results)).toEqual(["ERR_ALREADY_EXISTS", "ERR_ALREADY_EXISTS", "ERR_ALREADY_EXISTS", "ok"]);
  });

  it("one join token consumed at once through both: exactly one agent gets it", async () => {
    await a.createJoinToken({ token: "race", expiresAt: new Date(T0.getTime() + 600_000) });
    const results = await Promise.allSettled([a, b, a, b, a, b].map((ds) => ds.consumeJoinToken("race")));
    expect(codes(results)).toEqual([...Array(5).fill("ERR_NOT_FOUND"), "ok"]);
  });

  it("bundle compare-and-set under concurrency: of writers expecting the same sequence, exactly one wins", async () => {
    const doc = (n: number) => JSON.stringify({ keys: [], spiffe_sequence: n });
    await a.setBundle({ trustDomain: "example.org", document: doc(1), sequence: "1" }, { expectedSequence: null });
    const results = await Promise.allSettled(
      [a, b, a, b].map((ds, i) => ds.setBundle({ trustDomain: "example.org", document: doc(10 + i), sequence: String(10 + i) }, { expectedSequence: "1" })),
    );
    expect(codes(results)).toEqual(["ERR_INVALID_ARGUMENT", "ERR_INVALID_ARGUMENT", "ERR_INVALID_ARGUMENT", "ok"]);
    const winner = results.findIndex((r) => r.status === "fulfilled");
    expect((await b.getBundle("example.org"))?.sequence).toBe(String(10 + winner));
    // Creating when absent: exactly one of two racing creators.
    const created = await Promise.allSettled([a, b].map((ds, i) => ds.setBundle({ trustDomain: "other.org", document: doc(i), sequence: String(i) }, { expectedSequence: null })));
    expect(codes(created)).toEqual(["ERR_INVALID_ARGUMENT", "ok"]);
  });

  it("a change made through one instance is heard by its own listeners, and readable through the other", async () => {
    const heardA: string[] = [];
    const heardB: string[] = [];
    a.subscribe((e) => heardA.push(e.objectId));
    b.subscribe((e) => heardB.push(e.objectId));
    const e = await a.createEntry({ spiffeId: "spiffe://example.org/w", parentId: AGENT, selectors: [parseSelector("unix:uid:1")] });
    expect(heardA).toEqual([e.id]);
    // Cross-server feeds are phase 2: the other instance follows through listEvents.
    expect(heardB).toEqual([]);
    expect((await b.listEvents(0, 10)).map((ev) => ev.objectId)).toEqual([e.id]);
    expect(await b.getEntry(e.id)).toEqual(e);
  });
});

describe.skipIf(sqlEngines.length === 0).each(sqlEngines)("%s: schema versions", (engine) => {
  const clock = new ManualClock(T0);

  async function exec(url: string, statement: string): Promise<void> {
    if (engine === "postgres") {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        await c.query(statement);
      } finally {
        await c.end();
      }
    } else {
      const c = await mysql.createConnection({ uri: url });
      try {
        await c.query(statement);
      } finally {
        await c.end();
      }
    }
  }

  it("servers starting together migrate once; a database migrated by a newer version is refused naming both versions", async () => {
    const { url, drop } = await createTestDatabase(engine);
    try {
      const opened = await Promise.all([0, 1, 2].map(() => openSqlDatastore(engine, url, clock)));
      await opened[0]?.createEntry({ spiffeId: "spiffe://example.org/kept", parentId: AGENT, selectors: [parseSelector("unix:uid:1")] });
      for (const ds of opened) await ds.close();
      await exec(url, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'from the future', 0)");
      const err = await openSqlDatastore(engine, url, clock).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isSigilError(err, "ERR_INTERNAL")).toBe(true);
      expect((err as Error).message).toMatch(/schema version 99 is newer than the newest this Sigil knows \(\d+\)/);
      // Nothing was changed: removing the future version makes the database usable again, data intact.
      await exec(url, "DELETE FROM schema_migrations WHERE version = 99");
      const again = await openSqlDatastore(engine, url, clock);
      expect(await again.countEntries()).toBe(1);
      await again.close();
    } finally {
      await drop();
    }
  });

  it("a statement past statement_timeout (here: waiting on a row another session locks) fails with ERR_UNAVAILABLE; the datastore stays usable", async () => {
    const { url, drop } = await createTestDatabase(engine);
    const ds = engine === "postgres"
      ? await createPostgresDatastore({ connectionString: url, clock, statementTimeoutMs: 300 })
      : await createMysqlDatastore({ connectionString: url, clock, statementTimeoutMs: 300 });
    const doc = JSON.stringify({ keys: [] });
    await ds.setBundle({ trustDomain: "example.org", document: doc, sequence: "1" });
    const lock = engine === "postgres" ? new pg.Client({ connectionString: url }) : undefined;
    const mlock = engine === "mysql" ? await mysql.createConnection({ uri: url }) : undefined;
    try {
      await lock?.connect();
      const q = (text: string) => (lock ? lock.query(text) : (mlock as mysql.Connection).query(text));
      await q("BEGIN");
      await q("SELECT * FROM bundles WHERE trust_domain = 'example.org' FOR UPDATE");
      const err = await ds.setBundle({ trustDomain: "example.org", document: doc, sequence: "2" }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isSigilError(err, "ERR_UNAVAILABLE"), String(err)).toBe(true);
      await q("ROLLBACK");
      expect((await ds.setBundle({ trustDomain: "example.org", document: doc, sequence: "3" })).sequence).toBe("3");
    } finally {
      await lock?.end();
      await mlock?.end();
      await ds.close();
      await drop();
    }
  });

  it("with TLS configured, a database server without TLS is refused rather than used in plaintext", async () => {
    // The local test servers run without TLS, so the handshake cannot happen.
    const { url, drop } = await createTestDatabase(engine);
    try {
      const tls = { ca: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" };
      const open = engine === "postgres" ? createPostgresDatastore({ connectionString: `${url}?sslmode=disable`, clock, tls }) : createMysqlDatastore({ connectionString: url, clock, tls });
      const err = await open.then(
        (ds) => ds.close().then(() => undefined),
        (e: unknown) => e,
      );
      expect(isSigilError(err, "ERR_UNAVAILABLE") || isSigilError(err, "ERR_INTERNAL"), String(err)).toBe(true);
      expect(String((err as Error).message)).toMatch(/SSL|secure|TLS|certificate/i);
    } finally {
      await drop();
    }
  });

  it("an unreachable database is ERR_UNAVAILABLE naming the engine", async () => {
    const bad = engine === "postgres" ? "postgres://postgres@127.0.0.1:1/none" : "mysql://root@127.0.0.1:1/none";
    const err = await openSqlDatastore(engine, bad, clock).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isSigilError(err, "ERR_UNAVAILABLE")).toBe(true);
    expect((err as Error).message).toContain(engine);
  });
});
