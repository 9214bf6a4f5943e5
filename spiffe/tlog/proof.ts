/**
 * Merkle inclusion proofs (audit paths, RFC 6962 §2.1.1) and consistency
 * proofs (RFC 6962 §2.1.2, verified as RFC 9162 §2.1.4.2 describes): made from
 * any store of full subtree hashes through a {@link HashReader}, and checked
 * against root hashes.
 *
 * A proof element is the hash of a leaf range `[lo, hi)` where `lo` is a
 * multiple of a power of two ≥ `hi - lo`; it is the right fold of the full
 * subtrees covering the range ({@link rangeNodes}), so a store of full subtree
 * hashes (tiles, a database, memory) answers any proof at any tree size.
 */
import { SigilError } from "../errors.js";
import { HASH_SIZE, MerkleHasher, checkSize, emptyRoot, hashesEqual, splitPoint } from "./hash.js";

/** A full subtree: leaves `[index·2^level, (index+1)·2^level)`. */
export interface NodeCoord {
  readonly level: number;
  readonly index: number;
}

/** Reads the hash of the full subtree at `(level, index)`; throws when it is not available. */
export type HashReader = (level: number, index: number) => Uint8Array;

/** A leaf range `[lo, hi)`. */
export interface LeafRange {
  readonly lo: number;
  readonly hi: number;
}

const isOdd = (x: number): boolean => x % 2 === 1;
const half = (x: number): number => Math.floor(x / 2);

function proofError(message: string): SigilError {
  return new SigilError("ERR_TLOG_PROOF_INVALID", `tlog: ${message}`);
}

/**
 * The full subtrees covering `[lo, hi)`, left to right, largest first. Each is
 * the largest aligned subtree starting at the current position that fits.
 */
export function rangeNodes(lo: number, hi: number): NodeCoord[] {
  const out: NodeCoord[] = [];
  let pos = lo;
  while (pos < hi) {
    let level = 0;
    let span = 1;
    while (pos % (span * 2) === 0 && pos + span * 2 <= hi) {
      span *= 2;
      level++;
    }
    out.push({ level, index: pos / span });
    pos += span;
  }
  return out;
}

/**
 * The RFC 6962 Merkle Tree Hash of leaves `[lo, hi)` (lo aligned as described
 * in the module comment), folded from the full subtree hashes `read` returns.
 */
export function rangeHash(lo: number, hi: number, read: HashReader, hasher: MerkleHasher = new MerkleHasher()): Uint8Array {
  const nodes = rangeNodes(lo, hi);
  let acc: Uint8Array | undefined;
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i] as NodeCoord;
    const h = readChecked(read, n.level, n.index);
    acc = acc === undefined ? h : hasher.node(h, acc);
  }
  if (acc === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: empty leaf range [${lo}, ${hi})`);
  return acc;
}

function readChecked(read: HashReader, level: number, index: number): Uint8Array {
  const h = read(level, index);
  if (h.length !== HASH_SIZE) throw new SigilError("ERR_TLOG_MALFORMED", `tlog: the hash at level ${level} index ${index} has ${h.length} bytes, expected ${HASH_SIZE}`);
  return h;
}

/** Root hash of the tree of `size` leaves (the empty-tree hash for 0). */
export function treeRoot(size: number, read: HashReader, hasher?: MerkleHasher): Uint8Array {
  checkSize(size, "tree size");
  return size === 0 ? emptyRoot() : rangeHash(0, size, read, hasher);
}

/**
 * The leaf ranges whose hashes make the inclusion proof of leaf `index` in a
 * tree of `size` leaves, nearest the leaf first (RFC 6962 PATH).
 */
export function inclusionProofRanges(index: number, size: number): LeafRange[] {
  checkSize(size, "tree size", 1);
  checkSize(index, "leaf index");
  if (index >= size) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: leaf index ${index} is not in a tree of size ${size}`);
  const out: LeafRange[] = [];
  let lo = 0;
  let hi = size;
  while (hi - lo > 1) {
    const k = splitPoint(hi - lo);
    if (index < lo + k) {
      out.push({ lo: lo + k, hi });
      hi = lo + k;
    } else {
      out.push({ lo, hi: lo + k });
      lo += k;
    }
  }
  return out.reverse();
}

/**
 * The leaf ranges whose hashes make the consistency proof from size `m` to
 * size `n` (0 < m < n; empty when m is 0 or m = n), deepest first (RFC 6962
 * SUBPROOF).
 */
export function consistencyProofRanges(m: number, n: number): LeafRange[] {
  checkSize(m, "old tree size");
  checkSize(n, "new tree size");
  if (m > n) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: old tree size ${m} is larger than new tree size ${n}`);
  if (m === 0 || m === n) return [];
  const out: LeafRange[] = [];
  let lo = 0;
  let hi = n;
  let mm = m;
  let complete = true; // SUBPROOF's b: the old tree is exactly this subtree's left edge
  for (;;) {
    const size = hi - lo;
    if (mm === size) {
      if (!complete) out.push({ lo, hi });
      break;
    }
    const k = splitPoint(size);
    if (mm <= k) {
      out.push({ lo: lo + k, hi });
      hi = lo + k;
    } else {
      out.push({ lo, hi: lo + k });
      lo += k;
      mm -= k;
      complete = false;
    }
  }
  return out.reverse();
}

/** Every full subtree a list of proof ranges reads, e.g. to fetch their tiles first. */
export function nodesForRanges(ranges: readonly LeafRange[]): NodeCoord[] {
  return ranges.flatMap((r) => rangeNodes(r.lo, r.hi));
}

/** The inclusion proof of leaf `index` in the tree of `size` leaves. */
export function inclusionProof(index: number, size: number, read: HashReader, hasher: MerkleHasher = new MerkleHasher()): Uint8Array[] {
  return inclusionProofRanges(index, size).map((r) => rangeHash(r.lo, r.hi, read, hasher));
}

/** The consistency proof from the tree of `m` leaves to the tree of `n` leaves. */
export function consistencyProof(m: number, n: number, read: HashReader, hasher: MerkleHasher = new MerkleHasher()): Uint8Array[] {
  return consistencyProofRanges(m, n).map((r) => rangeHash(r.lo, r.hi, read, hasher));
}

function checkProofHashes(proof: readonly Uint8Array[]): void {
  proof.forEach((p, i) => {
    if (p.length !== HASH_SIZE) throw proofError(`proof hash ${i} has ${p.length} bytes, expected ${HASH_SIZE}`);
  });
}

/**
 * The root an inclusion proof leads to from `leafHash` at `index` in a tree of
 * `size` leaves (RFC 9162 §2.1.3.2).
 *
 * @throws SigilError `ERR_TLOG_PROOF_INVALID` when the proof has the wrong shape.
 */
export function rootFromInclusionProof(index: number, size: number, leafHash: Uint8Array, proof: readonly Uint8Array[], hasher: MerkleHasher = new MerkleHasher()): Uint8Array {
  checkSize(size, "tree size");
  checkSize(index, "leaf index");
  if (index >= size) throw proofError(`leaf index ${index} is not in a tree of size ${size}`);
  if (leafHash.length !== HASH_SIZE) throw proofError(`the leaf hash has ${leafHash.length} bytes, expected ${HASH_SIZE}`);
  checkProofHashes(proof);
  let r: Uint8Array = leafHash;
  const what = `the inclusion proof of leaf ${index} in a tree of size ${size} has ${proof.length} hashes`;
  const sn = walkProof(index, size - 1, proof, what, {
    left: (p) => (r = hasher.node(p, r)),
    right: (p) => (r = hasher.node(r, p)),
  });
  if (sn !== 0) throw proofError(`${what}, fewer than needed`);
  return r;
}

/**
 * Checks that `leafHash` is leaf `index` of the tree of `size` leaves whose
 * root is `root`.
 *
 * @throws SigilError `ERR_TLOG_PROOF_INVALID` naming what failed.
 */
export function verifyInclusion(index: number, size: number, leafHash: Uint8Array, proof: readonly Uint8Array[], root: Uint8Array, hasher?: MerkleHasher): void {
  const got = rootFromInclusionProof(index, size, leafHash, proof, hasher);
  if (!hashesEqual(got, root)) throw proofError(`the inclusion proof of leaf ${index} leads to a root that is not the root of the tree of size ${size}`);
}

/**
 * Checks that the tree of size `m` with root `root1` is a prefix of the tree
 * of size `n` with root `root2` (RFC 9162 §2.1.4.2). Equal sizes need equal
 * roots and an empty proof; size 0 is a prefix of every tree.
 *
 * @throws SigilError `ERR_TLOG_PROOF_INVALID` naming what failed.
 */
export function verifyConsistency(m: number, n: number, proof: readonly Uint8Array[], root1: Uint8Array, root2: Uint8Array, hasher: MerkleHasher = new MerkleHasher()): void {
  checkSize(m, "old tree size");
  checkSize(n, "new tree size");
  if (m > n) throw proofError(`old tree size ${m} is larger than new tree size ${n}`);
  checkProofHashes(proof);
  if (m === n) {
    if (proof.length !== 0) throw proofError(`a consistency proof between equal sizes ${m} must be empty, got ${proof.length} hashes`);
    if (!hashesEqual(root1, root2)) throw proofError(`two trees of size ${m} have different roots`);
    return;
  }
  if (m === 0) {
    if (proof.length !== 0) throw proofError(`a consistency proof from the empty tree must be empty, got ${proof.length} hashes`);
    return;
  }
  if (proof.length === 0) throw proofError(`the consistency proof from size ${m} to ${n} is empty`);
  const path: Uint8Array[] = [...proof];
  // When m is a power of two, the old root is itself the first node of the path.
  if (isPowerOfTwo(m)) path.unshift(root1);
  let fn = m - 1;
  let sn = n - 1;
  while (isOdd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = path[0] as Uint8Array;
  let sr = path[0] as Uint8Array;
  const what = `the consistency proof from size ${m} to ${n} has ${proof.length} hashes`;
  sn = walkProof(fn, sn, path.slice(1), what, {
    left: (c) => {
      fr = hasher.node(c, fr);
      sr = hasher.node(c, sr);
    },
    right: (c) => (sr = hasher.node(sr, c)),
  });
  if (sn !== 0) throw proofError(`${what}, fewer than needed`);
  if (!hashesEqual(fr, root1)) throw proofError(`the consistency proof from size ${m} to ${n} does not lead to the old root`);
  if (!hashesEqual(sr, root2)) throw proofError(`the consistency proof from size ${m} to ${n} does not lead to the new root`);
}

/**
 * The walk both verifications share (RFC 9162 §2.1.3.2 and §2.1.4.2): `fn` is
 * the position of the node being rebuilt, `sn` the last position at its level;
 * each proof hash is its left sibling (`left`) or right sibling (`right`).
 * Returns the final `sn`, which is 0 when the proof had exactly enough hashes.
 */
function walkProof(fn0: number, sn0: number, hashes: readonly Uint8Array[], what: string, on: { left(c: Uint8Array): void; right(c: Uint8Array): void }): number {
  let fn = fn0;
  let sn = sn0;
  for (const c of hashes) {
    if (sn === 0) throw proofError(`${what}, more than needed`);
    if (isOdd(fn) || fn === sn) {
      on.left(c);
      // Past the right edge of the tree the node has no right sibling: climb until it is a right child.
      while (!isOdd(fn) && fn !== 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      on.right(c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn;
}

function isPowerOfTwo(x: number): boolean {
  let p = 1;
  while (p < x) p *= 2;
  return p === x;
}
