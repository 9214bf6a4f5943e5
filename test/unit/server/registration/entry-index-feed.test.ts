import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { parseSelector } from "../../../../common/selector.js";
import { ChangeNotifier } from "../../../../server/api/change-notifier.js";
import type { ChangeFeedListener } from "../../../../server/datastore/change-feed.js";
import type { AttestedAgent, Datastore, EntryInput } from "../../../../server/datastore/index.js";
import { EntryIndexFeed, type EntryIndexFeedDeps } from "../../../../server/registration/entry-index-feed.js";
import { closeTempDatastore, openTempDatastore } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const log = createLogger({ level: "error", destination: { write: () => undefined } });
const AGENT = "spiffe://example.org/agent";
const OTHER_AGENT = "spiffe://example.org/other-agent";
const entry = (name: string, uid: number, parentId = AGENT): EntryInput => ({ spiffeId: `spiffe://example.org/${name}`, parentId, selectors: [parseSelector(`unix:uid:${uid}`)] });

describe("EntryIndexFeed", () => {
  let dir: string;
  let ds: Datastore;
  let listener: ChangeFeedListener | undefined;
  let feed: EntryIndexFeed;

  const makeFeed = (extra: Partial<Pick<EntryIndexFeedDeps, "reconcileIntervalMs" | "metrics">> = {}): EntryIndexFeed =>
    new EntryIndexFeed({
      datastore: { datastore: ds },
      feed: {
        subscribe: (l) => {
          listener = l;
          return () => (listener = undefined);
        },
      },
      serverId: "spiffe://example.org/spire/server",
      log,
      ...extra,
    });

  beforeEach(async () => {
    ({ dir, ds } = await openTempDatastore("index-feed", T0));
    listener = undefined;
    feed = makeFeed();
  });
  afterEach(async () => {
    feed.stop();
    await closeTempDatastore(ds, dir);
  });

  const ev = (objectId: string, op: "create" | "update" | "delete", eventId = 1) => ({ eventId, kind: "entry" as const, objectId, op, at: T0 });

  it("subscribes before loading; an event re-reads the entry, a delete event of a stored entry does not remove it", async () => {
    const kept = await ds.createEntry(entry("kept", 1));
    await feed.start();
    expect(listener).toBeDefined();
    expect(feed.index.get(kept.id)?.record.spiffeId).toBe("spiffe://example.org/kept");
    const later = await ds.createEntry(entry("later", 2));
    listener?.onEvent(ev(later.id, "create"));
    await vi.waitFor(() => expect(feed.index.get(later.id)).toBeDefined());
    // An out-of-order delete event (another server's, older than the create): the stored row wins.
    listener?.onEvent(ev(kept.id, "delete"));
    await new Promise((r) => setTimeout(r, 20));
    expect(feed.index.get(kept.id)).toBeDefined();
    await ds.deleteEntry(later.id);
    listener?.onEvent(ev(later.id, "delete"));
    await vi.waitFor(() => expect(feed.index.get(later.id)).toBeUndefined());
    feed.stop();
    expect(listener).toBeUndefined();
  });

  it("a throwing invalidation listener is logged: the event's change and a reconcile's whole batch are still applied", async () => {
    const lines: string[] = [];
    feed = new EntryIndexFeed({
      datastore: { datastore: ds },
      feed: { subscribe: (l) => ((listener = l), () => (listener = undefined)) },
      serverId: "spiffe://example.org/spire/server",
      log: createLogger({ level: "error", destination: { write: (line: string) => void lines.push(line) } }),
    });
    await feed.start();
    feed.index.onInvalidate(() => {
      throw new Error("listener boom");
    });
    feed.index.authorizedEntries(AGENT, []);
    const made = await ds.createEntry(entry("made", 1));
    listener?.onEvent(ev(made.id, "create"));
    await feed.settled();
    expect(feed.index.authorizedEntries(AGENT, []).map((e) => e.id)).toEqual([made.id]);
    // Three entries whose events were missed: the reconcile applies all three although each upsert's listener throws.
    const missed = [await ds.createEntry(entry("m1", 2)), await ds.createEntry(entry("m2", 3)), await ds.createEntry(entry("m3", 4))];
    await feed.reconcile("periodic");
    expect(feed.index.authorizedEntries(AGENT, []).map((e) => e.id).sort()).toEqual([made.id, ...missed.map((e) => e.id)].sort());
    // Named (and thrown) once for the event and once for the batch's first upsert: the agent is not cached again until asked.
    expect(lines.filter((l) => l.includes("an invalidation listener threw") && l.includes("listener boom"))).toHaveLength(2);
  });

  it("settled() is undefined when no read is in flight, and resolves once every delivered event is applied", async () => {
    const gone = await ds.createEntry(entry("gone", 1));
    await feed.start();
    expect(feed.settled()).toBeUndefined();
    const made = await ds.createEntry(entry("made", 2));
    await ds.deleteEntry(gone.id);
    listener?.onEvent(ev(made.id, "create", 2));
    listener?.onEvent(ev(gone.id, "delete", 3));
    const settled = feed.settled();
    expect(settled).toBeDefined();
    await settled;
    // No polling: what was delivered before the call is in the index when it resolves.
    expect(feed.index.get(made.id)).toBeDefined();
    expect(feed.index.get(gone.id)).toBeUndefined();
    expect(feed.settled()).toBeUndefined();
    feed.stop();
  });

  it("a resync reloads: entries changed or removed without an event are brought up to date", async () => {
    const gone = await ds.createEntry(entry("gone", 1));
    const changed = await ds.createEntry(entry("changed", 2));
    await feed.start();
    await ds.deleteEntry(gone.id);
    await ds.updateEntry(changed.id, { hint: "new" });
    const added = await ds.createEntry(entry("added", 3));
    listener?.onResync?.();
    await vi.waitFor(() => {
      expect(feed.index.get(gone.id)).toBeUndefined();
      expect(feed.index.get(changed.id)?.record.hint).toBe("new");
      expect(feed.index.get(added.id)).toBeDefined();
    });
    expect(feed.index.size).toBe(2);
  });

  it("an entry whose read failed (the database restarting) is read again until it succeeds; so is a failed reload", async () => {
    await feed.start();
    const added = await ds.createEntry(entry("added", 1));
    const getEntry = ds.getEntry.bind(ds);
    const listEntries = ds.listEntries.bind(ds);
    let down = 2;
    const unavailable = () => Promise.reject(new Error("connection terminated"));
    ds.getEntry = (id) => (down-- > 0 ? unavailable() : getEntry(id));
    listener?.onEvent(ev(added.id, "create"));
    await vi.waitFor(() => expect(feed.index.get(added.id)).toBeDefined(), { timeout: 5_000 });
    expect(down).toBeLessThan(0);
    const later = await ds.createEntry(entry("later", 2));
    let listDown = 1;
    ds.listEntries = (q) => (listDown-- > 0 ? unavailable() : listEntries(q));
    listener?.onResync?.();
    await vi.waitFor(() => expect(feed.index.get(later.id)).toBeDefined(), { timeout: 5_000 });
    feed.stop();
  });

  /** A change notifier over the feed's index, with a stream for each of two agents; `sent` collects each agent's notices. */
  function watchBoth(): { notifier: ChangeNotifier; sent: Record<string, string[]> } {
    const notifier = new ChangeNotifier({ index: feed.index, bundle: () => "same bundle", now: () => T0, log, tickMs: 3_600_000 });
    const sent: Record<string, string[]> = { [AGENT]: [], [OTHER_AGENT]: [] };
    for (const id of [AGENT, OTHER_AGENT]) {
      notifier.watch(id, { selectors: [] } as unknown as AttestedAgent, new Date(T0.getTime() + 3600_000), { send: (d) => sent[id]?.push(d), end: () => undefined });
    }
    return { notifier, sent };
  }

  it("onMissed: entries changed, added and removed without an event are reconciled, and only the agent they concern gets a notice", async () => {
    const changed = await ds.createEntry(entry("changed", 1));
    const gone = await ds.createEntry(entry("gone", 2));
    const kept = await ds.createEntry(entry("kept", 3));
    const others = await ds.createEntry(entry("others", 4, OTHER_AGENT));
    const metrics = new Metrics({ defaultMetrics: false });
    feed = makeFeed({ metrics });
    await feed.start();
    const { notifier, sent } = watchBoth();
    expect(notifier.check()).toBe(0);
    const keptBefore = feed.index.get(kept.id);
    const othersBefore = feed.index.get(others.id);
    // Written through the datastore, but their events never reach the index (the feed gave their IDs up as gaps).
    await ds.updateEntry(changed.id, { hint: "new" });
    await ds.deleteEntry(gone.id);
    const added = await ds.createEntry(entry("added", 5));
    // Calls are answered from the index as it is until the reconcile's read is done.
    const listEntries = ds.listEntries.bind(ds);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    ds.listEntries = async (q) => {
      const page = await listEntries(q);
      await gate;
      return page;
    };
    const generation = feed.index.generation;
    listener?.onMissed?.("gap");
    await new Promise((r) => setTimeout(r, 20));
    expect(feed.index.get(changed.id)?.record.hint).toBe("");
    expect(feed.index.get(gone.id)).toBeDefined();
    expect(feed.index.generation).toBe(generation);
    expect(notifier.check()).toBe(0);
    release();
    await vi.waitFor(() => expect(feed.index.get(changed.id)?.record.hint).toBe("new"));
    expect(feed.index.get(gone.id)).toBeUndefined();
    expect(feed.index.get(added.id)).toBeDefined();
    // Only what changed was replaced: the unchanged entries are the same objects, the generation moved once per change.
    expect(feed.index.get(kept.id)).toBe(keptBefore);
    expect(feed.index.get(others.id)).toBe(othersBefore);
    expect(feed.index.generation).toBe(generation + 3);
    expect(notifier.check()).toBe(1);
    expect(sent[AGENT]).toHaveLength(2);
    expect(sent[OTHER_AGENT]).toHaveLength(1);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/sigil_entry_index_reconciles_total\{cause="gap"\} 1/);
    expect(text).toMatch(/sigil_entry_index_reconciled_entries_total 3/);
    notifier.close();
  });

  it("a reconcile finding nothing changed moves nothing; one asked for during another runs after it and sees what the first read missed", async () => {
    const a = await ds.createEntry(entry("a", 1));
    await feed.start();
    const generation = feed.index.generation;
    await feed.reconcile("start");
    expect(feed.index.generation).toBe(generation);
    const listEntries = ds.listEntries.bind(ds);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let reads = 0;
    ds.listEntries = async (q) => {
      const page = await listEntries(q);
      if (reads++ === 0) await gate;
      return page;
    };
    const first = feed.reconcile("gap");
    await vi.waitFor(() => expect(reads).toBe(1));
    // Committed after the first reconcile read the table: only a second one can see it.
    await ds.updateEntry(a.id, { hint: "late" });
    listener?.onMissed?.("gap");
    release();
    await first;
    await vi.waitFor(() => expect(feed.index.get(a.id)?.record.hint).toBe("late"));
    expect(reads).toBe(2);
  });

  it("an event during a reconcile wins over the reconcile's older read of the entry", async () => {
    const a = await ds.createEntry(entry("a", 1));
    await feed.start();
    const listEntries = ds.listEntries.bind(ds);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    ds.listEntries = async (q) => {
      const page = await listEntries(q);
      await gate;
      return page;
    };
    const run = feed.reconcile("gap");
    await new Promise((r) => setTimeout(r, 10));
    // Deleted after the reconcile read it; the delete's event arrives before the reconcile applies its diff.
    await ds.deleteEntry(a.id);
    listener?.onEvent(ev(a.id, "delete", 2));
    await feed.settled();
    expect(feed.index.get(a.id)).toBeUndefined();
    release();
    await run;
    expect(feed.index.get(a.id)).toBeUndefined();
  });

  it("reconcileIntervalMs: a change whose event was missed without the feed knowing is reconciled by the periodic safety reconcile", async () => {
    const a = await ds.createEntry(entry("a", 1));
    const metrics = new Metrics({ defaultMetrics: false });
    feed = makeFeed({ reconcileIntervalMs: 50, metrics });
    await feed.start();
    await ds.updateEntry(a.id, { hint: "unannounced" });
    await vi.waitFor(() => expect(feed.index.get(a.id)?.record.hint).toBe("unannounced"));
    expect(await metrics.registry.metrics()).toMatch(/sigil_entry_index_reconciles_total\{cause="periodic"\} [1-9]/);
    expect(() => makeFeed({ reconcileIntervalMs: -1 })).toThrow(/reconcileIntervalMs/);
  });
});
