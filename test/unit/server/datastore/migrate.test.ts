import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { parseSelector } from "../../../../common/selector.js";
import { createSqliteDatastore, migrate, SQLITE_MIGRATIONS } from "../../../../server/datastore/index.js";
import { NEW_DATABASE_PAGE_SIZE } from "../../../../server/datastore/sqlite-datastore.js";
import { isSigilError } from "../../../../spiffe/errors.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const clock = new ManualClock(T0);

let dir: string;
let path: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "sigil-ds-migrations-"));
  path = join(dir, "ds.sqlite3");
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function withRaw<T>(fn: (db: Database.Database) => T): T {
  const db = new Database(path);
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

function versions(): number[] {
  return withRaw((db) => (db.prepare("SELECT version FROM schema_migrations ORDER BY version").all() as Array<{ version: number }>).map((r) => r.version));
}

describe("migrations", () => {
  it("a new file gets every migration recorded, in WAL mode", async () => {
    const ds = await createSqliteDatastore({ path, clock });
    await ds.close();
    expect(versions()).toEqual(SQLITE_MIGRATIONS.map((m) => m.version));
    expect(withRaw((db) => db.pragma("journal_mode", { simple: true }))).toBe("wal");
  });

  it("a new file gets 16 KiB pages; an existing file keeps its page size and its data", async () => {
    const ds = await createSqliteDatastore({ path, clock });
    await ds.close();
    expect(withRaw((db) => db.pragma("page_size", { simple: true }))).toBe(NEW_DATABASE_PAGE_SIZE);

    const old = join(dir, "old.sqlite3");
    const raw = new Database(old);
    raw.pragma("page_size = 4096");
    raw.pragma("journal_mode = WAL");
    migrate(raw, SQLITE_MIGRATIONS, T0);
    raw.close();
    const reopened = await createSqliteDatastore({ path: old, clock });
    try {
      await reopened.createEntry({ spiffeId: "spiffe://example.org/w", parentId: "spiffe://example.org/spire/agent/a", selectors: [parseSelector("unix:uid:1")] });
      expect((await reopened.listEntries({})).items).toHaveLength(1);
    } finally {
      await reopened.close();
    }
    const db = new Database(old);
    try {
      expect(db.pragma("page_size", { simple: true })).toBe(4096);
    } finally {
      db.close();
    }
  });

  it("migration 8 (bundle change events) keeps the events and the highest event ID ever given, and takes bundle events", async () => {
    withRaw((db) => {
      migrate(db, SQLITE_MIGRATIONS.slice(0, 7), T0);
      const ins = db.prepare("INSERT INTO change_events (kind, object_id, op, at) VALUES (?, ?, 'update', 0)");
      for (let i = 1; i <= 5; i++) ins.run(i % 2 === 0 ? "agent" : "entry", `object-${i}`);
      // Events 4 and 5 were pruned: IDs must not be given again.
      db.prepare("DELETE FROM change_events WHERE event_id > 3").run();
      expect(() => db.prepare("INSERT INTO change_events (kind, object_id, op, at) VALUES ('bundle', 'x', 'update', 0)").run()).toThrow(/CHECK/);
    });
    const ds = await createSqliteDatastore({ path, clock });
    try {
      expect((await ds.listEvents(0, 10)).map((e) => `${e.eventId}:${e.kind}:${e.objectId}`)).toEqual(["1:entry:object-1", "2:agent:object-2", "3:entry:object-3"]);
      expect(await ds.lastEventId()).toBe(5);
      await ds.setBundle({ trustDomain: "example.org", document: '{"keys":[]}', sequence: "1" });
      expect((await ds.listEvents(3, 10)).map((e) => `${e.eventId}:${e.kind}:${e.objectId}`)).toEqual(["6:bundle:example.org"]);
    } finally {
      await ds.close();
    }
  });

  it("opening again is a no-op that keeps the data", async () => {
    const ds1 = await createSqliteDatastore({ path, clock });
    const e = await ds1.createEntry({ spiffeId: "spiffe://example.org/a", parentId: "spiffe://example.org/p", selectors: [parseSelector("x:1")] });
    await ds1.close();
    const ds2 = await createSqliteDatastore({ path, clock });
    expect(await ds2.getEntry(e.id)).toEqual(e);
    await ds2.close();
    expect(versions()).toEqual(SQLITE_MIGRATIONS.map((m) => m.version));
  });

  it("refuses a database with a newer schema, naming both versions, and leaves it untouched", async () => {
    await (await createSqliteDatastore({ path, clock })).close();
    const future = SQLITE_MIGRATIONS.length + 5;
    withRaw((db) => db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from the future', 0)").run(future));
    let caught: unknown;
    try {
      await createSqliteDatastore({ path, clock });
    } catch (e) {
      caught = e;
    }
    expect(isSigilError(caught, "ERR_INTERNAL")).toBe(true);
    expect((caught as Error).message).toContain(`schema version ${future}`);
    expect((caught as Error).message).toContain(`(${SQLITE_MIGRATIONS.length})`);
    expect(versions()).toContain(future);
  });

  it("applies only the missing migrations, each atomically: a failing one is rolled back whole", () => {
    const steps = [
      { version: 1, name: "one", sql: "CREATE TABLE one (x INTEGER)" },
      { version: 2, name: "two", sql: "CREATE TABLE two (x INTEGER)" },
    ];
    withRaw((db) => {
      expect(migrate(db, steps.slice(0, 1), T0)).toEqual({ from: 0, to: 1 });
      expect(migrate(db, steps, T0)).toEqual({ from: 1, to: 2 });
      expect(migrate(db, steps, T0)).toEqual({ from: 2, to: 2 });
      const broken = [...steps, { version: 3, name: "broken", sql: "CREATE TABLE three (x INTEGER); INSERT INTO nowhere VALUES (1);" }];
      let caught: unknown;
      try {
        migrate(db, broken, T0);
      } catch (e) {
        caught = e;
      }
      expect((caught as Error).message).toMatch(/migration 3 \(broken\) failed/);
      const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string }>).map((r) => r.name);
      expect(tables).toContain("two");
      expect(tables).not.toContain("three");
      expect(migrate(db, steps, T0)).toEqual({ from: 2, to: 2 });
    });
  });

  it("refuses a migration list with gaps", () => {
    withRaw((db) => {
      expect(() => migrate(db, [{ version: 2, name: "x", sql: "" }], T0)).toThrow(/versions must run 1, 2, 3/);
    });
  });

  it("two instances opening a new file at once both work", async () => {
    const [a, b] = await Promise.all([createSqliteDatastore({ path, clock }), createSqliteDatastore({ path, clock })]);
    await a.close();
    await b.close();
    expect(versions()).toEqual(SQLITE_MIGRATIONS.map((m) => m.version));
  });
});
