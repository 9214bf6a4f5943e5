import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { parseSelector } from "../../../../common/selector.js";
import type { ChangeFeedListener } from "../../../../server/datastore/change-feed.js";
import type { Datastore, EntryInput } from "../../../../server/datastore/index.js";
import { EntryIndexFeed } from "../../../../server/registration/entry-index-feed.js";
import { closeTempDatastore, openTempDatastore } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const log = createLogger({ level: "error", destination: { write: () => undefined } });
const entry = (name: string, uid: number): EntryInput => ({ spiffeId: `spiffe://example.org/${name}`, parentId: "spiffe://example.org/agent", selectors: [parseSelector(`unix:uid:${uid}`)] });

describe("EntryIndexFeed", () => {
  let dir: string;
  let ds: Datastore;
  let listener: ChangeFeedListener | undefined;
  let feed: EntryIndexFeed;

  beforeEach(async () => {
    ({ dir, ds } = await openTempDatastore("index-feed", T0));
    listener = undefined;
    feed = new EntryIndexFeed({
      datastore: { datastore: ds },
      feed: {
        subscribe: (l) => {
          listener = l;
          return () => (listener = undefined);
        },
      },
      serverId: "spiffe://example.org/spire/server",
      log,
    });
  });
  afterEach(() => closeTempDatastore(ds, dir));

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
});
