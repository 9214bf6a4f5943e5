import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { systemClock } from "../../../../common/clock.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { createSqliteDatastore } from "../../../../server/datastore/index.js";
import { testTempDir } from "../../../support/temp-dir.js";

const rec = (serial: string, spiffeId = "spiffe://example.org/w") => ({
  serial, kind: "x509-svid" as const, spiffeId, entryId: "e1", agentId: null, caKeyId: "k",
  notBefore: new Date(), notAfter: new Date(Date.now() + 60_000), issuedAt: new Date(), selectors: ["unix:uid:1"], requestedBy: "admin:local",
});

describe("issuance log written from a worker thread", () => {
  it("commits a batch before resolving, readable from the main connection", async () => {
    const ds = await createSqliteDatastore({ path: path.join(testTempDir("sigil-iw-"), "d.sqlite3"), clock: systemClock, issuanceWorker: true });
    await ds.recordIssuances([rec("a1"), rec("a2")]);
    expect((await ds.listIssuances({})).items.map((i) => i.serial).sort()).toEqual(["a1", "a2"]);
    await ds.close();
  });

  it("refuses a whole batch with one invalid record, naming it, and writes nothing", async () => {
    const ds = await createSqliteDatastore({ path: path.join(testTempDir("sigil-iw-"), "d.sqlite3"), clock: systemClock, issuanceWorker: true });
    let caught: unknown;
    try { await ds.recordIssuances([rec("b1"), rec("b2", "not-a-spiffe-id")]); } catch (e) { caught = e; }
    expect(isSigilError(caught, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect((caught as Error).message).toMatch(/issuance\[1\]/);
    expect((await ds.listIssuances({})).items).toEqual([]);
    await ds.close();
  });

  it("keeps recording after the contexts it remembers were pruned by the main connection", async () => {
    const ds = await createSqliteDatastore({ path: path.join(testTempDir("sigil-iw-"), "d.sqlite3"), clock: systemClock, issuanceWorker: true });
    await ds.recordIssuances([rec("c1"), rec("c2")]);
    // Everything expires: the rows and then their (now unused) context are deleted.
    expect(await ds.pruneIssuances(new Date(Date.now() + 3_600_000))).toBe(2);
    // The worker still remembers the context's old ID; the insert must not dangle.
    await ds.recordIssuances([rec("c3")]);
    const items = (await ds.listIssuances({})).items;
    expect(items.map((i) => [i.serial, i.spiffeId, i.entryId, i.selectors])).toEqual([["c3", "spiffe://example.org/w", "e1", ["unix:uid:1"]]]);
    await ds.close();
  });

  it("a context pruned and then re-created never takes another context's ID", async () => {
    const ds = await createSqliteDatastore({ path: path.join(testTempDir("sigil-iw-"), "d.sqlite3"), clock: systemClock, issuanceWorker: true });
    const long = { ...rec("c1", "spiffe://example.org/keep"), notAfter: new Date(Date.now() + 10 * 3_600_000) };
    await ds.recordIssuances([long, rec("a1", "spiffe://example.org/y")]);
    expect(await ds.pruneIssuances(new Date(Date.now() + 3_600_000))).toBe(1);
    await ds.recordIssuances([rec("b1", "spiffe://example.org/z")]);
    await ds.recordIssuances([rec("a2", "spiffe://example.org/y")]);
    const bySerial = Object.fromEntries((await ds.listIssuances({})).items.map((i) => [i.serial, i.spiffeId]));
    expect(bySerial).toEqual({ c1: "spiffe://example.org/keep", b1: "spiffe://example.org/z", a2: "spiffe://example.org/y" });
    await ds.close();
  });

  it("sends each context to the worker once and stores it once", async () => {
    const file = path.join(testTempDir("sigil-iw-"), "d.sqlite3");
    const ds = await createSqliteDatastore({ path: file, clock: systemClock, issuanceWorker: true });
    for (let b = 0; b < 3; b++) await ds.recordIssuances(Array.from({ length: 50 }, (_, i) => rec(`${b}f${i}`, `spiffe://example.org/w${i % 5}`)));
    const items = (await ds.listIssuances({})).items;
    expect(items.length).toBe(150);
    expect(new Set(items.map((i) => i.spiffeId)).size).toBe(5);
    expect(items.find((i) => i.serial === "2f7")?.spiffeId).toBe("spiffe://example.org/w2");
    await ds.close();
    const raw = new Database(file, { readonly: true });
    try {
      expect((raw.prepare("SELECT COUNT(*) AS n FROM issuance_contexts").get() as { n: number }).n).toBe(5);
    } finally {
      raw.close();
    }
  });
});
