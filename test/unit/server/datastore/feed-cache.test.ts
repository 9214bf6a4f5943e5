/**
 * The change-fed record cache: served from memory once read, dropped at the
 * event (no call after it sees the old copy, and a read that was in flight
 * is not kept), reloaded after the feed fell behind or may have missed an
 * event, never serving a copy older than its age bound, and reading through
 * to the datastore whenever it does not know.
 */
import { describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import type { ChangeEvent, ChangeKind } from "../../../../server/datastore/change-event.js";
import type { ChangeFeedListener, MissedCause } from "../../../../server/datastore/change-feed.js";
import { FeedCache } from "../../../../server/datastore/feed-cache.js";

const log = createLogger({ level: "error", destination: { write: () => undefined } });

/** A feed the test drives by hand. */
class FakeFeed {
  readonly listeners = new Set<ChangeFeedListener>();
  #id = 0;
  subscribe(l: ChangeFeedListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
  emit(kind: ChangeKind, objectId: string): void {
    const e: ChangeEvent = { eventId: ++this.#id, kind, objectId, op: "update", at: new Date() };
    for (const l of this.listeners) l.onEvent(e);
  }
  resync(): void {
    for (const l of this.listeners) l.onResync?.();
  }
  missed(cause: MissedCause): void {
    for (const l of this.listeners) l.onMissed?.(cause);
  }
}

/** The age bound of the caches under test (ms). */
const MAX_AGE_MS = 300_000;

/** A store whose reads are counted and can be held back or made to fail. */
class FakeStore {
  readonly rows = new Map<string, string>();
  reads = 0;
  readAlls = 0;
  fail = false;
  #held: Array<() => void> | undefined;
  hold(): void {
    this.#held = [];
  }
  release(): void {
    const held = this.#held ?? [];
    this.#held = undefined;
    for (const r of held) r();
  }
  async #gate(): Promise<void> {
    if (this.#held !== undefined) await new Promise<void>((r) => this.#held?.push(r));
    if (this.fail) throw new Error("database unreachable");
  }
  read = async (id: string): Promise<string | undefined> => {
    this.reads++;
    const value = this.rows.get(id);
    await this.#gate();
    return value;
  };
  readAll = async (): Promise<Array<[string, string]>> => {
    this.readAlls++;
    const all = [...this.rows];
    await this.#gate();
    return all;
  };
}

const flush = (): Promise<void> => new Promise((r) => setImmediate(r));

function lazyCache(feed: FakeFeed, store: FakeStore, clock = new ManualClock()): FeedCache<string> {
  return new FeedCache<string>({ name: "agent-cache", kind: "agent", feed, read: store.read, maxAgeMs: MAX_AGE_MS, clock, log });
}

function fullCache(feed: FakeFeed, store: FakeStore, clock = new ManualClock()): FeedCache<string> {
  return new FeedCache<string>({ name: "bundle-cache", kind: "bundle", feed, read: store.read, readAll: store.readAll, maxAgeMs: MAX_AGE_MS, clock, log });
}

describe("FeedCache read on first use (agent records)", () => {
  it("reads a record once, then serves it from memory until an event of its kind and ID", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("a", "a1").set("b", "b1");
    const cache = lazyCache(feed, store);
    await cache.start();
    expect(await cache.get("a")).toBe("a1");
    for (let i = 0; i < 100; i++) expect(await cache.get("a")).toBe("a1");
    expect(store.reads).toBe(1);
    store.rows.set("a", "a2");
    feed.emit("bundle", "a");
    feed.emit("agent", "b");
    expect(await cache.get("a")).toBe("a1");
    feed.emit("agent", "a");
    expect(await cache.get("a")).toBe("a2");
    expect(store.reads).toBe(2);
    expect(cache.stats()).toMatchObject({ misses: 2, size: 1 });
    cache.stop();
  });

  it("a record not stored is read on every call (an absence is not remembered)", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    const cache = lazyCache(feed, store);
    await cache.start();
    expect(await cache.get("gone")).toBeUndefined();
    expect(await cache.get("gone")).toBeUndefined();
    expect(store.reads).toBe(2);
    store.rows.set("gone", "back");
    expect(await cache.get("gone")).toBe("back");
    cache.stop();
  });

  it("a read in flight when the event arrives answers its caller but is not kept; the next call reads again", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("a", "before-ban");
    const cache = lazyCache(feed, store);
    await cache.start();
    store.hold();
    const inFlight = cache.get("a");
    store.rows.set("a", "banned");
    feed.emit("agent", "a");
    // A call after the event does not join the older read.
    const after = cache.get("a");
    store.release();
    expect(await inFlight).toBe("before-ban");
    expect(await after).toBe("banned");
    expect(await cache.get("a")).toBe("banned");
    expect(store.reads).toBe(2);
    cache.stop();
  });

  it("reload reads the stored record now and keeps it", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("a", "serial-1");
    const cache = lazyCache(feed, store);
    await cache.start();
    await cache.get("a");
    store.rows.set("a", "serial-2"); // written by another server; its event not delivered yet
    expect(await cache.get("a")).toBe("serial-1");
    expect(await cache.reload("a")).toBe("serial-2");
    expect(await cache.get("a")).toBe("serial-2");
    expect(store.reads).toBe(2);
    cache.stop();
  });

  it("after the feed fell behind every copy is dropped and read again on use", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("a", "a1");
    const cache = lazyCache(feed, store);
    await cache.start();
    await cache.get("a");
    store.rows.set("a", "a2"); // its event was pruned before this server read it
    feed.resync();
    expect(await cache.get("a")).toBe("a2");
    cache.stop();
    expect(feed.listeners.size).toBe(0);
  });

  it.each(["gap", "start"] as const)("when the feed may have missed an event (%s) every copy is dropped and read again on use", async (cause) => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("a", "a1").set("b", "b1");
    const cache = lazyCache(feed, store);
    await cache.start();
    await cache.get("a");
    await cache.get("b");
    store.rows.set("a", "banned"); // written by another server; its event ID was given up before it committed
    expect(await cache.get("a")).toBe("a1");
    feed.missed(cause);
    expect(cache.stats().size).toBe(0);
    expect(await cache.get("a")).toBe("banned");
    expect(await cache.get("b")).toBe("b1");
    expect(store.reads).toBe(4);
    cache.stop();
  });

  it("a copy older than the age bound is read again on use, then served from memory again", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    const clock = new ManualClock();
    store.rows.set("a", "a1");
    const cache = lazyCache(feed, store, clock);
    await cache.start();
    expect(await cache.get("a")).toBe("a1");
    store.rows.set("a", "banned"); // its event never delivered
    clock.advance(MAX_AGE_MS);
    expect(await cache.get("a")).toBe("a1");
    expect(store.reads).toBe(1);
    clock.advance(1);
    expect(await cache.get("a")).toBe("banned");
    expect(store.reads).toBe(2);
    for (let i = 0; i < 10; i++) expect(await cache.get("a")).toBe("banned");
    expect(store.reads).toBe(2);
    // A record deleted meanwhile is not served from the old copy either.
    store.rows.delete("a");
    clock.advance(MAX_AGE_MS + 1);
    expect(await cache.get("a")).toBeUndefined();
    expect(cache.stats().size).toBe(0);
    cache.stop();
  });
});

describe("FeedCache holding every record (bundles)", () => {
  it("loads at start; hits and known absences read nothing; an event reads the record again at once", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("example.org", "own-1");
    const cache = fullCache(feed, store);
    await cache.start();
    expect(store.readAlls).toBe(1);
    for (let i = 0; i < 100; i++) {
      expect(await cache.get("example.org")).toBe("own-1");
      expect(await cache.get("missing.test")).toBeUndefined();
    }
    expect(store.reads).toBe(0);
    store.rows.set("partner.test", "p-1");
    feed.emit("bundle", "partner.test");
    expect(store.reads).toBe(1);
    expect(await cache.get("partner.test")).toBe("p-1");
    store.rows.delete("partner.test");
    feed.emit("bundle", "partner.test");
    expect(await cache.get("partner.test")).toBeUndefined();
    await cache.get("partner.test");
    expect(store.reads).toBe(2);
    cache.stop();
  });

  it("a call during the event's re-read waits for it, never answering from the old copy", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("example.org", "own-1");
    const cache = fullCache(feed, store);
    await cache.start();
    store.hold();
    store.rows.set("example.org", "own-2");
    feed.emit("bundle", "example.org");
    const during = cache.get("example.org");
    store.release();
    expect(await during).toBe("own-2");
    cache.stop();
  });

  it("a failed re-read leaves the record unknown: the next call reads it (not 'absent')", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("example.org", "own-1");
    const cache = fullCache(feed, store);
    await cache.start();
    store.fail = true;
    store.rows.set("example.org", "own-2");
    feed.emit("bundle", "example.org");
    await flush();
    await expect(cache.get("example.org")).rejects.toThrow(/unreachable/);
    store.fail = false;
    expect(await cache.get("example.org")).toBe("own-2");
    const reads = store.reads;
    expect(await cache.get("example.org")).toBe("own-2");
    expect(store.reads).toBe(reads);
    cache.stop();
  });

  it("an event during the load wins over the load's older copy", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("example.org", "own-1");
    const cache = fullCache(feed, store);
    store.hold();
    const started = cache.start();
    await flush();
    store.rows.set("example.org", "own-2");
    feed.emit("bundle", "example.org");
    store.release();
    await started;
    await flush();
    expect(await cache.get("example.org")).toBe("own-2");
    cache.stop();
  });

  it("after the feed fell behind it reloads everything; until then it reads through", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("example.org", "own-1").set("old.test", "o-1");
    const cache = fullCache(feed, store);
    await cache.start();
    store.rows.set("example.org", "own-2");
    store.rows.delete("old.test");
    store.hold();
    feed.resync();
    const during = cache.get("example.org");
    store.release();
    expect(await during).toBe("own-2");
    await flush();
    expect(store.readAlls).toBe(2);
    const reads = store.reads;
    expect(await cache.get("old.test")).toBeUndefined();
    expect(await cache.get("example.org")).toBe("own-2");
    expect(store.reads).toBe(reads);
    cache.stop();
  });

  it.each(["gap", "start"] as const)("when the feed may have missed an event (%s) it reloads everything", async (cause) => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.rows.set("example.org", "own-1").set("old.test", "o-1");
    const cache = fullCache(feed, store);
    await cache.start();
    store.rows.set("example.org", "own-2");
    store.rows.delete("old.test");
    feed.missed(cause);
    expect(await cache.get("example.org")).toBe("own-2");
    await flush();
    expect(store.readAlls).toBe(2);
    expect(await cache.get("old.test")).toBeUndefined();
    cache.stop();
  });

  it("reloads everything in the background every half age bound while used, replacing changed and deleted copies", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    const clock = new ManualClock();
    store.rows.set("example.org", "own-1").set("old.test", "o-1");
    const cache = fullCache(feed, store, clock);
    await cache.start();
    // Changes whose events were never delivered.
    store.rows.set("example.org", "own-2");
    store.rows.delete("old.test");
    store.rows.set("new.test", "n-1");
    clock.advance(MAX_AGE_MS / 2 - 1);
    expect(await cache.get("example.org")).toBe("own-1");
    expect(store.readAlls).toBe(1);
    clock.advance(1);
    // The call that finds the load half the bound old is answered from memory and starts a load.
    expect(await cache.get("example.org")).toBe("own-1");
    expect(store.readAlls).toBe(2);
    await flush();
    expect(await cache.get("example.org")).toBe("own-2");
    expect(await cache.get("old.test")).toBeUndefined();
    expect(await cache.get("new.test")).toBe("n-1");
    expect(store.reads).toBe(0);
    cache.stop();
  });

  it("a bundle stored without any event (a server of a version before bundle events, mid rolling upgrade) is served once the age bound passed, with no call in between and no restart", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    const clock = new ManualClock();
    store.rows.set("example.org", "own-1");
    const cache = fullCache(feed, store, clock);
    await cache.start();
    expect(await cache.get("example.org")).toBe("own-1");
    expect(await cache.get("partner.test")).toBeUndefined();
    // The older server publishes its CA and a federated bundle: rows change, no event is appended.
    store.rows.set("example.org", "own-2");
    store.rows.set("partner.test", "p-1");
    clock.advance(MAX_AGE_MS + 1);
    expect(await cache.get("example.org")).toBe("own-2");
    expect(await cache.get("partner.test")).toBe("p-1");
    cache.stop();
  });

  it("a background reload does not replace a copy read after it began", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    const clock = new ManualClock();
    store.rows.set("example.org", "own-1");
    const cache = fullCache(feed, store, clock);
    await cache.start();
    store.hold();
    clock.advance(MAX_AGE_MS / 2);
    expect(await cache.get("other.test")).toBeUndefined(); // starts the reload, which reads "own-1"
    store.rows.set("example.org", "own-2");
    clock.advance(MAX_AGE_MS / 2 + 1);
    const fresh = cache.get("example.org"); // past the bound: read again, after the reload began
    store.release();
    expect(await fresh).toBe("own-2");
    await flush();
    const reads = store.reads;
    expect(await cache.get("example.org")).toBe("own-2");
    expect(store.reads).toBe(reads);
    cache.stop();
  });

  it("past the age bound with no successful load, copies and absences are read through", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    const clock = new ManualClock();
    store.rows.set("example.org", "own-1");
    const cache = fullCache(feed, store, clock);
    await cache.start();
    store.fail = true;
    clock.advance(MAX_AGE_MS + 1);
    await expect(cache.get("example.org")).rejects.toThrow(/unreachable/);
    await expect(cache.get("missing.test")).rejects.toThrow(/unreachable/);
    store.fail = false;
    store.rows.set("example.org", "own-2");
    expect(await cache.get("example.org")).toBe("own-2");
    cache.stop();
  });

  it("a failing first load fails the start", async () => {
    const feed = new FakeFeed();
    const store = new FakeStore();
    store.fail = true;
    await expect(fullCache(feed, store).start()).rejects.toThrow(/unreachable/);
    expect(feed.listeners.size).toBe(0);
  });
});
