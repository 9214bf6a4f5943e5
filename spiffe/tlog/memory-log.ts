/**
 * A tiled transparency log held in memory: append entries, publish a signed
 * checkpoint, serve every resource a tlog-tiles client fetches. It is the
 * reference the tests and benchmarks verify against, and shows the order a
 * log server writes things in (full tiles and bundles once, partial ones per
 * checkpoint).
 */
import { SigilError } from "../errors.js";
import { signCheckpoint } from "./checkpoint.js";
import { MerkleTreeBuilder } from "./hash.js";
import type { NoteSigner } from "./note.js";
import { TILE_HEIGHT, TILE_WIDTH, encodeEntryBundle, entriesPath, tilePath, tilesForSize, type TlogFetch } from "./tiles.js";

/**
 * An in-memory tiled log. `files` maps resource paths (`checkpoint`,
 * `tile/0/000`, `tile/entries/000.p/7`, …) to their bytes as of the last
 * {@link publish}; tests may alter it to simulate tampering.
 */
export class MemoryTlog {
  readonly origin: string;
  readonly files = new Map<string, Uint8Array>();
  readonly #signers: readonly NoteSigner[];
  readonly #tree: MerkleTreeBuilder;
  // Hashes at Merkle levels 0, 8, 16, … not yet in a full tile.
  readonly #open: Buffer[][] = [];
  #pendingEntries: Uint8Array[] = [];

  constructor(origin: string, signers: readonly NoteSigner[]) {
    if (signers.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", "memory tlog: at least one signer is needed");
    this.origin = origin;
    this.#signers = signers;
    this.#tree = new MerkleTreeBuilder({ onNode: (level, index, hash) => this.#node(level, index, hash) });
  }

  /** Entries appended so far (published or not). */
  get size(): number {
    return this.#tree.size;
  }

  /** The current root hash. */
  root(): Buffer {
    return this.#tree.root();
  }

  /** Appends one entry (at most 65,535 bytes); returns its index. */
  append(entry: Uint8Array): number {
    if (entry.length > 0xffff) throw new SigilError("ERR_INVALID_ARGUMENT", `memory tlog: an entry has at most 65535 bytes, got ${entry.length}`);
    const index = this.#tree.size;
    this.#pendingEntries.push(entry);
    this.#tree.appendEntry(entry);
    if (this.#pendingEntries.length === TILE_WIDTH) {
      this.files.set(entriesPath(Math.floor(index / TILE_WIDTH), TILE_WIDTH), encodeEntryBundle(this.#pendingEntries));
      this.#pendingEntries = [];
    }
    return index;
  }

  #node(level: number, index: number, hash: Buffer): void {
    if (level % TILE_HEIGHT !== 0) return;
    const tileLevel = level / TILE_HEIGHT;
    const open = (this.#open[tileLevel] ??= []);
    open.push(hash);
    if (open.length === TILE_WIDTH) {
      this.files.set(tilePath({ level: tileLevel, index: Math.floor(index / TILE_WIDTH), width: TILE_WIDTH }), Buffer.concat(open));
      open.length = 0;
    }
  }

  /**
   * Writes the partial tiles and bundle of the current size and a checkpoint
   * signed by every signer; returns the checkpoint note.
   */
  publish(): string {
    const size = this.#tree.size;
    for (const t of tilesForSize(size)) {
      if (t.width === TILE_WIDTH) continue;
      const hashes = this.#open[t.level] ?? [];
      this.files.set(tilePath(t), Buffer.concat(hashes.slice(0, t.width)));
    }
    if (this.#pendingEntries.length > 0) {
      this.files.set(entriesPath(Math.floor(size / TILE_WIDTH), this.#pendingEntries.length), encodeEntryBundle(this.#pendingEntries));
    }
    const note = signCheckpoint({ origin: this.origin, size, rootHash: this.#tree.root(), extensions: [] }, this.#signers);
    this.files.set("checkpoint", Buffer.from(note, "utf8"));
    return note;
  }

  /** Serves `files`; a missing path rejects with `ERR_NOT_FOUND`. */
  readonly fetch: TlogFetch = (path) => {
    const f = this.files.get(path);
    return f === undefined ? Promise.reject(new SigilError("ERR_NOT_FOUND", `memory tlog: no resource ${path}`)) : Promise.resolve(f);
  };
}
