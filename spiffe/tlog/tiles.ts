/**
 * C2SP tlog-tiles (https://c2sp.org/tlog-tiles), height 8: the tree served as
 * tiles of 256 consecutive hashes. Tile `N` at level `L` holds the hashes of
 * the full subtrees of 256^L leaves `[(N·256+i)·256^L, (N·256+i+1)·256^L)`;
 * the rightmost tile of a level is partial (`.p/<W>`, W = ⌊size/256^L⌋ mod 256).
 * Entry bundles (`tile/entries/<N>`) hold the entries of level-0 tile N, each
 * prefixed by its length as a big-endian uint16.
 *
 * Merkle levels between two tile levels are not served: a node at level
 * 8L + k (0 < k < 8) is recomputed from 2^k hashes of a level-L tile, which is
 * how {@link TileReader} answers any {@link HashReader} read.
 */
import { SigilError } from "../errors.js";
import { HASH_SIZE, MerkleHasher, checkSize } from "./hash.js";
import { consistencyProof, consistencyProofRanges, inclusionProof, inclusionProofRanges, nodesForRanges, rangeNodes, treeRoot, type HashReader, type NodeCoord } from "./proof.js";

/** Merkle levels per tile. */
export const TILE_HEIGHT = 8;
/** Hashes in a full tile, entries in a full bundle. */
export const TILE_WIDTH = 256;
/** Largest entry an entry bundle can carry (uint16 length). */
export const MAX_ENTRY_SIZE = 0xffff;
const MAX_TILE_LEVEL = 63;

/** A hash tile: `level` is the tile level (Merkle level 8·level), `width` 1..256. */
export interface TileRef {
  readonly level: number;
  readonly index: number;
  readonly width: number;
}

/** What a tile path names: a hash tile or an entry bundle. */
export type ParsedTilePath = { readonly kind: "hash"; readonly tile: TileRef } | { readonly kind: "entries"; readonly index: number; readonly width: number };

/** Fetches one log resource by its path (`checkpoint`, `tile/0/000`, …); rejects when it is missing. */
export type TlogFetch = (path: string) => Promise<Uint8Array>;

function malformed(message: string): SigilError {
  return new SigilError("ERR_TLOG_MALFORMED", `tlog tiles: ${message}`);
}

/** `1234067` → `x001/x234/067`: 3-digit groups, all but the last prefixed with `x`. */
export function formatTileIndex(n: number): string {
  checkSize(n, "tile index");
  const groups: string[] = [];
  let rest = n;
  do {
    groups.unshift(String(rest % 1000).padStart(3, "0"));
    rest = Math.floor(rest / 1000);
  } while (rest > 0);
  return groups.map((g, i) => (i < groups.length - 1 ? `x${g}` : g)).join("/");
}

function checkWidth(width: number): void {
  if (!Number.isInteger(width) || width < 1 || width > TILE_WIDTH) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog tiles: a tile width is 1 to ${TILE_WIDTH}, got ${String(width)}`);
}

/** The path of a hash tile, `tile/<L>/<N>[.p/<W>]`. */
export function tilePath(tile: TileRef): string {
  if (!Number.isInteger(tile.level) || tile.level < 0 || tile.level > MAX_TILE_LEVEL) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog tiles: a tile level is 0 to ${MAX_TILE_LEVEL}, got ${String(tile.level)}`);
  checkWidth(tile.width);
  return `tile/${tile.level}/${formatTileIndex(tile.index)}${tile.width < TILE_WIDTH ? `.p/${tile.width}` : ""}`;
}

/** The path of entry bundle `index` of `width` entries, `tile/entries/<N>[.p/<W>]`. */
export function entriesPath(index: number, width: number): string {
  checkWidth(width);
  return `tile/entries/${formatTileIndex(index)}${width < TILE_WIDTH ? `.p/${width}` : ""}`;
}

/**
 * Parses a tile or entry-bundle path (without a leading `/`), strictly: no
 * leading zeroes in the level or width, well-formed index groups.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` naming what is wrong.
 */
export function parseTilePath(path: string): ParsedTilePath {
  if (typeof path !== "string") throw malformed(`a tile path is a string, got ${typeof path}`);
  const parts = path.split("/");
  if (parts[0] !== "tile" || parts.length < 3) throw malformed(`${JSON.stringify(path)} is not a tile path (tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>])`);
  const levelPart = parts[1] as string;
  let rest = parts.slice(2);
  let width = TILE_WIDTH;
  if (rest.length >= 2 && rest[rest.length - 2]?.endsWith(".p")) {
    const w = rest[rest.length - 1] as string;
    if (!/^[1-9][0-9]{0,2}$/.test(w) || Number(w) >= TILE_WIDTH) throw malformed(`${JSON.stringify(path)}: partial width ${JSON.stringify(w)} is not 1 to ${TILE_WIDTH - 1}`);
    width = Number(w);
    rest = [...rest.slice(0, -2), (rest[rest.length - 2] as string).slice(0, -2)];
  }
  let index = 0;
  rest.forEach((g, i) => {
    const last = i === rest.length - 1;
    const re = last ? /^[0-9]{3}$/ : /^x[0-9]{3}$/;
    if (!re.test(g)) throw malformed(`${JSON.stringify(path)}: index element ${JSON.stringify(g)} is not ${last ? "3 digits" : "x and 3 digits"}`);
    index = index * 1000 + Number(last ? g : g.slice(1));
  });
  if (!Number.isSafeInteger(index)) throw malformed(`${JSON.stringify(path)}: the index is too large`);
  if (rest.length > 1 && rest[0] === "x000") throw malformed(`${JSON.stringify(path)}: the index has a leading zero group`);
  if (levelPart === "entries") return { kind: "entries", index, width };
  if (!/^(0|[1-9][0-9]?)$/.test(levelPart) || Number(levelPart) > MAX_TILE_LEVEL) throw malformed(`${JSON.stringify(path)}: level ${JSON.stringify(levelPart)} is not 0 to ${MAX_TILE_LEVEL} without leading zeroes`);
  return { kind: "hash", tile: { level: Number(levelPart), index, width } };
}

/** 256^level, exact for the levels a safe-integer tree reaches. */
function span(level: number): number {
  return TILE_WIDTH ** level;
}

/**
 * Width of tile `index` at tile level `level` in a tree of `size` leaves:
 * 256 for a full tile, 1..255 for the partial rightmost one, 0 when the tree
 * has no such tile.
 */
export function tileWidth(level: number, index: number, size: number): number {
  const full = Math.floor(size / span(level + 1));
  if (index < full) return TILE_WIDTH;
  if (index > full) return 0;
  return Math.floor(size / span(level)) % TILE_WIDTH;
}

/** Every hash tile of a tree of `size` leaves, level by level, left to right. */
export function tilesForSize(size: number): TileRef[] {
  checkSize(size, "tree size");
  const out: TileRef[] = [];
  for (let level = 0; span(level) <= size; level++) {
    const n = Math.ceil(Math.floor(size / span(level)) / TILE_WIDTH);
    for (let index = 0; index < n; index++) out.push({ level, index, width: tileWidth(level, index, size) });
  }
  return out;
}

/** The entry bundles of a tree of `size` leaves, as (index, width). */
export function entryBundlesForSize(size: number): { index: number; width: number }[] {
  checkSize(size, "tree size");
  const out: { index: number; width: number }[] = [];
  const n = Math.ceil(size / TILE_WIDTH);
  for (let index = 0; index < n; index++) out.push({ index, width: tileWidth(0, index, size) });
  return out;
}

/**
 * Where the full subtree `(level, index)` of a tree of `size` leaves lives: a
 * tile and the run of `count` hashes from `offset` whose Merkle tree hash it is.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when the subtree is not complete at that size.
 */
export function tileForNode(level: number, index: number, size: number): { tile: TileRef; offset: number; count: number } {
  checkSize(index, "node index");
  if (!Number.isInteger(level) || level < 0 || level >= TILE_HEIGHT * (MAX_TILE_LEVEL + 1)) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog tiles: node level ${String(level)} is out of range`);
  if ((index + 1) * 2 ** level > size) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog tiles: node (level ${level}, index ${index}) is not a full subtree of a tree of size ${size}`);
  const tileLevel = Math.floor(level / TILE_HEIGHT);
  const count = 2 ** (level - tileLevel * TILE_HEIGHT);
  const first = index * count;
  const tileIndex = Math.floor(first / TILE_WIDTH);
  return { tile: { level: tileLevel, index: tileIndex, width: tileWidth(tileLevel, tileIndex, size) }, offset: first % TILE_WIDTH, count };
}

/**
 * The Merkle tree hash of `count` (a power of two ≤ 256) consecutive hashes of
 * a tile from hash `offset`.
 */
export function hashTileRun(tile: Uint8Array, offset: number, count: number, hasher: MerkleHasher = new MerkleHasher()): Uint8Array {
  if ((offset + count) * HASH_SIZE > tile.length) throw malformed(`hashes ${offset}..${offset + count - 1} are past the end of a tile of ${tile.length / HASH_SIZE} hashes`);
  // A copy: callers may keep or change what they read without touching a cached tile.
  if (count === 1) return Buffer.from(tile.subarray(offset * HASH_SIZE, (offset + 1) * HASH_SIZE));
  const level: Uint8Array[] = [];
  for (let i = 0; i < count; i += 2) {
    const a = (offset + i) * HASH_SIZE;
    level.push(hasher.node(tile.subarray(a, a + HASH_SIZE), tile.subarray(a + HASH_SIZE, a + 2 * HASH_SIZE)));
  }
  while (level.length > 1) {
    for (let i = 0; i < level.length / 2; i++) level[i] = hasher.node(level[2 * i] as Uint8Array, level[2 * i + 1] as Uint8Array);
    level.length /= 2;
  }
  return level[0] as Uint8Array;
}

/**
 * Reads tree hashes from a log's tiles for one tree size, fetching each tile
 * once and keeping a bounded number of them. Reads are synchronous once the
 * tiles a computation needs are {@link prefetch}ed; the async helpers do that.
 *
 * @example
 * ```ts
 * const tiles = new TileReader(httpTlogFetch(url), checkpoint.size);
 * const proof = await tiles.inclusionProof(1234);
 * verifyInclusion(1234, checkpoint.size, leafHash(entry), proof, checkpoint.rootHash);
 * ```
 */
export class TileReader {
  readonly size: number;
  readonly #fetch: TlogFetch;
  readonly #max: number;
  readonly #cache = new Map<string, Promise<Uint8Array>>();
  readonly #loaded = new Map<string, Uint8Array>();
  readonly #hasher = new MerkleHasher();
  #fetched = 0;

  /** @param options.maxCachedTiles - tiles kept in memory (default 4096, 32 MiB). */
  constructor(fetch: TlogFetch, size: number, options: { readonly maxCachedTiles?: number } = {}) {
    checkSize(size, "tree size");
    this.size = size;
    this.#fetch = fetch;
    this.#max = options.maxCachedTiles ?? 4096;
  }

  /** Tiles fetched so far (cache misses). */
  get tilesFetched(): number {
    return this.#fetched;
  }

  /**
   * One tile's bytes, checked to hold exactly `width` hashes.
   *
   * @throws SigilError `ERR_TLOG_MALFORMED` for a tile of the wrong length; the fetch function's error when missing.
   */
  tile(ref: TileRef): Promise<Uint8Array> {
    const path = tilePath(ref);
    const hit = this.#cache.get(path);
    if (hit) {
      this.#cache.delete(path);
      this.#cache.set(path, hit);
      return hit;
    }
    this.#fetched++;
    const p = this.#fetch(path).then((bytes) => {
      if (bytes.length !== ref.width * HASH_SIZE) throw malformed(`${path} has ${bytes.length} bytes, expected ${ref.width * HASH_SIZE} (${ref.width} hashes)`);
      if (this.#cache.get(path) === p) this.#loaded.set(path, bytes);
      return bytes;
    });
    p.catch(() => {
      if (this.#cache.get(path) === p) this.#cache.delete(path);
    });
    this.#cache.set(path, p);
    while (this.#cache.size > this.#max) {
      const oldest = this.#cache.keys().next().value as string;
      this.#cache.delete(oldest);
      this.#loaded.delete(oldest);
    }
    return p;
  }

  /** Fetches (in parallel) every tile the given full subtrees are read from. */
  async prefetch(nodes: readonly NodeCoord[]): Promise<void> {
    const tiles = new Map<string, TileRef>();
    for (const n of nodes) {
      const { tile } = tileForNode(n.level, n.index, this.size);
      tiles.set(tilePath(tile), tile);
    }
    if (tiles.size > this.#max) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog tiles: a read needs ${tiles.size} tiles, more than the ${this.#max} cached`);
    await Promise.all([...tiles.values()].map((t) => this.tile(t)));
  }

  /**
   * A synchronous {@link HashReader} over the tiles fetched so far.
   * It throws `ERR_FAILED_PRECONDITION` for a node whose tile is not loaded.
   */
  readonly readHash: HashReader = (level, index) => {
    const { tile, offset, count } = tileForNode(level, index, this.size);
    const path = tilePath(tile);
    const bytes = this.#loaded.get(path);
    if (bytes === undefined) throw new SigilError("ERR_FAILED_PRECONDITION", `tlog tiles: ${path} is not loaded (prefetch the nodes first)`);
    return hashTileRun(bytes, offset, count, this.#hasher);
  };

  /** The root hash of the tree, from its tiles. */
  async root(): Promise<Uint8Array> {
    if (this.size > 0) await this.prefetch(rangeNodes(0, this.size));
    return treeRoot(this.size, this.readHash, this.#hasher);
  }

  /** The inclusion proof of leaf `index`, from the tiles. */
  async inclusionProof(index: number): Promise<Uint8Array[]> {
    await this.prefetch(nodesForRanges(inclusionProofRanges(index, this.size)));
    return inclusionProof(index, this.size, this.readHash, this.#hasher);
  }

  /** The consistency proof from an earlier size `m` to this tree, from the tiles. */
  async consistencyProof(m: number): Promise<Uint8Array[]> {
    await this.prefetch(nodesForRanges(consistencyProofRanges(m, this.size)));
    return consistencyProof(m, this.size, this.readHash, this.#hasher);
  }
}

/**
 * Encodes entries as an entry bundle: each prefixed by its length as a
 * big-endian uint16.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` for more than 256 entries or an entry over 65,535 bytes.
 */
export function encodeEntryBundle(entries: readonly Uint8Array[]): Buffer {
  if (entries.length > TILE_WIDTH) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog tiles: an entry bundle holds at most ${TILE_WIDTH} entries, got ${entries.length}`);
  let total = 0;
  entries.forEach((e, i) => {
    if (e.length > MAX_ENTRY_SIZE) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog tiles: entry ${i} has ${e.length} bytes, more than the ${MAX_ENTRY_SIZE} a bundle can carry`);
    total += 2 + e.length;
  });
  const out = Buffer.allocUnsafe(total);
  let off = 0;
  for (const e of entries) {
    out.writeUInt16BE(e.length, off);
    out.set(e, off + 2);
    off += 2 + e.length;
  }
  return out;
}

/**
 * Walks the entries of a bundle without copying them: calls `each` with the
 * entry (a view into `bundle`), its position in the bundle and the byte
 * offset of its length prefix. Returns the number of entries.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` when a length runs past the end, naming the entry and offset.
 */
export function forEachBundleEntry(bundle: Uint8Array, each: (entry: Uint8Array, position: number, offset: number) => void): number {
  if (!(bundle instanceof Uint8Array)) throw malformed(`an entry bundle is bytes, got ${typeof bundle}`);
  let off = 0;
  let n = 0;
  while (off < bundle.length) {
    if (off + 2 > bundle.length) throw malformed(`entry ${n} at byte ${off}: the bundle ends inside its length prefix`);
    const len = ((bundle[off] as number) << 8) | (bundle[off + 1] as number);
    const end = off + 2 + len;
    if (end > bundle.length) throw malformed(`entry ${n} at byte ${off}: its length ${len} runs past the end of the bundle (${bundle.length} bytes)`);
    each(bundle.subarray(off + 2, end), n, off);
    off = end;
    n++;
  }
  return n;
}

/**
 * The first `count` entries of a bundle as a bundle of their own: a view
 * into `bundle`, no copy (a partial bundle of a full one).
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` when the bundle is malformed or holds fewer entries.
 */
export function bundlePrefix(bundle: Uint8Array, count: number): Uint8Array {
  let end: number | undefined;
  const n = forEachBundleEntry(bundle, (_, position, offset) => {
    if (position === count) end = offset;
  });
  if (n < count) throw malformed(`the bundle holds ${n} entries, fewer than the ${count} asked for`);
  return bundle.subarray(0, end ?? bundle.length);
}

/** The entries of a bundle, as views into it. */
export function decodeEntryBundle(bundle: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  forEachBundleEntry(bundle, (e) => out.push(e));
  return out;
}
