/**
 * The tiles listener's cache in front of the log: right-edge partials read
 * once per tree size and held within a byte budget; partials of tiles that
 * are full by now passed to the log uncached, so a flood of them pins nothing
 * and evicts nothing.
 */
import { describe, expect, it } from "vitest";
import { ByteLru } from "../../../../server/tlog/byte-lru.js";
import { cachedTlogView } from "../../../../server/tlog/read-cache.js";
import type { TlogReadView } from "../../../../server/tlog/types.js";
import { entriesPath, tilePath } from "../../../../spiffe/tlog/tiles.js";

/** A log of `size` entries whose every resource read is counted; bodies of `bodyBytes` bytes. */
function countingView(size: number, bodyBytes = 1) {
  const reads: string[] = [];
  const view: TlogReadView = {
    origin: "example.org/sigil/issuance",
    latestCheckpoint: () => ({ note: "n", size, rootHash: new Uint8Array(32) }),
    resource: async (path) => {
      reads.push(path);
      return { body: new Uint8Array(bodyBytes), immutable: false };
    },
    prove: async () => undefined,
    verifierKeys: async () => [],
  };
  return { view, reads };
}

describe("tlog read cache", () => {
  it("reads a right-edge partial once per tree size, however often and concurrently it is asked for", async () => {
    const { view, reads } = countingView(1_000_000);
    const c = cachedTlogView(view);
    const edge = entriesPath(3906, 64); // 1,000,000 = 3906 × 256 + 64
    await Promise.all(Array.from({ length: 10 }, () => c.resource(edge)));
    await c.resource(edge);
    await c.resource(tilePath({ level: 0, index: 3906, width: 64 }));
    await c.resource(tilePath({ level: 0, index: 3906, width: 64 }));
    // An older width of the edge tile (a smaller checkpoint) is kept too.
    await c.resource(entriesPath(3906, 10));
    await c.resource(entriesPath(3906, 10));
    expect(reads).toEqual([edge, "tile/0/x003/906.p/64", "tile/entries/x003/906.p/10"]);
  });

  it("passes partials of tiles full by now to the log uncached: a flood of them neither pins memory nor evicts the edge", async () => {
    const { view, reads } = countingView(1_000_000);
    const c = cachedTlogView(view);
    const edge = entriesPath(3906, 64);
    await c.resource(edge);
    for (let i = 0; i < 1000; i++) await c.resource(entriesPath(i, 255));
    await c.resource(entriesPath(7, 255));
    expect(reads.filter((p) => p.endsWith(".p/255"))).toHaveLength(1001);
    // Past the edge: the log answers (404), nothing is kept.
    await c.resource(entriesPath(3906, 65));
    await c.resource(entriesPath(3906, 65));
    reads.length = 0;
    await c.resource(edge);
    expect(reads).toEqual([]);
  });

  it("holds partials within a byte budget, not a count", async () => {
    const MiB = 1024 * 1024;
    const { view, reads } = countingView(1_000_000, MiB);
    const c = cachedTlogView(view, { maxPartialBytes: 3 * MiB });
    for (const w of [1, 2, 3, 4, 5]) await c.resource(entriesPath(3906, w));
    reads.length = 0;
    // The three most recent are kept; the two oldest were dropped.
    for (const w of [3, 4, 5, 1, 2]) await c.resource(entriesPath(3906, w));
    expect(reads).toEqual([entriesPath(3906, 1), entriesPath(3906, 2)]);
  });

  it("reads again after the tree grows, and does not keep a failed read", async () => {
    let size = 300;
    let fail = true;
    const reads: string[] = [];
    const view: TlogReadView = {
      origin: "o",
      latestCheckpoint: () => ({ note: "n", size, rootHash: new Uint8Array(32) }),
      resource: async (path) => {
        reads.push(path);
        if (fail) throw new Error("database down");
        return { body: new Uint8Array(1), immutable: false };
      },
      prove: async () => undefined,
      verifierKeys: async () => [],
    };
    const c = cachedTlogView(view);
    await expect(c.resource(entriesPath(1, 44))).rejects.toThrow("database down");
    fail = false;
    await c.resource(entriesPath(1, 44));
    await c.resource(entriesPath(1, 44));
    size = 301;
    await c.resource(entriesPath(1, 44));
    expect(reads).toHaveLength(3);
  });
});

describe("ByteLru", () => {
  it("drops the least recently used values past its budget and never keeps one larger than the budget", () => {
    const lru = new ByteLru<string, string>(10);
    lru.set("a", "A", 4);
    lru.set("b", "B", 4);
    expect(lru.get("a")).toBe("A"); // now the most recent
    lru.set("c", "C", 4);
    expect([lru.get("a"), lru.get("b"), lru.get("c")]).toEqual(["A", undefined, "C"]);
    expect(lru.bytes).toBe(8);
    lru.set("huge", "H", 11);
    expect([lru.get("huge"), lru.size, lru.bytes]).toEqual([undefined, 2, 8]);
    lru.set("a", "A2", 10);
    expect([lru.get("a"), lru.get("c"), lru.bytes]).toEqual(["A2", undefined, 10]);
    lru.clear();
    expect([lru.size, lru.bytes]).toEqual([0, 0]);
  });
});
