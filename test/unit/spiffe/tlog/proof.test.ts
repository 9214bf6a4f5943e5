import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { errorText } from "./support.js";
import { MerkleTreeBuilder, emptyRoot, frontierLevels, leafHash, nodeHash } from "../../../../spiffe/tlog/hash.js";
import {
  consistencyProof,
  inclusionProof,
  rootFromInclusionProof,
  treeRoot,
  verifyConsistency,
  verifyInclusion,
  type HashReader,
} from "../../../../spiffe/tlog/proof.js";

const hex = (s: string): Buffer => Buffer.from(s, "hex");

/** From-scratch RFC 6962 §2.1 definitions over leaf hashes, memoized by range. */
class Reference {
  readonly #memo = new Map<string, Buffer>();
  constructor(readonly leaves: readonly Buffer[]) {}

  mth(lo: number, hi: number): Buffer {
    const key = `${lo}:${hi}`;
    const hit = this.#memo.get(key);
    if (hit) return hit;
    let h: Buffer;
    if (hi - lo === 1) h = this.leaves[lo] as Buffer;
    else {
      let k = 1;
      while (k * 2 < hi - lo) k *= 2;
      h = nodeHash(this.mth(lo, lo + k), this.mth(lo + k, hi));
    }
    this.#memo.set(key, h);
    return h;
  }

  /** PATH(m, D[lo:hi]). */
  path(m: number, lo: number, hi: number): Buffer[] {
    if (hi - lo === 1) return [];
    let k = 1;
    while (k * 2 < hi - lo) k *= 2;
    return m < k ? [...this.path(m, lo, lo + k), this.mth(lo + k, hi)] : [...this.path(m - k, lo + k, hi), this.mth(lo, lo + k)];
  }

  /** SUBPROOF(m, D[lo:hi], b). */
  subproof(m: number, lo: number, hi: number, b: boolean): Buffer[] {
    const n = hi - lo;
    if (m === n) return b ? [] : [this.mth(lo, hi)];
    let k = 1;
    while (k * 2 < n) k *= 2;
    return m <= k ? [...this.subproof(m, lo, lo + k, b), this.mth(lo + k, hi)] : [...this.subproof(m - k, lo + k, hi, false), this.mth(lo, lo + k)];
  }
}

/** Every full subtree hash of a tree, recorded as the builder completes it. */
function memoryTree(leaves: readonly Buffer[]): { read: HashReader; builder: MerkleTreeBuilder } {
  const levels: Buffer[][] = [];
  const builder = new MerkleTreeBuilder({ onNode: (level, index, hash) => ((levels[level] ??= [])[index] = hash) });
  for (const l of leaves) builder.appendLeafHash(l);
  const read: HashReader = (level, index) => {
    const h = levels[level]?.[index];
    if (!h) throw new Error(`no node (${level}, ${index})`);
    return h;
  };
  return { read, builder };
}

function leavesOf(n: number): Buffer[] {
  return Array.from({ length: n }, (_, i) => leafHash(Buffer.from(`entry ${i}`)));
}


// Known answers from transparency-dev/merkle (testonly/constants.go and
// proof/verify_test.go), the RFC 6962 reference vectors also used by Certificate
// Transparency implementations. Their proof vectors number leaves from 1.
const KAT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"].map(hex);
const KAT_ROOTS = [
  "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
  "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
  "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
  "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
  "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
  "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
  "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
].map(hex);
const KAT_INCLUSION: [leaf: number, size: number, proof: string[]][] = [
  [1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]],
  [6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]],
  [3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]],
  [2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]],
];
const KAT_CONSISTENCY: [m: number, n: number, proof: string[]][] = [
  [1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]],
  [6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]],
  [2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]],
  [6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]],
];

describe("RFC 6962 known answers", () => {
  const leaves = KAT_LEAVES.map((l) => leafHash(l));
  const { read } = memoryTree(leaves);

  it("hashes the empty tree, leaves and roots of sizes 1..8 as published", () => {
    expect(emptyRoot().toString("hex")).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(leaves[0]?.toString("hex")).toBe("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
    const b = new MerkleTreeBuilder();
    KAT_LEAVES.forEach((l, i) => {
      b.appendEntry(l);
      expect(b.root().toString("hex"), `size ${i + 1}`).toBe(KAT_ROOTS[i]?.toString("hex"));
      expect(Buffer.from(treeRoot(i + 1, read)).toString("hex")).toBe(KAT_ROOTS[i]?.toString("hex"));
    });
  });

  it.each(KAT_INCLUSION)("inclusion proof of leaf %i (1-based) in a tree of %i", (leaf, size, proof) => {
    const got = inclusionProof(leaf - 1, size, read).map((h) => Buffer.from(h).toString("hex"));
    expect(got).toEqual(proof);
    verifyInclusion(leaf - 1, size, leaves[leaf - 1] as Buffer, proof.map(hex), KAT_ROOTS[size - 1] as Buffer);
  });

  it.each(KAT_CONSISTENCY)("consistency proof from %i to %i", (m, n, proof) => {
    const got = consistencyProof(m, n, read).map((h) => Buffer.from(h).toString("hex"));
    expect(got).toEqual(proof);
    verifyConsistency(m, n, proof.map(hex), KAT_ROOTS[m - 1] as Buffer, KAT_ROOTS[n - 1] as Buffer);
  });

  it("refuses corrupted known proofs (wrong index, size, root, extra/missing/flipped hashes)", () => {
    const [leaf, size, proofHex] = KAT_INCLUSION[1] as [number, number, string[]];
    const proof = proofHex.map(hex);
    const lh = leaves[leaf - 1] as Buffer;
    const root = KAT_ROOTS[size - 1] as Buffer;
    const bad: [string, () => void][] = [
      ["index - 1", () => verifyInclusion(leaf - 2, size, lh, proof, root)],
      ["index + 1", () => verifyInclusion(leaf, size, lh, proof, root)],
      ["size * 2", () => verifyInclusion(leaf - 1, size * 2, lh, proof, root)],
      ["size / 2", () => verifyInclusion(leaf - 1, size / 2, lh, proof, root)],
      ["empty root", () => verifyInclusion(leaf - 1, size, lh, proof, emptyRoot())],
      ["trailing root", () => verifyInclusion(leaf - 1, size, lh, [...proof, root], root)],
      ["preceding root", () => verifyInclusion(leaf - 1, size, lh, [root, ...proof], root)],
      ["removed component", () => verifyInclusion(leaf - 1, size, lh, proof.slice(0, -1), root)],
      ["flipped bit", () => verifyInclusion(leaf - 1, size, lh, [Buffer.from(proof[0] as Buffer).fill(8, 0, 1), ...proof.slice(1)], root)],
    ];
    for (const [what, fn] of bad) expect(errorText(fn), what).toMatch(/^ERR_TLOG_PROOF_INVALID: tlog: /);
    const [m, n, cHex] = KAT_CONSISTENCY[1] as [number, number, string[]];
    const c = cHex.map(hex);
    const r1 = KAT_ROOTS[m - 1] as Buffer;
    const r2 = KAT_ROOTS[n - 1] as Buffer;
    const badC: [string, () => void][] = [
      ["swapped roots", () => verifyConsistency(m, n, c, r2, r1)],
      ["empty proof", () => verifyConsistency(m, n, [], r1, r2)],
      ["truncated", () => verifyConsistency(m, n, c.slice(0, -1), r1, r2)],
      ["trailing root", () => verifyConsistency(m, n, [...c, r2], r1, r2)],
      ["m + 1", () => verifyConsistency(m + 1, n, c, r1, r2)],
      ["n * 2", () => verifyConsistency(m, n * 2, c, r1, r2)],
      ["old bigger than new", () => verifyConsistency(n, m, c, r1, r2)],
      ["equal sizes, different roots", () => verifyConsistency(n, n, [], r1, r2)],
      ["equal sizes, non-empty proof", () => verifyConsistency(n, n, c, r2, r2)],
      ["wrong hash length", () => verifyConsistency(m, n, [Buffer.alloc(31), ...c.slice(1)], r1, r2)],
    ];
    for (const [what, fn] of badC) expect(errorText(fn), what).toMatch(/^ERR_TLOG_PROOF_INVALID: tlog: /);
  });
});

describe("proofs match a from-scratch recomputation", () => {
  const leaves = leavesOf(300);
  const ref = new Reference(leaves);
  const { read } = memoryTree(leaves);

  it("every inclusion proof for every tree size 1..300", () => {
    for (let n = 1; n <= 300; n++) {
      const root = ref.mth(0, n);
      expect(Buffer.from(treeRoot(n, read)).equals(root), `root ${n}`).toBe(true);
      for (let i = 0; i < n; i++) {
        const proof = inclusionProof(i, n, read);
        const want = ref.path(i, 0, n);
        expect(proof.length).toBe(want.length);
        proof.forEach((h, j) => {
          if (!Buffer.from(h).equals(want[j] as Buffer)) throw new Error(`inclusion proof ${i}/${n} differs at ${j}`);
        });
        verifyInclusion(i, n, leaves[i] as Buffer, proof, root);
        if (i + 1 < n) expect(errorText(() => verifyInclusion(i + 1, n, leaves[i] as Buffer, proof, root))).toMatch(/ERR_TLOG_PROOF_INVALID/);
      }
    }
  });

  it("every consistency proof for every pair m ≤ n ≤ 300", () => {
    for (let n = 1; n <= 300; n++) {
      const root2 = ref.mth(0, n);
      for (let m = 0; m <= n; m++) {
        const proof = consistencyProof(m, n, read);
        const want = m === 0 || m === n ? [] : ref.subproof(m, 0, n, true);
        expect(proof.length).toBe(want.length);
        proof.forEach((h, j) => {
          if (!Buffer.from(h).equals(want[j] as Buffer)) throw new Error(`consistency proof ${m}->${n} differs at ${j}`);
        });
        const root1 = m === 0 ? emptyRoot() : ref.mth(0, m);
        verifyConsistency(m, n, proof, root1, root2);
        if (m > 0 && m < n) {
          // Another tree of size m (last leaf changed) must not verify.
          const forked = m === 1 ? leafHash(Buffer.from("other")) : nodeHash(ref.mth(0, m), ref.mth(0, 1));
          expect(errorText(() => verifyConsistency(m, n, proof, forked, root2))).toMatch(/ERR_TLOG_PROOF_INVALID/);
        }
      }
    }
  });
});

describe("proofs around tile boundaries", () => {
  const N = 65_537;
  const leaves = leavesOf(N);
  const ref = new Reference(leaves);
  const { read } = memoryTree(leaves);
  const sizes = [255, 256, 257, 511, 512, 513, 65_535, 65_536, 65_537];

  it("inclusion proofs at and around 255, 256, 257 and 65,536", () => {
    for (const n of sizes) {
      const root = ref.mth(0, n);
      expect(Buffer.from(treeRoot(n, read)).equals(root), `root ${n}`).toBe(true);
      for (const i of [0, 1, 127, 128, 254, 255, 256, 257, 65_279, 65_280, 65_535, 65_536, n - 1]) {
        if (i >= n) continue;
        const proof = inclusionProof(i, n, read);
        expect(proof.map((h) => Buffer.from(h).toString("hex")), `${i}/${n}`).toEqual(ref.path(i, 0, n).map((h) => h.toString("hex")));
        verifyInclusion(i, n, leaves[i] as Buffer, proof, root);
      }
    }
  });

  it("consistency proofs between boundary sizes", () => {
    for (const n of sizes) {
      for (const m of [1, 2, 128, ...sizes]) {
        if (m > n) continue;
        const proof = consistencyProof(m, n, read);
        const want = m === n ? [] : ref.subproof(m, 0, n, true);
        expect(proof.map((h) => Buffer.from(h).toString("hex")), `${m}->${n}`).toEqual(want.map((h) => h.toString("hex")));
        verifyConsistency(m, n, proof, ref.mth(0, m), ref.mth(0, n));
      }
    }
  });
});

describe("MerkleTreeBuilder", () => {
  it("keeps hashes in memory of its own, not slices of Node's shared buffer pool (a kept slice would pin 8 KiB of unrelated data)", () => {
    const hashes = Array.from({ length: 600 }, (_, i) => leafHash(Buffer.from(`entry ${i}`)));
    for (const [i, h] of hashes.entries()) {
      expect(h.length).toBe(32);
      expect(h.buffer.byteLength).not.toBe(Buffer.poolSize);
      expect(Buffer.from(h)).toEqual(createHash("sha256").update(Buffer.concat([Buffer.from([0]), Buffer.from(`entry ${i}`)])).digest());
    }
    // Never handed out twice: no two hashes share bytes.
    const offsetsByBuffer = new Map<ArrayBufferLike, Set<number>>();
    for (const h of hashes) {
      const seen = offsetsByBuffer.get(h.buffer) ?? new Set<number>();
      expect(seen.has(h.byteOffset)).toBe(false);
      seen.add(h.byteOffset);
      offsetsByBuffer.set(h.buffer, seen);
    }
  });

  it("keeps one frontier hash per set bit of the size and restarts from it", () => {
    const leaves = leavesOf(300);
    const ref = new Reference(leaves);
    const b = new MerkleTreeBuilder();
    for (let i = 0; i < 300; i++) {
      b.appendLeafHash(leaves[i] as Buffer);
      const size = i + 1;
      const f = b.frontier();
      expect(f.length).toBe(frontierLevels(size).length);
      if (size % 37 === 0) {
        const resumed = MerkleTreeBuilder.fromFrontier(size, f);
        for (let j = size; j < 300; j++) resumed.appendLeafHash(leaves[j] as Buffer);
        expect(resumed.root().equals(ref.mth(0, 300))).toBe(true);
      }
    }
    expect(b.root().equals(ref.mth(0, 300))).toBe(true);
  });

  it("refuses a frontier of the wrong shape, naming what is wrong", () => {
    expect(errorText(() => MerkleTreeBuilder.fromFrontier(5, [Buffer.alloc(32)]))).toBe("ERR_INVALID_ARGUMENT: tlog: a tree of size 5 has a frontier of 2 hashes, got 1");
    expect(errorText(() => MerkleTreeBuilder.fromFrontier(1, [Buffer.alloc(31)]))).toBe("ERR_INVALID_ARGUMENT: tlog: frontier hash 0 has 31 bytes, expected 32");
    expect(errorText(() => MerkleTreeBuilder.fromFrontier(-1, []))).toMatch(/tree size must be an integer/);
  });

  it("hashes leaves as SHA-256(0x00 || entry) with a reused scratch buffer", () => {
    const b = new MerkleTreeBuilder();
    const big = Buffer.alloc(5000, 7);
    const small = Buffer.from("x");
    expect(b.appendEntry(big).equals(createHash("sha256").update(Buffer.of(0)).update(big).digest())).toBe(true);
    expect(b.appendEntry(small).equals(createHash("sha256").update(Buffer.of(0)).update(small).digest())).toBe(true);
  });
});

describe("proof argument checks", () => {
  it("names the bad argument", () => {
    const read: HashReader = () => Buffer.alloc(32);
    expect(errorText(() => inclusionProof(3, 3, read))).toBe("ERR_INVALID_ARGUMENT: tlog: leaf index 3 is not in a tree of size 3");
    expect(errorText(() => consistencyProof(4, 3, read))).toBe("ERR_INVALID_ARGUMENT: tlog: old tree size 4 is larger than new tree size 3");
    expect(errorText(() => rootFromInclusionProof(0, 1, Buffer.alloc(31), []))).toBe("ERR_TLOG_PROOF_INVALID: tlog: the leaf hash has 31 bytes, expected 32");
    expect(errorText(() => treeRoot(1.5, read))).toMatch(/ERR_INVALID_ARGUMENT: tlog: tree size must be an integer/);
  });
});
