/**
 * RFC 6962 §2.1 Merkle tree hashing (as kept by RFC 9162 §2.1.1) and an
 * incremental tree builder. A leaf hash is SHA-256(0x00 || entry), an interior
 * node SHA-256(0x01 || left || right); the root of n leaves splits them at the
 * largest power of two smaller than n.
 *
 * Coordinates used across `spiffe/tlog`: the node at `(level, index)` is the
 * hash of the full subtree over leaves `[index·2^level, (index+1)·2^level)`;
 * level 0 holds leaf hashes.
 */
import { hash as sha256OneShot } from "node:crypto";
import { SigilError } from "../errors.js";

/** Bytes in every tree hash (SHA-256). */
export const HASH_SIZE = 32;

/** The largest tree size (and leaf index + 1) this library handles: integers stay exact. */
export const MAX_TREE_SIZE = Number.MAX_SAFE_INTEGER;

const LEAF_PREFIX = 0x00;
const NODE_PREFIX = 0x01;

// Digests are written into private slabs of HASH_SLAB hashes, never reused: the tree keeps
// hashes by reference. Not Node's shared pool: a kept 32-byte slice of it pins a whole 8 KiB
// block full of unrelated allocations (a review measured 157 MiB held by 20,000 kept hashes).
const HASH_SLAB = 512;
let slab = Buffer.allocUnsafeSlow(HASH_SIZE * HASH_SLAB);
let slabAt = 0;

/**
 * SHA-256 of `data` as a 32-byte Buffer. The digest is taken as a latin1 ("binary")
 * string and written into a private slab: on Node 20 that is about half the
 * cost of the `"buffer"` output, which allocates a backing store per digest
 * (this runs for every leaf and node an issuance appends). Slab space is
 * never handed out twice, so the tree may keep the result; a slab is freed
 * once none of its hashes is referenced.
 */
function sha256(data: Uint8Array): Buffer {
  if (slabAt === slab.length) {
    slab = Buffer.allocUnsafeSlow(HASH_SIZE * HASH_SLAB);
    slabAt = 0;
  }
  const at = slabAt;
  slab.write(sha256OneShot("sha256", data, "binary"), at, HASH_SIZE, "latin1");
  slabAt = at + HASH_SIZE;
  return slab.subarray(at, at + HASH_SIZE);
}

/**
 * Hashes leaves and nodes through reusable scratch buffers, so hashing one
 * leaf allocates only its 32-byte result. One per caller; not shared between
 * concurrent users (the scratch is overwritten on every call).
 */
export class MerkleHasher {
  #leaf = Buffer.allocUnsafe(1024);
  readonly #node = Buffer.allocUnsafe(1 + 2 * HASH_SIZE);

  constructor() {
    this.#node[0] = NODE_PREFIX;
  }

  /** SHA-256(0x00 || entry). */
  leaf(entry: Uint8Array): Buffer {
    if (entry.length + 1 > this.#leaf.length) this.#leaf = Buffer.allocUnsafe(Math.max(entry.length + 1, this.#leaf.length * 2));
    const buf = this.#leaf;
    buf[0] = LEAF_PREFIX;
    buf.set(entry, 1);
    return sha256(buf.subarray(0, entry.length + 1));
  }

  /** SHA-256(0x01 || left || right); both must be {@link HASH_SIZE} bytes. */
  node(left: Uint8Array, right: Uint8Array): Buffer {
    if (left.length !== HASH_SIZE || right.length !== HASH_SIZE) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: a node hash combines two ${HASH_SIZE}-byte hashes, got ${left.length} and ${right.length} bytes`);
    }
    this.#node.set(left, 1);
    this.#node.set(right, 1 + HASH_SIZE);
    return sha256(this.#node);
  }
}

/** RFC 6962 leaf hash: SHA-256(0x00 || entry). */
export function leafHash(entry: Uint8Array): Buffer {
  return sha256(Buffer.concat([Buffer.of(LEAF_PREFIX), entry]));
}

/** RFC 6962 interior node hash: SHA-256(0x01 || left || right). */
export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  if (left.length !== HASH_SIZE || right.length !== HASH_SIZE) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: a node hash combines two ${HASH_SIZE}-byte hashes, got ${left.length} and ${right.length} bytes`);
  }
  return sha256(Buffer.concat([Buffer.of(NODE_PREFIX), left, right]));
}

/** Root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1). */
export function emptyRoot(): Buffer {
  return sha256(new Uint8Array(0));
}

/** Constant-shape equality of two hashes (they are public values; no secret is compared). */
export function hashesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/** The largest power of two strictly smaller than `n` (n ≥ 2): RFC 6962's split point `k`. */
export function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** Throws unless `n` is an integer in [min, MAX_TREE_SIZE], naming `what`. */
export function checkSize(n: number, what: string, min = 0): void {
  if (!Number.isSafeInteger(n) || n < min) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: ${what} must be an integer from ${min} to ${MAX_TREE_SIZE}, got ${String(n)}`);
  }
}

/** Called for each full subtree hash a {@link MerkleTreeBuilder} completes, leaves included (level 0). */
export type NodeListener = (level: number, index: number, hash: Buffer) => void;

/**
 * Builds a Merkle tree one leaf at a time, keeping only its "frontier": the
 * hashes of the maximal full subtrees covering the leaves so far, one per set
 * bit of the size (at most 53 for sizes up to 2^53). It gives the root at any
 * size without the leaves, and can restart from a saved frontier, so a log
 * server can persist it beside its last checkpoint.
 *
 * @example
 * ```ts
 * const tree = new MerkleTreeBuilder();
 * for (const e of entries) tree.appendEntry(e);
 * checkpoint.rootHash = tree.root();
 * ```
 */
export class MerkleTreeBuilder {
  // frontier[i] is the i-th full subtree from the left, largest first.
  readonly #frontier: Buffer[];
  #size: number;
  readonly #hasher: MerkleHasher;
  readonly #onNode: NodeListener | undefined;

  /**
   * @param options.onNode - told every full subtree hash as it completes (tile
   *   writers keep levels 0, 8, 16, …).
   * @param options.hasher - a scratch-buffer hasher to share with the caller.
   */
  constructor(options: { readonly onNode?: NodeListener; readonly hasher?: MerkleHasher } = {}) {
    this.#frontier = [];
    this.#size = 0;
    this.#hasher = options.hasher ?? new MerkleHasher();
    this.#onNode = options.onNode;
  }

  /**
   * Restarts a builder from a size and the frontier {@link frontier} returned
   * at that size.
   *
   * @throws SigilError `ERR_INVALID_ARGUMENT` when the number of hashes is not
   *   the number of set bits of `size` or a hash has the wrong length.
   */
  static fromFrontier(size: number, frontier: readonly Uint8Array[], options: { readonly onNode?: NodeListener; readonly hasher?: MerkleHasher } = {}): MerkleTreeBuilder {
    checkSize(size, "tree size");
    const want = frontierLevels(size).length;
    if (frontier.length !== want) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: a tree of size ${size} has a frontier of ${want} hashes, got ${frontier.length}`);
    }
    frontier.forEach((h, i) => {
      if (h.length !== HASH_SIZE) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: frontier hash ${i} has ${h.length} bytes, expected ${HASH_SIZE}`);
    });
    const b = new MerkleTreeBuilder(options);
    b.#size = size;
    for (const h of frontier) b.#frontier.push(Buffer.from(h));
    return b;
  }

  /** Number of leaves appended. */
  get size(): number {
    return this.#size;
  }

  /** The frontier hashes, largest subtree first (copies). */
  frontier(): Buffer[] {
    return this.#frontier.map((h) => Buffer.from(h));
  }

  /** Hashes `entry` as a leaf and appends it; returns the leaf hash. */
  appendEntry(entry: Uint8Array): Buffer {
    const h = this.#hasher.leaf(entry);
    this.appendLeafHash(h);
    return h;
  }

  /** Appends a leaf by its leaf hash (kept by reference; do not modify it afterwards). */
  appendLeafHash(hash: Buffer): void {
    if (hash.length !== HASH_SIZE) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: a leaf hash has ${HASH_SIZE} bytes, got ${hash.length}`);
    if (this.#size >= MAX_TREE_SIZE) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: the tree is at its maximum size ${MAX_TREE_SIZE}`);
    const onNode = this.#onNode;
    let index = this.#size;
    let h = hash;
    onNode?.(0, index, h);
    // Each trailing 1 bit of the old size is a full subtree that merges with the new one.
    let level = 0;
    let s = this.#size;
    while (s % 2 === 1) {
      const left = this.#frontier.pop() as Buffer;
      h = this.#hasher.node(left, h);
      level++;
      index = Math.floor(index / 2);
      onNode?.(level, index, h);
      s = Math.floor(s / 2);
    }
    this.#frontier.push(h);
    this.#size++;
  }

  /** The root hash at the current size (the empty-tree hash at size 0). */
  root(): Buffer {
    const f = this.#frontier;
    if (f.length === 0) return emptyRoot();
    let acc = f[f.length - 1] as Buffer;
    for (let i = f.length - 2; i >= 0; i--) acc = this.#hasher.node(f[i] as Buffer, acc);
    return acc;
  }
}

/**
 * The levels of the full subtrees that make up a tree of `size` leaves, left
 * to right (largest first): the set bits of `size`, high to low.
 */
export function frontierLevels(size: number): number[] {
  const out: number[] = [];
  let level = 0;
  let s = size;
  while (s > 0) {
    if (s % 2 === 1) out.push(level);
    s = Math.floor(s / 2);
    level++;
  }
  return out.reverse();
}
