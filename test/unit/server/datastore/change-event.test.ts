import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { parseSelector } from "../../../../common/selector.js";
import { type ChangeEvent, type Datastore, type EntryInput } from "../../../../server/datastore/index.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { datastoreEngines, closeTempDatastore, openTempDatastore, type TempDatastore } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");

const engines = await datastoreEngines();

let dir: string;
let clock: ManualClock;
let ds: Datastore;
let reopen: TempDatastore["reopen"];

describe.each(engines)("datastore on %s", (engine) => {
  beforeEach(async () => {
    ({ dir, clock, ds, reopen } = await openTempDatastore("events", T0, engine));
  });

  afterEach(() => closeTempDatastore(ds, dir));

  const entry = (name: string, uid = 1): EntryInput => ({
    spiffeId: `spiffe://example.org/${name}`,
    parentId: "spiffe://example.org/agent",
    selectors: [parseSelector(`unix:uid:${uid}`)],
  });
  const summary = (events: readonly ChangeEvent[]) => events.map((e) => `${e.kind}:${e.op}:${e.objectId}`);

  describe("change feed", () => {
    it("records every entry and agent write, in commit order, with increasing IDs", async () => {
      const e1 = await ds.createEntry(entry("a"));
      clock.advance(1000);
      await ds.createAgent({ spiffeId: "spiffe://example.org/agent", attestationType: "join_token", certSerial: "01", certNotAfter: T0 });
      await ds.updateEntry(e1.id, { hint: "x" });
      await ds.banAgent("spiffe://example.org/agent");
      await ds.deleteEntry(e1.id);
      await ds.deleteAgent("spiffe://example.org/agent");
      const events = await ds.listEvents(0, 100);
      expect(summary(events)).toEqual([
        `entry:create:${e1.id}`,
        "agent:create:spiffe://example.org/agent",
        `entry:update:${e1.id}`,
        "agent:update:spiffe://example.org/agent",
        `entry:delete:${e1.id}`,
        "agent:delete:spiffe://example.org/agent",
      ]);
      expect(events.map((e) => e.eventId)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(events[0]?.at).toEqual(T0);
      expect(events[1]?.at).toEqual(new Date(T0.getTime() + 1000));
      expect(await ds.lastEventId()).toBe(6);
    });

    it("non-feed writes (tokens, journal) and failed writes add no events; a bundle write adds one", async () => {
      await ds.createJoinToken({ token: "t", expiresAt: new Date(T0.getTime() + 1000) });
      await ds.consumeJoinToken("t");
      await ds.setBundle({ trustDomain: "example.org", document: '{"keys":[]}', sequence: "1" });
      await ds.createEntry(entry("a"));
      await expect(ds.createEntry(entry("a"))).rejects.toThrow(/already has/);
      expect(summary(await ds.listEvents(0, 10)).map((s) => s.split(":").slice(0, 2).join(":"))).toEqual(["bundle:create", "entry:create"]);
      expect(await ds.lastEventId()).toBe(2);
    });

    it("listEvents pages by event ID and limit", async () => {
      for (let i = 0; i < 5; i++) await ds.createEntry(entry(`e${i}`));
      expect((await ds.listEvents(0, 2)).map((e) => e.eventId)).toEqual([1, 2]);
      expect((await ds.listEvents(2, 2)).map((e) => e.eventId)).toEqual([3, 4]);
      expect((await ds.listEvents(4, 2)).map((e) => e.eventId)).toEqual([5]);
      expect(await ds.listEvents(5, 2)).toEqual([]);
      await expect(ds.listEvents(-1, 2)).rejects.toThrow(/afterEventId/);
      await expect(ds.listEvents(0, 0)).rejects.toThrow(/limit/);
    });

    it("pruneEvents deletes old events; IDs keep increasing afterwards", async () => {
      await ds.createEntry(entry("a", 1));
      clock.advance(60_000);
      await ds.createEntry(entry("b", 2));
      expect(await ds.pruneEvents(new Date(T0.getTime() + 30_000))).toBe(1);
      expect((await ds.listEvents(0, 10)).map((e) => e.eventId)).toEqual([2]);
      expect(await ds.pruneEvents(new Date(T0.getTime() + 120_000))).toBe(1);
      expect(await ds.lastEventId()).toBe(2);
      await ds.createEntry(entry("c", 3));
      expect((await ds.listEvents(0, 10)).map((e) => e.eventId)).toEqual([3]);
    });

    it("subscribers hear each committed event in order, after commit", async () => {
      const heard: ChangeEvent[] = [];
      const seenCounts: Array<Promise<number>> = [];
      const off = ds.subscribe((e) => {
        heard.push(e);
        // The write is already visible to readers when the listener runs.
        seenCounts.push(ds.countEntries());
      });
      const results = await ds.createEntries([entry("a", 1), entry("a", 1), entry("b", 2)]);
      expect(results.map((r) => r.ok)).toEqual([true, false, true]);
      expect(summary(heard)).toEqual(
        results.filter((r) => r.ok).map((r) => (r.ok ? `entry:create:${r.value.id}` : "")),
      );
      expect(await Promise.all(seenCounts)).toEqual([2, 2]);
      expect(heard).toEqual(await ds.listEvents(0, 10));
      await expect(ds.createEntry(entry("a", 1))).rejects.toThrow();
      expect(heard).toHaveLength(2);
      off();
      await ds.createEntry(entry("c", 3));
      expect(heard).toHaveLength(2);
    });

    it("a throwing listener neither fails the write nor starves other listeners", async () => {
      await ds.close();
      const errors: unknown[] = [];
      ds = await reopen({ onListenerError: (err) => errors.push(err) });
      const heard: number[] = [];
      ds.subscribe(() => {
        throw new Error("listener bug");
      });
      ds.subscribe((e) => heard.push(e.eventId));
      const e = await ds.createEntry(entry("a"));
      expect(await ds.getEntry(e.id)).toBeDefined();
      expect(heard).toEqual([1]);
      expect(errors).toHaveLength(1);
    });

    it("a follower on another instance sees the changes through listEvents", async () => {
      const follower = await reopen();
      try {
        const start = await follower.lastEventId();
        const heardByFollower: ChangeEvent[] = [];
        follower.subscribe((ev) => heardByFollower.push(ev));
        const e = await ds.createEntry(entry("a"));
        expect(heardByFollower).toEqual([]);
        expect(summary(await follower.listEvents(start, 10))).toEqual([`entry:create:${e.id}`]);
        expect(await follower.getEntry(e.id)).toEqual(e);
      } finally {
        await follower.close();
      }
    });

    it("an index built from lastEventId + listEntries + replay converges on the store", async () => {
      const a = await ds.createEntry(entry("a", 1));
      const mark = await ds.lastEventId();
      const index = new Map((await ds.listEntries()).items.map((e) => [e.id, e.revision]));
      await ds.updateEntry(a.id, { hint: "x" });
      const b = await ds.createEntry(entry("b", 2));
      await ds.deleteEntry(b.id);
      for (const ev of await ds.listEvents(mark, 100)) {
        const cur = await ds.getEntry(ev.objectId);
        if (cur === undefined) index.delete(ev.objectId);
        else index.set(cur.id, cur.revision);
      }
      expect([...index]).toEqual([[a.id, 1]]);
      expect(isSigilError(await ds.listEvents(-5, 1).catch((e: unknown) => e), "ERR_INVALID_ARGUMENT")).toBe(true);
    });
  });
});
