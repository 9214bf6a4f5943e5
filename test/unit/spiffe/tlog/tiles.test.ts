import { describe, expect, it } from "vitest";
import { errorText } from "./support.js";
import { leafHash } from "../../../../spiffe/tlog/hash.js";
import { MemoryTlog } from "../../../../spiffe/tlog/memory-log.js";
import { generateNoteKey } from "../../../../spiffe/tlog/note.js";
import { verifyConsistency, verifyInclusion } from "../../../../spiffe/tlog/proof.js";
import {
  TileReader,
  decodeEntryBundle,
  encodeEntryBundle,
  entriesPath,
  entryBundlesForSize,
  formatTileIndex,
  parseTilePath,
  tileForNode,
  tilePath,
  tilesForSize,
} from "../../../../spiffe/tlog/tiles.js";


const entry = (i: number): Buffer => Buffer.from(`entry ${i}`);

describe("tile paths (C2SP tlog-tiles examples)", () => {
  it("encodes indexes in x-prefixed 3-digit groups", () => {
    expect(formatTileIndex(1234067)).toBe("x001/x234/067");
    expect(formatTileIndex(0)).toBe("000");
    expect(formatTileIndex(999)).toBe("999");
    expect(formatTileIndex(1000)).toBe("x001/000");
    expect(tilePath({ level: 0, index: 1234067, width: 8 })).toBe("tile/0/x001/x234/067.p/8");
    expect(tilePath({ level: 2, index: 4, width: 256 })).toBe("tile/2/004");
    expect(entriesPath(1234067, 8)).toBe("tile/entries/x001/x234/067.p/8");
    expect(entriesPath(5, 256)).toBe("tile/entries/005");
  });

  it("parses what it encodes and refuses the rest, naming the bad part", () => {
    expect(parseTilePath("tile/0/x001/x234/067.p/8")).toEqual({ kind: "hash", tile: { level: 0, index: 1234067, width: 8 } });
    expect(parseTilePath("tile/entries/x001/x234/067")).toEqual({ kind: "entries", index: 1234067, width: 256 });
    expect(parseTilePath("tile/63/000")).toEqual({ kind: "hash", tile: { level: 63, index: 0, width: 256 } });
    const bad: [string, RegExp][] = [
      ["tile/01/000", /level "01" is not 0 to 63 without leading zeroes/],
      ["tile/64/000", /level "64"/],
      ["tile/0/1", /index element "1" is not 3 digits/],
      ["tile/0/001/002", /index element "001" is not x and 3 digits/],
      ["tile/0/x000/002", /leading zero group/],
      ["tile/0/000.p/256", /partial width "256" is not 1 to 255/],
      ["tile/0/000.p/08", /partial width "08"/],
      ["tiles/0/000", /is not a tile path/],
    ];
    for (const [p, re] of bad) {
      const e = errorText(() => parseTilePath(p));
      expect(e, p).toMatch(/^ERR_TLOG_MALFORMED: tlog tiles: /);
      expect(e, p).toMatch(re);
    }
  });

  it("lists the tiles of a tree of 70,000 as the spec describes", () => {
    const tiles = tilesForSize(70_000);
    const level0 = tiles.filter((t) => t.level === 0);
    expect(level0.filter((t) => t.width === 256)).toHaveLength(273);
    expect(level0.filter((t) => t.width < 256)).toEqual([{ level: 0, index: 273, width: 112 }]);
    expect(tiles.filter((t) => t.level === 1)).toEqual([
      { level: 1, index: 0, width: 256 },
      { level: 1, index: 1, width: 17 },
    ]);
    expect(tiles.filter((t) => t.level === 2)).toEqual([{ level: 2, index: 0, width: 1 }]);
    expect(tiles).toHaveLength(277);
    expect(tilesForSize(256)).toEqual([
      { level: 0, index: 0, width: 256 },
      { level: 1, index: 0, width: 1 },
    ]);
    expect(tilesForSize(0)).toEqual([]);
    expect(entryBundlesForSize(513)).toEqual([
      { index: 0, width: 256 },
      { index: 1, width: 256 },
      { index: 2, width: 1 },
    ]);
  });

  it("locates a node at an intermediate level inside its tile", () => {
    expect(tileForNode(3, 40, 70_000)).toEqual({ tile: { level: 0, index: 1, width: 256 }, offset: 64, count: 8 });
    expect(tileForNode(8, 260, 70_000)).toEqual({ tile: { level: 1, index: 1, width: 17 }, offset: 4, count: 1 });
    expect(errorText(() => tileForNode(8, 273, 70_000))).toMatch(/not a full subtree of a tree of size 70000/);
  });
});

describe("entry bundles", () => {
  it("round-trips length-prefixed entries and names a truncated one", () => {
    const entries = [Buffer.alloc(0), Buffer.from("a"), Buffer.alloc(300, 1)];
    const b = encodeEntryBundle(entries);
    expect(b.subarray(0, 5)).toEqual(Buffer.from([0, 0, 0, 1, 0x61]));
    expect(decodeEntryBundle(b).map((e) => Buffer.from(e))).toEqual(entries);
    expect(errorText(() => decodeEntryBundle(b.subarray(0, b.length - 1)))).toBe("ERR_TLOG_MALFORMED: tlog tiles: entry 2 at byte 5: its length 300 runs past the end of the bundle (306 bytes)");
    expect(errorText(() => decodeEntryBundle(Buffer.from([0])))).toBe("ERR_TLOG_MALFORMED: tlog tiles: entry 0 at byte 0: the bundle ends inside its length prefix");
    expect(errorText(() => encodeEntryBundle([Buffer.alloc(65536)]))).toMatch(/entry 0 has 65536 bytes/);
  });
});

describe("TileReader over a served log", () => {
  const key = generateNoteKey("example.org/sigil/issuance");

  it("recomputes the root and proofs from tiles at every tile boundary, fetching each tile once", async () => {
    const log = new MemoryTlog("example.org/sigil/issuance", [key.signer]);
    const roots = new Map<number, Buffer>();
    for (const target of [1, 255, 256, 257, 511, 512, 65_535, 65_536, 65_537, 70_000]) {
      while (log.size < target) log.append(entry(log.size));
      log.publish();
      roots.set(target, log.root());
      let fetches = 0;
      const reader = new TileReader((p) => (fetches++, log.fetch(p)), target);
      expect(Buffer.from(await reader.root()).equals(log.root()), `root ${target}`).toBe(true);
      for (const i of [0, 255, 256, target - 1]) {
        if (i >= target) continue;
        verifyInclusion(i, target, leafHash(entry(i)), await reader.inclusionProof(i), log.root());
      }
      for (const [m, r] of roots) verifyConsistency(m, target, await reader.consistencyProof(m), r, log.root());
      expect(fetches).toBe(reader.tilesFetched);
      const again = fetches;
      await reader.root();
      expect(fetches).toBe(again);
    }
  });

  it("refuses a tile of the wrong length", async () => {
    const log = new MemoryTlog("o", [key.signer]);
    for (let i = 0; i < 300; i++) log.append(entry(i));
    log.publish();
    log.files.set("tile/0/001.p/44", Buffer.alloc(40));
    await expect(new TileReader(log.fetch, 300).root()).rejects.toThrow("tlog tiles: tile/0/001.p/44 has 40 bytes, expected 1408 (44 hashes)");
  });
});
