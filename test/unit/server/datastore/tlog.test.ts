import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { systemClock } from "../../../../common/clock.js";
import { createSqliteDatastore, type Datastore, type IssuanceInput } from "../../../../server/datastore/index.js";
import { closeTempDatastore, datastoreEngines, openTempDatastore, rejection } from "../../../support/datastore.js";
import { testTempDir } from "../../../support/temp-dir.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const engines = await datastoreEngines();

const rec = (serial: string, spiffeId = "spiffe://example.org/w"): IssuanceInput => ({
  serial, kind: "x509-svid", spiffeId, entryId: "e1", agentId: null, caKeyId: "k",
  notBefore: T0, notAfter: new Date(T0.getTime() + 60_000), issuedAt: T0, selectors: ["unix:uid:1"], requestedBy: "admin:local",
});
const entry = (s: string) => ({ lookupKey: `serial:${s}`, entry: Buffer.from(`{"serial":"${s}"}`) });

describe.each(engines)("transparency log storage on %s", (engine) => {
  let ds: Datastore;
  let dir: string;
  beforeEach(async () => {
    ({ ds, dir } = await openTempDatastore("tlog", T0, engine));
  });
  afterEach(() => closeTempDatastore(ds, dir));

  it("appends entries with the issuance records at contiguous indices from 0", async () => {
    expect(await ds.tlogSize()).toBe(0);
    // Each call resolves to the index its first entry was given.
    expect(await ds.recordIssuances([rec("a1"), rec("a2")], [entry("a1"), entry("a2")])).toBe(0);
    expect(await ds.recordIssuances([], [entry("a3")])).toBe(2);
    expect(await ds.recordIssuances([rec("a0")])).toBeUndefined();
    expect(await ds.recordIssuances([rec("a4")], [entry("a4")])).toBe(3);
    expect(await ds.tlogSize()).toBe(4);
    expect((await ds.readTlogEntries(0, 10)).map((b) => Buffer.from(b).toString())).toEqual(["a1", "a2", "a3", "a4"].map((s) => `{"serial":"${s}"}`));
    expect((await ds.readTlogEntries(1, 3)).length).toBe(2);
    const found = await ds.findTlogEntry("serial:a3");
    expect(found?.index).toBe(2);
    expect(Buffer.from(found?.entry ?? []).toString()).toBe('{"serial":"a3"}');
    expect(await ds.findTlogEntry("serial:none")).toBeUndefined();
  });

  it("concurrent appends never share or skip an index", async () => {
    const firsts = await Promise.all(Array.from({ length: 20 }, (_, i) => ds.recordIssuances([rec(`c${i}`)], [entry(`c${i}`), entry(`c${i}x`)])));
    expect(await ds.tlogSize()).toBe(40);
    const all = (await ds.readTlogEntries(0, 40)).map((b) => Buffer.from(b).toString());
    expect(new Set(all).size).toBe(40);
    for (let i = 0; i < 20; i++) expect(all.indexOf(`{"serial":"c${i}x"}`)).toBe(all.indexOf(`{"serial":"c${i}"}`) + 1);
    // The index each call resolved to is where its entries are.
    for (let i = 0; i < 20; i++) expect(all[firsts[i] ?? -1]).toBe(`{"serial":"c${i}"}`);
  });

  it("an invalid record refuses the whole batch: no log entry is written", async () => {
    await rejection(ds.recordIssuances([rec("b1"), rec("b2", "not-an-id")], [entry("b1"), entry("b2")]), "ERR_INVALID_ARGUMENT");
    await rejection(ds.recordIssuances([rec("b3")], [{ lookupKey: "serial:b3", entry: new Uint8Array(0) }]), "ERR_INVALID_ARGUMENT", "datastore: logEntries[0] entry");
    await rejection(ds.recordIssuances([rec("b4")], [{ lookupKey: "has space", entry: Buffer.from("x") }]), "ERR_INVALID_ARGUMENT", "datastore: logEntries[0] lookupKey");
    expect(await ds.tlogSize()).toBe(0);
    expect((await ds.listIssuances({})).items).toEqual([]);
    await rejection(ds.readTlogEntries(5, 2), "ERR_INVALID_ARGUMENT");
  });

  it("keeps each server's latest checkpoint and every log key", async () => {
    const root = Buffer.alloc(32, 7);
    expect(await ds.latestTlogCheckpoint("s1")).toBeUndefined();
    await ds.putTlogCheckpoint({ serverId: "s1", treeSize: 3, rootHash: root, note: "n3", createdAt: T0 });
    await ds.putTlogCheckpoint({ serverId: "s1", treeSize: 5, rootHash: root, note: "n5", createdAt: T0 });
    await ds.putTlogCheckpoint({ serverId: "s2", treeSize: 9, rootHash: root, note: "n9", createdAt: T0 });
    await ds.putTlogCheckpoint({ serverId: "s1", treeSize: 5, rootHash: root, note: "n5b", createdAt: T0 });
    const cp = await ds.latestTlogCheckpoint("s1");
    expect([cp?.treeSize, cp?.note, Buffer.from(cp?.rootHash ?? []).equals(root)]).toEqual([5, "n5b", true]);
    await rejection(ds.putTlogCheckpoint({ serverId: "s1", treeSize: 6, rootHash: Buffer.alloc(31), note: "x", createdAt: T0 }), "ERR_INVALID_ARGUMENT", "datastore: log checkpoint rootHash");

    await ds.putTlogKey({ serverId: "s1", keyId: "tlog-1", vkey: "v1", createdAt: T0, retiredAt: null });
    await ds.putTlogKey({ serverId: "s1", keyId: "tlog-2", vkey: "v2", createdAt: new Date(T0.getTime() + 1000), retiredAt: null });
    await ds.putTlogKey({ serverId: "s1", keyId: "tlog-1", vkey: "v1", createdAt: T0, retiredAt: new Date(T0.getTime() + 1000) });
    const keys = await ds.listTlogKeys();
    expect(keys.map((k) => [k.keyId, k.vkey, k.retiredAt?.getTime() ?? null])).toEqual([["tlog-1", "v1", T0.getTime() + 1000], ["tlog-2", "v2", null]]);
  });

  it("a witness's latest checkpoint per origin advances only from the state it was checked against", async () => {
    const r1 = Buffer.alloc(32, 1);
    const r2 = Buffer.alloc(32, 2);
    const at = (treeSize: number, rootHash: Buffer, origin = "a.example/log") => ({ origin, treeSize, rootHash, note: `n${treeSize}`, updatedAt: T0 });
    expect(await ds.latestWitnessCheckpoint("a.example/log")).toBeUndefined();
    expect(await ds.advanceWitnessCheckpoint(at(3, r1), undefined)).toBe(true);
    // A second "first" checkpoint, or one advanced from a state that is no longer stored, is refused.
    expect(await ds.advanceWitnessCheckpoint(at(4, r2), undefined)).toBe(false);
    expect(await ds.advanceWitnessCheckpoint(at(5, r2), { treeSize: 3, rootHash: r2 })).toBe(false);
    expect(await ds.advanceWitnessCheckpoint(at(5, r2), { treeSize: 2, rootHash: r1 })).toBe(false);
    expect(await ds.advanceWitnessCheckpoint(at(5, r2), { treeSize: 3, rootHash: r1 })).toBe(true);
    expect(await ds.advanceWitnessCheckpoint(at(9, r1, "b.example/log"), undefined)).toBe(true);
    const cur = await ds.latestWitnessCheckpoint("a.example/log");
    expect([cur?.treeSize, cur?.note, Buffer.from(cur?.rootHash ?? []).equals(r2)]).toEqual([5, "n5", true]);
    // Concurrent advances from one state: exactly one wins.
    const won = await Promise.all([6, 7, 8].map((n) => ds.advanceWitnessCheckpoint(at(n, r1), { treeSize: 5, rootHash: r2 })));
    expect(won.filter(Boolean).length).toBe(1);
    await rejection(ds.advanceWitnessCheckpoint(at(1, Buffer.alloc(31)), undefined), "ERR_INVALID_ARGUMENT", "datastore: witness checkpoint rootHash");
    await rejection(ds.latestWitnessCheckpoint(""), "ERR_INVALID_ARGUMENT", "datastore: witness checkpoint origin");
  });
});

describe("transparency log written from the SQLite writer thread", () => {
  it("appends entries with their records in one transaction", async () => {
    const ds = await createSqliteDatastore({ path: path.join(testTempDir("sigil-tlog-"), "d.sqlite3"), clock: systemClock, issuanceWorker: true });
    try {
      const firsts = await Promise.all([ds.recordIssuances([rec("e1")], [entry("e1")]), ds.recordIssuances([], [entry("e2"), entry("e2x")]), ds.recordIssuances([rec("e3"), rec("e4", "no")], [entry("e3")]).catch(() => "refused")]);
      expect(await ds.tlogSize()).toBe(3);
      // Batches that share one transaction still resolve to their own first index.
      expect(firsts).toEqual([0, 1, "refused"]);
      expect((await ds.listIssuances({})).items.map((i) => i.serial)).toEqual(["e1"]);
      expect(await ds.recordIssuances([rec("e5")], [entry("e5")])).toBe(3);
      // Checkpoints go through the writer thread too (with concurrent appends), readable once stored.
      const root = Buffer.alloc(32, 9);
      await Promise.all([ds.putTlogCheckpoint({ serverId: "s1", treeSize: 4, rootHash: root, note: "n4", createdAt: T0 }), ds.recordIssuances([rec("e6")], [entry("e6")])]);
      const cp = await ds.latestTlogCheckpoint("s1");
      expect([cp?.treeSize, cp?.note, Buffer.from(cp?.rootHash ?? []).equals(root), cp?.createdAt.getTime()]).toEqual([4, "n4", true, T0.getTime()]);
      await rejection(ds.putTlogCheckpoint({ serverId: "s1", treeSize: 5, rootHash: Buffer.alloc(31), note: "x", createdAt: T0 }), "ERR_INVALID_ARGUMENT", "datastore: log checkpoint rootHash");
      expect((await ds.readTlogEntries(0, 10)).map((b) => Buffer.from(b).toString())).toEqual(["e1", "e2", "e2x", "e5", "e6"].map((s) => `{"serial":"${s}"}`));
    } finally {
      await ds.close();
    }
  });

  it("stores entries that are views of shared buffers (adjacent, with gaps, out of order) as they are", async () => {
    const ds = await createSqliteDatastore({ path: path.join(testTempDir("sigil-tlog-"), "d.sqlite3"), clock: systemClock, issuanceWorker: true });
    try {
      // The writer copies runs of adjacent views at once: runs must break at gaps, other buffers and going back.
      const shared = Buffer.from('{"serial":"v1"}{"serial":"v2"}#{"serial":"v3"}');
      const [v1, v2, v3] = [shared.subarray(0, 15), shared.subarray(15, 30), shared.subarray(31)];
      const own = Buffer.from('{"serial":"o1"}');
      const log = [v1, v2, own, v3, v2, v3].map((entry, i) => ({ lookupKey: `serial:x${i}`, entry }));
      expect(await ds.recordIssuances([], log)).toBe(0);
      expect((await ds.readTlogEntries(0, 10)).map((b) => Buffer.from(b).toString())).toEqual(["v1", "v2", "o1", "v3", "v2", "v3"].map((s) => `{"serial":"${s}"}`));
    } finally {
      await ds.close();
    }
  });
});
