/**
 * Integrity of the network SQL engines (PostgreSQL, MariaDB/MySQL) against
 * hostile input and concurrency: two datastore instances (two servers) racing
 * on one entry, agent, bundle and join token; text compared byte for byte
 * (case, trailing spaces, quotes, long values past MySQL's index prefixes);
 * a connection lost mid-transaction; no password in connection errors.
 */
import mysql from "mysql2/promise";
import pg from "pg";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { parseSelector } from "../../../../common/selector.js";
import type { Datastore } from "../../../../server/datastore/index.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { createTestDatabase, datastoreEngines, openSqlDatastore } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const AGENT = "spiffe://example.org/spire/agent/join_token/t1";
const sqlEngines = (await datastoreEngines()).filter((e): e is "postgres" | "mysql" => e !== "sqlite");
const sel = (s: string) => parseSelector(s);
const codes = (results: PromiseSettledResult<unknown>[]): string[] =>
  results.map((r) => (r.status === "fulfilled" ? "ok" : isSigilError(r.reason) ? r.reason.code : `other: ${String(r.reason)}`)).sort();

describe.each(sqlEngines)("%s attack", (engine) => {
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

  it("trailing spaces and case are distinct in selectors and filters", async () => {
    const e1 = await a.createEntry({ spiffeId: "spiffe://example.org/A", parentId: AGENT, selectors: [sel("unix:user:root")] });
    const e2 = await a.createEntry({ spiffeId: "spiffe://example.org/A", parentId: AGENT, selectors: [sel("unix:user:root ")] });
    const e3 = await a.createEntry({ spiffeId: "spiffe://example.org/A", parentId: AGENT, selectors: [sel("unix:user:Root")] });
    const e4 = await a.createEntry({ spiffeId: "spiffe://example.org/a", parentId: AGENT, selectors: [sel("unix:user:root")] });
    expect(new Set([e1.id, e2.id, e3.id, e4.id]).size).toBe(4);
    for (const match of ["exact", "superset", "any", "subset"] as const) {
      const page = await a.listEntries({ filter: { selectors: { selectors: [sel("unix:user:root")], match } } });
      expect(page.items.map((e) => e.id).sort(), match).toEqual([e1.id, e4.id].sort());
      const page2 = await a.listEntries({ filter: { selectors: { selectors: [sel("unix:user:root ")], match } } });
      expect(page2.items.map((e) => e.id), match).toEqual([e2.id]);
    }
    expect((await a.listEntries({ filter: { spiffeId: "spiffe://example.org/a" } })).items.map((e) => e.id)).toEqual([e4.id]);
    const h1 = await a.createEntry({ spiffeId: "spiffe://example.org/h", parentId: AGENT, selectors: [sel("unix:uid:1")], hint: "web" });
    await a.createEntry({ spiffeId: "spiffe://example.org/h", parentId: AGENT, selectors: [sel("unix:uid:2")], hint: "web " });
    await a.createEntry({ spiffeId: "spiffe://example.org/h", parentId: AGENT, selectors: [sel("unix:uid:3")], hint: "Web" });
    expect((await a.listEntries({ filter: { hint: "web" } })).items.map((e) => e.id)).toEqual([h1.id]);
  });

  it("quotes, backslashes, LIKE metacharacters and unicode round trip and filter exactly", async () => {
    const values = ["a'b", 'a"b', "a\\b", "a\\", "%", "_", "a%", "\\'; DROP TABLE bundles; --", "é", "e\u0301", "😀", "ß", "ss"];
    const ids: string[] = [];
    for (const v of values) ids.push((await a.createEntry({ spiffeId: "spiffe://example.org/q", parentId: AGENT, selectors: [sel(`k8s:ns:${v}`)] })).id);
    for (const [i, v] of values.entries()) {
      const page = await a.listEntries({ filter: { selectors: { selectors: [sel(`k8s:ns:${v}`)], match: "exact" } } });
      expect(page.items.map((e) => e.id), v).toEqual([ids[i]]);
      expect(page.items[0]?.selectors[0]?.value).toBe(`ns:${v}`);
    }
  });

  it("long SPIFFE IDs and selector values differing only at the end are distinct", async () => {
    const long = "x".repeat(1900);
    const e1 = await a.createEntry({ spiffeId: `spiffe://example.org/${long}1`, parentId: AGENT, selectors: [sel(`k8s:ns:${"v".repeat(1000)}1`)] });
    const e2 = await a.createEntry({ spiffeId: `spiffe://example.org/${long}2`, parentId: AGENT, selectors: [sel(`k8s:ns:${"v".repeat(1000)}1`)] });
    const e3 = await a.createEntry({ spiffeId: `spiffe://example.org/${long}1`, parentId: AGENT, selectors: [sel(`k8s:ns:${"v".repeat(1000)}2`)] });
    expect(new Set([e1.id, e2.id, e3.id]).size).toBe(3);
    const page = await a.listEntries({ filter: { selectors: { selectors: [sel(`k8s:ns:${"v".repeat(1000)}2`)], match: "exact" } } });
    expect(page.items.map((e) => e.id)).toEqual([e3.id]);
    expect((await a.getEntry(e2.id))?.spiffeId).toBe(`spiffe://example.org/${long}2`);
  });

  it("one entry identity, selectors in other orders and repeated, created at once through both (singly and in batches): exactly one", async () => {
    for (let round = 0; round < 5; round++) {
      const spiffeId = `spiffe://example.org/o/${round}`;
      const orders = [
        ["unix:uid:1", "unix:gid:2"],
        ["unix:gid:2", "unix:uid:1"],
        ["unix:uid:1", "unix:gid:2", "unix:uid:1"],
      ].map((list) => ({ spiffeId, parentId: AGENT, selectors: list.map(sel) }));
      const results = await Promise.allSettled([
        a.createEntry(orders[0]!),
        b.createEntry(orders[1]!),
        a.createEntries([orders[2]!]).then(([r]) => (r?.ok ? r.value : Promise.reject(r?.error))),
        b.createEntries([orders[1]!]).then(([r]) => (r?.ok ? r.value : Promise.reject(r?.error))),
      ]);
      expect(codes(results)).toEqual(["ERR_ALREADY_EXISTS", "ERR_ALREADY_EXISTS", "ERR_ALREADY_EXISTS", "ok"]);
      expect(await a.countEntries({ spiffeId })).toBe(1);
    }
    expect((await a.listEvents(0, 100)).filter((e) => e.op === "create")).toHaveLength(5);
  });

  it("CA journal bytes (every octet value) round trip through the other instance", async () => {
    const der = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await a.upsertCaJournal({ kind: "jwt", slotId: "A", keyId: "k ' é", status: "active", publicKeyDer: der, notBefore: T0, notAfter: new Date(T0.getTime() + 60_000) });
    const [rec] = await b.listCaJournal("jwt");
    expect(Buffer.from(rec!.publicKeyDer).equals(der)).toBe(true);
    expect(rec!.keyId).toBe("k ' é");
  });

  it("uint64 max sequence round trips and compares", async () => {
    const max = "18446744073709551615";
    await a.setBundle({ trustDomain: "example.org", document: JSON.stringify({ keys: [] }), sequence: max });
    expect((await b.getBundle("example.org"))?.sequence).toBe(max);
    await b.setBundle({ trustDomain: "example.org", document: JSON.stringify({ keys: [] }), sequence: "5" }, { expectedSequence: max });
    expect((await a.getBundle("example.org"))?.sequence).toBe("5");
  });

  it("concurrent updates of one entry lose no revision", async () => {
    const e = await a.createEntry({ spiffeId: "spiffe://example.org/r", parentId: AGENT, selectors: [sel("unix:uid:1")] });
    const n = 16;
    const results = await Promise.allSettled(Array.from({ length: n }, (_, i) => (i % 2 ? a : b).updateEntry(e.id, { x509SvidTtl: 100 + i }, ["x509SvidTtl"])));
    expect(codes(results)).toEqual(Array(n).fill("ok"));
    expect((await a.getEntry(e.id))?.revision).toBe(n);
    const evs = (await a.listEvents(0, 1000)).filter((ev) => ev.op === "update");
    expect(evs).toHaveLength(n);
  });

  it("a ban is never undone by a concurrent agent update", async () => {
    for (let round = 0; round < 10; round++) {
      const id = `spiffe://example.org/spire/agent/x/${round}`;
      await a.createAgent({ spiffeId: id, attestationType: "x", certSerial: "01", certNotAfter: new Date(T0.getTime() + 3600_000) });
      const results = await Promise.allSettled([
        b.updateAgent(id, { certSerial: "02" }, ["certSerial"]),
        a.banAgent(id),
        b.updateAgent(id, { newCertSerial: "03", newCertNotAfter: new Date(T0.getTime() + 7200_000) }, ["newCertSerial", "newCertNotAfter"]),
      ]);
      expect(codes(results)).toEqual(["ok", "ok", "ok"]);
      expect((await b.getAgent(id))?.banned).toBe(true);
    }
  });

  it("deleteBundle restrict racing createEntry federating with it: never an entry federating with a missing bundle", async () => {
    for (let round = 0; round < 10; round++) {
      const td = `p${round}.org`;
      await a.setBundle({ trustDomain: td, document: JSON.stringify({ keys: [] }), sequence: "1" });
      const results = await Promise.allSettled([
        b.createEntry({ spiffeId: `spiffe://example.org/f${round}`, parentId: AGENT, selectors: [sel("unix:uid:1")], federatesWith: [td] }),
        a.deleteBundle(td, "restrict"),
      ]);
      const c = codes(results);
      expect([["ERR_FAILED_PRECONDITION", "ok"], ["ERR_INVALID_ARGUMENT", "ok"]]).toContainEqual(c);
      const bundle = await a.getBundle(td);
      const users = await a.listEntries({ filter: { federatesWith: { trustDomains: [td], match: "any" } } });
      if (users.items.length > 0) expect(bundle).toBeDefined();
    }
  });

  it("a relationship deleted through one server while the other stores its first fetched bundle: never a bundle without its relationship", async () => {
    for (let round = 0; round < 10; round++) {
      const td = `fed${round}.test`;
      const rel = await a.createFederationRelationship({ trustDomain: td, bundleEndpointUrl: "https://fed.example/bundle", profile: "https_web" });
      const results = await Promise.allSettled([
        a.deleteFederationRelationship(td),
        b.setBundle({ trustDomain: td, document: JSON.stringify({ keys: [] }), sequence: "1" }, { expectedSequence: null, relationshipUpdatedAt: rel.updatedAt }),
      ]);
      expect(results[0]?.status).toBe("fulfilled");
      expect(await b.getFederationRelationship(td)).toBeUndefined();
      expect(await b.getBundle(td), codes(results).join()).toBeUndefined();
    }
  });

  it("a join token used at its expiry instant through both servers", async () => {
    for (let round = 0; round < 10; round++) {
      const token = `tok${round}`;
      await a.createJoinToken({ token, expiresAt: new Date(T0.getTime() + 1000) });
      const results = await Promise.allSettled([a.consumeJoinToken(token, new Date(T0.getTime() + 999)), b.consumeJoinToken(token, new Date(T0.getTime() + 999)), b.consumeJoinToken(token, new Date(T0.getTime() + 1000))]);
      const c = codes(results);
      expect(c.filter((x) => x === "ok").length).toBeLessThanOrEqual(1);
    }
  });
});

describe.each(sqlEngines)("%s connection loss", (engine) => {
  const clock = new ManualClock(T0);
  it.runIf(engine === "mysql")("a migration left half-applied (MySQL DDL commits each statement) is refused saying how to recover", async () => {
    const { url, drop } = await createTestDatabase(engine);
    try {
      const c = await mysql.createConnection({ uri: url });
      await c.query("CREATE TABLE bundles (trust_domain varchar(255) PRIMARY KEY)");
      await c.end();
      const err = await openSqlDatastore(engine, url, clock).then(
        (ds) => ds.close(),
        (e: unknown) => e,
      );
      expect(isSigilError(err, "ERR_INTERNAL"), String(err)).toBe(true);
      expect((err as Error).message).toMatch(/migration 1 \(initial schema\) failed on mysql: .*bundles.* part of migration 1 may be applied: restore the backup/);
    } finally {
      await drop();
    }
  });

  it("a refused login or an unreachable host never puts the password in the error", async () => {
    const base = new URL(`${engine === "postgres" ? "postgres://nosuchuser" : "mysql://nosuchuser"}@127.0.0.1/test`);
    base.password = "S3cretPW";
    for (const port of [engine === "postgres" ? "5432" : "3306", "1"]) {
      base.port = port;
      const err = await openSqlDatastore(engine, base.toString(), clock).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isSigilError(err), String(err)).toBe(true);
      expect(JSON.stringify(err, Object.getOwnPropertyNames(err)) + String((err as Error).stack)).not.toContain("S3cretPW");
    }
  });

  it("a connection killed mid-transaction is ERR_UNAVAILABLE; the pool stays usable", async () => {
    const { url, drop } = await createTestDatabase(engine);
    const ds = await openSqlDatastore(engine, url, clock);
    const doc = JSON.stringify({ keys: [] });
    await ds.setBundle({ trustDomain: "example.org", document: doc, sequence: "1" });
    const pgc = engine === "postgres" ? new pg.Client({ connectionString: url }) : undefined;
    const my = engine === "mysql" ? await mysql.createConnection({ uri: url }) : undefined;
    const q = async (text: string): Promise<any[]> => (pgc ? (await pgc.query(text)).rows : ((await (my as mysql.Connection).query(text))[0] as any[]));
    try {
      await pgc?.connect();
      await q("BEGIN");
      await q("SELECT * FROM bundles WHERE trust_domain = 'example.org' FOR UPDATE");
      const pending = ds.setBundle({ trustDomain: "example.org", document: doc, sequence: "2" }).then(() => undefined, (e: unknown) => e);
      await new Promise((r) => setTimeout(r, 300));
      if (pgc) {
        const rows = await q("SELECT pid FROM pg_stat_activity WHERE application_name = 'sigil-server' AND wait_event_type = 'Lock'");
        expect(rows.length).toBe(1);
        await q(`SELECT pg_terminate_backend(${rows[0].pid})`);
      } else {
        const rows = await q("SELECT ID AS id FROM information_schema.PROCESSLIST WHERE INFO LIKE '%FOR UPDATE%' AND ID <> CONNECTION_ID()");
        expect(rows.length).toBe(1);
        await mysql.createConnection({ uri: url }).then(async (k) => { await k.query(`KILL ${rows[0].id}`); await k.end(); });
      }
      const err = await pending;
      expect(isSigilError(err, "ERR_UNAVAILABLE"), String(err)).toBe(true);
      await q("ROLLBACK");
      expect((await ds.setBundle({ trustDomain: "example.org", document: doc, sequence: "3" })).sequence).toBe("3");
      expect((await ds.getBundle("example.org"))?.sequence).toBe("3");
    } finally {
      await pgc?.end();
      await my?.end();
      await ds.close();
      await drop();
    }
  });
});
