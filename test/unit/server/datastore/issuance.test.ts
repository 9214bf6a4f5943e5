import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { createSqliteDatastore, MAX_ISSUANCE_BATCH, migrate, SQLITE_MIGRATIONS, type Datastore, type IssuanceInput, type IssuanceRecord } from "../../../../server/datastore/index.js";
import { isSigilError, type ErrorCode } from "../../../../spiffe/errors.js";
import { countRows, datastoreEngines, closeTempDatastore, openTempDatastore, rejection as expectRejection, type TempDatastore } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const HOUR = 3_600_000;
const AGENT = "spiffe://example.org/spire/agent/join_token/t1";
const AGENT2 = "spiffe://example.org/spire/agent/join_token/t2";

const engines = await datastoreEngines();

let dir: string;
let path: string;
let clock: ManualClock;
let ds: Datastore;
let temp: TempDatastore;

describe.each(engines)("datastore on %s", (engine) => {
  beforeEach(async () => {
    temp = await openTempDatastore("issuances", T0, engine);
    ({ dir, path, clock, ds } = temp);
  });

  afterEach(() => closeTempDatastore(ds, dir));

  const rejection = (p: Promise<unknown>, code: ErrorCode) => expectRejection(p, code, "datastore: ");

  let serialCounter = 0x1000;

  /** An x509-svid record issued at T0 + `startH` hours, valid for `ttlH` hours. */
  function rec(over: Partial<IssuanceInput> = {}, startH = 0, ttlH = 1): IssuanceInput {
    const notBefore = new Date(T0.getTime() + startH * HOUR);
    return {
      serial: (serialCounter++).toString(16),
      kind: "x509-svid",
      spiffeId: "spiffe://example.org/web",
      entryId: "entry-web",
      agentId: AGENT,
      caKeyId: "x509-ca-A",
      notBefore,
      notAfter: new Date(notBefore.getTime() + ttlH * HOUR),
      issuedAt: notBefore,
      selectors: ["unix:uid:1000"],
      requestedBy: `agent:${AGENT}`,
      ...over,
    };
  }

  async function all(request: Parameters<Datastore["listIssuances"]>[0] = {}): Promise<IssuanceRecord[]> {
    const page = await ds.listIssuances(request);
    expect(page.nextPageToken).toBeUndefined();
    return [...page.items];
  }

  const serials = (items: readonly IssuanceRecord[]) => items.map((r) => r.serial);

  const rawCount = (table = "issuances"): Promise<number> => countRows(temp, table);

  describe("issuance log: record and list", () => {
    it("stores a batch and returns every field normalised, newest first", async () => {
      const x509 = rec({ serial: "00AbC0", selectors: ["unix:uid:1000", "k8s:ns:prod", "unix:uid:1000"] });
      const jwt = rec({ kind: "jwt-svid", serial: "7", jwtId: "jti-1", audience: ["svc-a", "svc-b", "svc-a"] });
      const agentSvid = rec({ kind: "agent-svid", serial: "0", spiffeId: AGENT, entryId: null, agentId: AGENT, selectors: [], requestedBy: "node:join_token" });
      const admin = rec({ kind: "jwt-svid", entryId: null, agentId: null, requestedBy: "admin:local", audience: ["ops"] });
      await ds.recordIssuances([x509, jwt, agentSvid, admin]);

      const items = await all();
      expect(serials(items)).toEqual([admin.serial, "0", "7", "abc0"]);
      expect(items[3]).toEqual({
        serial: "abc0",
        kind: "x509-svid",
        spiffeId: "spiffe://example.org/web",
        entryId: "entry-web",
        agentId: AGENT,
        caKeyId: "x509-ca-A",
        notBefore: x509.notBefore,
        notAfter: x509.notAfter,
        issuedAt: x509.issuedAt,
        selectors: ["k8s:ns:prod", "unix:uid:1000"],
        requestedBy: `agent:${AGENT}`,
      });
      expect(items[3]).not.toHaveProperty("jwtId");
      expect(items[3]).not.toHaveProperty("audience");
      expect(items[2]).toMatchObject({ kind: "jwt-svid", jwtId: "jti-1", audience: ["svc-a", "svc-b"] });
      expect(items[1]).toMatchObject({ kind: "agent-svid", entryId: null, selectors: [] });
      expect(items[0]).toMatchObject({ agentId: null, entryId: null, requestedBy: "admin:local", jwtId: null, audience: ["ops"] });
    });

    it("an empty batch is a no-op; several batches list newest batch first", async () => {
      await ds.recordIssuances([]);
      expect(await all()).toEqual([]);
      const first = [rec(), rec()];
      const second = [rec(), rec()];
      await ds.recordIssuances(first);
      await ds.recordIssuances(second);
      expect(serials(await all())).toEqual([second[1], second[0], first[1], first[0]].map((r) => r?.serial));
    });

    it("writes no change events", async () => {
      const seen: unknown[] = [];
      ds.subscribe((e) => seen.push(e));
      const before = await ds.lastEventId();
      await ds.recordIssuances([rec(), rec()]);
      await ds.pruneIssuances(new Date(T0.getTime() + 10 * HOUR));
      expect(await ds.lastEventId()).toBe(before);
      expect(seen).toEqual([]);
    });

    it("filters by spiffeId, entryId, agentId and serial (any hex spelling), alone and combined", async () => {
      const a = rec({ spiffeId: "spiffe://example.org/a", entryId: "ea", agentId: AGENT });
      const b = rec({ spiffeId: "spiffe://example.org/b", entryId: "eb", agentId: AGENT2, requestedBy: `agent:${AGENT2}` });
      const c = rec({ spiffeId: "spiffe://example.org/a", entryId: "ea", agentId: AGENT2, requestedBy: `agent:${AGENT2}` });
      const d = rec({ spiffeId: "spiffe://example.org/a", entryId: null, agentId: null, requestedBy: "admin:local", serial: "00ff" });
      await ds.recordIssuances([a, b, c, d]);

      expect(serials(await all({ spiffeId: "spiffe://example.org/a" }))).toEqual(["ff", c.serial, a.serial]);
      expect(serials(await all({ entryId: "ea" }))).toEqual([c.serial, a.serial]);
      expect(serials(await all({ entryId: "nope" }))).toEqual([]);
      expect(serials(await all({ agentId: AGENT2 }))).toEqual([c.serial, b.serial]);
      expect(serials(await all({ serial: "FF" }))).toEqual(["ff"]);
      expect(serials(await all({ serial: "0000ff" }))).toEqual(["ff"]);
      expect(serials(await all({ spiffeId: "spiffe://example.org/a", agentId: AGENT2 }))).toEqual([c.serial]);
    });

    it("liveAt keeps records with notBefore ≤ t < notAfter", async () => {
      const early = rec({}, 0, 2); // [T0, T0+2h)
      const late = rec({}, 1, 2); // [T0+1h, T0+3h)
      await ds.recordIssuances([early, late]);
      const at = (h: number) => new Date(T0.getTime() + h * HOUR);
      expect(serials(await all({ liveAt: new Date(T0.getTime() - 1) }))).toEqual([]);
      expect(serials(await all({ liveAt: at(0) }))).toEqual([early.serial]);
      expect(serials(await all({ liveAt: at(1) }))).toEqual([late.serial, early.serial]);
      expect(serials(await all({ liveAt: new Date(T0.getTime() + 2 * HOUR - 1) }))).toEqual([late.serial, early.serial]);
      expect(serials(await all({ liveAt: at(2) }))).toEqual([late.serial]);
      expect(serials(await all({ liveAt: at(3) }))).toEqual([]);
      expect(serials(await all({ liveAt: at(1), agentId: AGENT2 }))).toEqual([]);
    });

    it("refuses invalid filters", async () => {
      await rejection(ds.listIssuances({ spiffeId: "not-an-id" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listIssuances({ agentId: "http://x" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listIssuances({ serial: "xyz" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listIssuances({ entryId: "" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listIssuances({ liveAt: new Date(Number.NaN) }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listIssuances({ pageSize: 0 }), "ERR_INVALID_ARGUMENT");
    });
  });

  describe("issuance log: pagination", () => {
    it("pages newest first without gaps or repeats, stable while new records arrive", async () => {
      const batch = Array.from({ length: 5 }, () => rec());
      await ds.recordIssuances(batch);
      const expected = [...batch].reverse().map((r) => r.serial);

      const p1 = await ds.listIssuances({ pageSize: 2 });
      expect(serials(p1.items)).toEqual(expected.slice(0, 2));
      expect(p1.nextPageToken).toBeDefined();

      // Records arriving between pages are newer: they do not shift later pages.
      await ds.recordIssuances([rec(), rec()]);

      const p2 = await ds.listIssuances({ pageSize: 2, pageToken: p1.nextPageToken as string });
      expect(serials(p2.items)).toEqual(expected.slice(2, 4));
      const p3 = await ds.listIssuances({ pageSize: 2, pageToken: p2.nextPageToken as string });
      expect(serials(p3.items)).toEqual(expected.slice(4));
      expect(p3.nextPageToken).toBeUndefined();
    });

    it("pages a filtered list; an exact last page has no token", async () => {
      await ds.recordIssuances([rec({ agentId: AGENT2 }), rec(), rec({ agentId: AGENT2 }), rec(), rec({ agentId: AGENT2 }), rec({ agentId: AGENT2 })]);
      const p1 = await ds.listIssuances({ agentId: AGENT2, pageSize: 2 });
      const p2 = await ds.listIssuances({ agentId: AGENT2, pageSize: 2, pageToken: p1.nextPageToken as string });
      expect(p2.nextPageToken).toBeUndefined();
      expect([...p1.items, ...p2.items].every((r) => r.agentId === AGENT2)).toBe(true);
      expect(new Set(serials([...p1.items, ...p2.items])).size).toBe(4);
    });

    it("refuses a token from another list or a forged one", async () => {
      await ds.recordIssuances([rec(), rec()]);
      await ds.createAgent({ spiffeId: AGENT, attestationType: "join_token", certSerial: "1", certNotAfter: T0 });
      await ds.createAgent({ spiffeId: AGENT2, attestationType: "join_token", certSerial: "2", certNotAfter: T0 });
      const agents = await ds.listAgents({ pageSize: 1 });
      await rejection(ds.listIssuances({ pageToken: agents.nextPageToken as string }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listIssuances({ pageToken: "p1.garbage" }), "ERR_INVALID_ARGUMENT");
    });
  });

  describe("issuance log: prune", () => {
    it("deletes records whose notAfter is strictly before the date, returning how many", async () => {
      const a = rec({}, 0, 1); // notAfter T0+1h
      const b = rec({}, 0, 2); // notAfter T0+2h
      const c = rec({}, 0, 3); // notAfter T0+3h
      await ds.recordIssuances([a, b, c]);
      expect(await ds.pruneIssuances(T0)).toBe(0);
      expect(await ds.pruneIssuances(new Date(T0.getTime() + 2 * HOUR))).toBe(1); // b's notAfter == date: kept
      expect(serials(await all())).toEqual([c.serial, b.serial]);
      expect(await ds.pruneIssuances(new Date(T0.getTime() + 10 * HOUR))).toBe(2);
      expect(await all()).toEqual([]);
      await rejection(ds.pruneIssuances(new Date(Number.NaN)), "ERR_INVALID_ARGUMENT");
    });
  });

  describe("issuance log: validation and atomicity", () => {
    it("a batch with one invalid record writes nothing and names the record", async () => {
      await ds.recordIssuances([rec()]);
      const emptyId = await rejection(ds.recordIssuances([rec(), rec(), rec({ spiffeId: "" })]), "ERR_INVALID_ARGUMENT");
      expect(emptyId.message).toContain("issuance[2] spiffeId");
      const backwards = rec({ notBefore: new Date(T0.getTime() + HOUR), notAfter: T0 });
      const reversed = await rejection(ds.recordIssuances([rec(), backwards]), "ERR_INVALID_ARGUMENT");
      expect(reversed.message).toContain("issuance[1] notAfter must be after notBefore");
      await rejection(ds.recordIssuances([rec(), rec({ notAfter: T0, notBefore: T0 })]), "ERR_INVALID_ARGUMENT");
      expect((await all()).length).toBe(1);
      expect(await rawCount()).toBe(1);
    });

    it.skipIf(engine !== "sqlite")("a database error part-way through the batch rolls the whole batch back", async () => {
      // Another connection installs a trigger failing the third insert of the batch.
      const raw = new Database(path);
      try {
        raw.exec(`CREATE TRIGGER fail_issuance BEFORE INSERT ON issuances WHEN NEW.serial = 'b00b'
                  BEGIN SELECT RAISE(ABORT, 'boom'); END`);
      } finally {
        raw.close();
      }
      const err = await rejection(ds.recordIssuances([rec(), rec(), rec({ serial: "b00b" }), rec()]), "ERR_INTERNAL");
      expect(err.message).toContain("boom");
      expect(await rawCount()).toBe(0);
      // The datastore stays usable.
      await ds.recordIssuances([rec()]);
      expect(await rawCount()).toBe(1);
    });

    it("refuses malformed records", async () => {
      const bad: Array<[Partial<IssuanceInput>, RegExp]> = [
        [{ kind: "x509" as never }, /kind must be one of/],
        [{ serial: "" }, /serial must be 1-64 hex digits/],
        [{ serial: "0x1f" }, /serial must be 1-64 hex digits/],
        [{ serial: "1".repeat(41) }, /longer than 20 octets/],
        [{ spiffeId: "https://example.org/a" }, /spiffeId/],
        [{ agentId: "nope" }, /agentId/],
        [{ entryId: "has space" }, /entryId/],
        [{ entryId: undefined as never }, /entryId/],
        [{ caKeyId: "" }, /caKeyId is empty/],
        [{ selectors: ["no-colon"] }, /selectors\[0\]/],
        [{ selectors: [1 as never] }, /selectors\[0\] must be a type:value string/],
        [{ requestedBy: "" }, /requestedBy/],
        [{ requestedBy: "someone" }, /requestedBy must be <kind>:<principal>/],
        [{ issuedAt: new Date(Number.NaN) }, /issuedAt must be a valid Date/],
        [{ audience: ["a"] }, /jwt-svid records only/],
        [{ jwtId: "j" }, /jwt-svid records only/],
        [{ kind: "jwt-svid" }, /needs a non-empty audience/],
        [{ kind: "jwt-svid", audience: [""] }, /audience\[0\] is empty/],
        [{ kind: "jwt-svid", audience: ["a"], jwtId: "" }, /jwtId is empty/],
      ];
      for (const [over, message] of bad) {
        const e = await rejection(ds.recordIssuances([rec(over)]), "ERR_INVALID_ARGUMENT");
        expect(e.message).toMatch(message);
      }
      await rejection(ds.recordIssuances("nope" as never), "ERR_INVALID_ARGUMENT");
      await rejection(ds.recordIssuances([null as never]), "ERR_INVALID_ARGUMENT");
      const tooMany = Array.from({ length: MAX_ISSUANCE_BATCH + 1 }, () => rec());
      expect((await rejection(ds.recordIssuances(tooMany), "ERR_INVALID_ARGUMENT")).message).toContain(`at most ${MAX_ISSUANCE_BATCH}`);
      expect(await rawCount()).toBe(0);
    });

    it("checks each credential's own fields also once its context is known", async () => {
      await ds.recordIssuances([rec()]);
      const bad: Array<[Partial<IssuanceInput>, RegExp]> = [
        [{ serial: "" }, /issuance\[1\] serial must be 1-64 hex digits/],
        [{ serial: "1".repeat(41) }, /issuance\[1\] serial is longer than 20 octets/],
        [{ notAfter: T0, notBefore: T0 }, /issuance\[1\] notAfter must be after notBefore/],
        [{ notBefore: new Date(Number.NaN) }, /issuance\[1\] notBefore must be a valid Date/],
        [{ issuedAt: "yesterday" as never }, /issuance\[1\] issuedAt must be a valid Date/],
        [{ jwtId: "j" }, /issuance\[1\] jwtId and audience apply to jwt-svid records only/],
      ];
      for (const [over, message] of bad) {
        const e = await rejection(ds.recordIssuances([rec(), rec(over)]), "ERR_INVALID_ARGUMENT");
        expect(e.message).toMatch(message);
      }
      expect(await rawCount()).toBe(1);
    });

    it("never mistakes one record's context for another's that would read the same if joined", async () => {
      await ds.recordIssuances([rec({ selectors: ["unix:uid:1", "unix:gid:2"] })]);
      // One selector whose value holds a newline: refused or stored as itself, never as the two above.
      const joined = rec({ selectors: ["unix:uid:1\nunix:gid:2"] });
      let stored: readonly string[] | undefined;
      try {
        await ds.recordIssuances([joined]);
        stored = (await all({ serial: joined.serial }))[0]?.selectors;
      } catch (e) {
        expect(isSigilError(e, "ERR_INVALID_ARGUMENT")).toBe(true);
      }
      if (stored !== undefined) expect(stored).toEqual(["unix:uid:1\nunix:gid:2"]);
      // IDs that would shift across a separator are told apart as well.
      const a = rec({ entryId: null, agentId: AGENT });
      const b = rec({ entryId: null, agentId: null });
      await ds.recordIssuances([a, b]);
      expect((await all({ serial: b.serial }))[0]?.agentId).toBeNull();
      expect((await all({ serial: a.serial }))[0]?.agentId).toBe(AGENT);
    });

    it("a pruned context's ID is never handed to another context (a remembered ID cannot mislabel a record)", async () => {
      await ds.recordIssuances([rec({ spiffeId: "spiffe://example.org/keep" }, 0, 100)]);
      await ds.recordIssuances([rec({ spiffeId: "spiffe://example.org/y" })]);
      expect(await ds.pruneIssuances(new Date(T0.getTime() + 2 * HOUR))).toBe(1); // y's record and context go
      await ds.recordIssuances([rec({ spiffeId: "spiffe://example.org/z" })]);
      const again = rec({ spiffeId: "spiffe://example.org/y" });
      await ds.recordIssuances([again]);
      expect((await all({ serial: again.serial }))[0]?.spiffeId).toBe("spiffe://example.org/y");
      expect((await all({ spiffeId: "spiffe://example.org/z" })).length).toBe(1);
    });

    it("prunes any amount in short transactions", async () => {
      const many = Array.from({ length: 12_001 }, () => rec());
      for (let i = 0; i < many.length; i += MAX_ISSUANCE_BATCH) await ds.recordIssuances(many.slice(i, i + MAX_ISSUANCE_BATCH));
      await ds.recordIssuances([rec({}, 0, 10)]);
      expect(await ds.pruneIssuances(new Date(T0.getTime() + 2 * HOUR))).toBe(12_001);
      expect(await rawCount()).toBe(1);
    });

    it("stores what records share once", async () => {
      await ds.recordIssuances([rec(), rec(), rec({ spiffeId: "spiffe://example.org/other" }), rec({ entryId: null, agentId: null, requestedBy: "admin:local" })]);
      await ds.recordIssuances([rec(), rec({ kind: "jwt-svid", audience: ["a"], jwtId: "j1" }), rec({ kind: "jwt-svid", audience: ["a"], jwtId: "j2" })]);
      expect(await rawCount("issuance_contexts")).toBe(4);
      const items = await all();
      expect(items.filter((i) => i.kind === "jwt-svid").map((i) => [i.jwtId, i.audience])).toEqual([["j2", ["a"]], ["j1", ["a"]]]);
      expect(items.filter((i) => i.entryId === null).map((i) => [i.agentId, i.requestedBy])).toEqual([[null, "admin:local"]]);
      // Pruning everything leaves no context behind.
      expect(await ds.pruneIssuances(new Date(T0.getTime() + 10 * HOUR))).toBe(7);
      expect(await rawCount("issuance_contexts")).toBe(0);
      // A remembered context that was pruned is stored again.
      await ds.recordIssuances([rec()]);
      expect((await all()).map((i) => i.spiffeId)).toEqual(["spiffe://example.org/web"]);
    });

    it("fails with ERR_UNAVAILABLE once closed", async () => {
      await ds.close();
      await rejection(ds.recordIssuances([rec()]), "ERR_UNAVAILABLE");
      await rejection(ds.recordIssuances([]), "ERR_UNAVAILABLE");
      await rejection(ds.listIssuances(), "ERR_UNAVAILABLE");
      await rejection(ds.pruneIssuances(T0), "ERR_UNAVAILABLE");
    });
  });

  describe.skipIf(engine !== "sqlite")("issuance log: migration (SQLite schema history)", () => {
    it("a version-1 database migrates forward to the newest version, keeping its data", async () => {
      await ds.close();
      rmSync(dir, { recursive: true, force: true });
      dir = mkdtempSync(join(tmpdir(), "sigil-ds-issuances-v1-"));
      path = join(dir, "ds.sqlite3");

      const v1 = new Database(path);
      try {
        v1.pragma("journal_mode = WAL");
        expect(migrate(v1, SQLITE_MIGRATIONS.slice(0, 1), T0)).toEqual({ from: 0, to: 1 });
        const tables = v1.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'issuances'").all();
        expect(tables).toEqual([]);
      } finally {
        v1.close();
      }
      // Data written by a version-1 server.
      const writer = new Database(path);
      try {
        writer.prepare("INSERT INTO bundles (trust_domain, document, sequence, created_at, updated_at) VALUES ('example.org', '{\"keys\":[]}', '3', 0, 0)").run();
      } finally {
        writer.close();
      }

      ds = await createSqliteDatastore({ path, clock });
      expect((await ds.getBundle("example.org"))?.sequence).toBe("3");
      await ds.recordIssuances([rec()]);
      expect((await all()).length).toBe(1);

      const raw = new Database(path, { readonly: true });
      try {
        const versions = raw.prepare("SELECT version, name FROM schema_migrations ORDER BY version").all();
        expect(versions).toEqual([
          { version: 1, name: "initial schema" },
          { version: 2, name: "issuance log" },
          { version: 3, name: "issuance log: shared contexts" },
          { version: 4, name: "federation relationships" },
          { version: 5, name: "ca journal per server" },
          { version: 6, name: "authority taint and revoke; issuance inventory indexes" },
          { version: 7, name: "transparency log" },
          { version: 8, name: "bundle change events" },
          { version: 9, name: "transparency log witness" },
        ]);
        const indexes = (raw.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'issuances' ORDER BY name").all() as Array<{ name: string }>).map(
          (r) => r.name,
        );
        expect(indexes).toEqual(["issuances_context_id", "issuances_context_not_after", "issuances_not_after", "issuances_serial"]);
      } finally {
        raw.close();
      }
    });

    it("a version-2 issuance log moves to shared contexts with every field and page position kept", async () => {
      await ds.close();
      const v2path = join(dir, "v2.sqlite3");
      const v2 = new Database(v2path);
      try {
        migrate(v2, SQLITE_MIGRATIONS.slice(0, 2), T0);
        const ins = v2.prepare(`INSERT INTO issuances (row_id, serial, kind, spiffe_id, entry_id, agent_id, ca_key_id, not_before, not_after, issued_at,
          selectors, requested_by, jwt_id, audience) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
        const t = T0.getTime();
        ins.run(5, "a1", "x509-svid", "spiffe://example.org/web", "entry-web", AGENT, "x509-ca-A", t, t + HOUR, t, '["unix:uid:1000"]', `agent:${AGENT}`, null, null);
        ins.run(9, "a2", "x509-svid", "spiffe://example.org/web", "entry-web", AGENT, "x509-ca-A", t, t + 2 * HOUR, t, '["unix:uid:1000"]', `agent:${AGENT}`, null, null);
        ins.run(12, "b1", "jwt-svid", "spiffe://example.org/web", "entry-web", AGENT2, "jwt-A", t, t + HOUR, t, "[]", `agent:${AGENT2}`, "jti", '["aud"]');
        ins.run(20, "0", "agent-svid", AGENT, null, AGENT, "x509-ca-A", t, t + HOUR, t, "[]", "attestation:join_token", null, null);
        // Row 30 existed once and was pruned: the sequence remembers it.
        ins.run(30, "dead", "x509-svid", "spiffe://example.org/web", "entry-web", AGENT, "x509-ca-A", t, t + HOUR, t, "[]", `agent:${AGENT}`, null, null);
        v2.prepare("DELETE FROM issuances WHERE row_id = 30").run();
      } finally {
        v2.close();
      }
      ds = await createSqliteDatastore({ path: v2path, clock });
      const page = await ds.listIssuances({ pageSize: 2 });
      expect(page.items.map((i) => i.serial)).toEqual(["0", "b1"]);
      const rest = await ds.listIssuances({ pageSize: 2, ...(page.nextPageToken === undefined ? {} : { pageToken: page.nextPageToken }) });
      expect(rest.items.map((i) => i.serial)).toEqual(["a2", "a1"]);
      const byKind = Object.fromEntries([...page.items, ...rest.items].map((i) => [i.serial, i]));
      expect(byKind["0"]).toMatchObject({ kind: "agent-svid", entryId: null, agentId: AGENT, requestedBy: "attestation:join_token", selectors: [] });
      expect(byKind["b1"]).toMatchObject({ kind: "jwt-svid", jwtId: "jti", audience: ["aud"], agentId: AGENT2, caKeyId: "jwt-A" });
      expect(byKind["a2"]).toMatchObject({ entryId: "entry-web", selectors: ["unix:uid:1000"], notAfter: new Date(T0.getTime() + 2 * HOUR) });
      expect(serials(await all({ entryId: "entry-web", agentId: AGENT }))).toEqual(["a2", "a1"]);
      // New records continue after the highest row ID the old table ever gave (page tokens never repeat).
      await ds.recordIssuances([rec()]);
      const raw = new Database(v2path, { readonly: true });
      try {
        expect((raw.prepare("SELECT MAX(row_id) AS m FROM issuances").get() as { m: number }).m).toBe(31);
      } finally {
        raw.close();
      }
    });

    it("migrating the full set on a version-1 database reports 1 → the newest version", () => {
      const raw = new Database(join(dir, "other.sqlite3"));
      try {
        migrate(raw, SQLITE_MIGRATIONS.slice(0, 1), T0);
        const newest = SQLITE_MIGRATIONS.length;
        expect(migrate(raw, SQLITE_MIGRATIONS, T0)).toEqual({ from: 1, to: newest });
        expect(migrate(raw, SQLITE_MIGRATIONS, T0)).toEqual({ from: newest, to: newest });
      } finally {
        raw.close();
      }
    });
  });
});
