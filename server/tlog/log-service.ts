/**
 * The issuance transparency log's server side. Entries are appended by the
 * datastore in the same transaction as the issuance records (see
 * {@link TlogService.credentialEntries}); this service turns the stored
 * entries into a Merkle tree, signs checkpoints with an Ed25519 log key held
 * by the key manager, and serves the tlog-tiles resources and inclusion
 * proofs ({@link TlogReadView}).
 *
 * At start it rebuilds the tree from the stored entries and checks it against
 * the last checkpoint this server stored: the tree of that checkpoint's size
 * must have its root (else the storage was rewritten) and the log must not be
 * shorter (truncated); either refuses to start. Afterwards it checkpoints
 * every `checkpointIntervalMs` when entries were added, and at once when
 * `checkpointBatch` entries are waiting.
 *
 * Hash tiles (levels 0, 8, 16, …) stay in memory, 32 bytes per node; entry
 * bundles are read from the datastore by index range, full ones cached up to
 * `maxCachedBundleBytes` (least recently used dropped first). A partial tile
 * or bundle of a tile that is full by now is answered as a slice of the full
 * one (C2SP tlog-tiles lets a log drop such partials; serving the slice keeps
 * clients that verified an older checkpoint working, at no extra memory).
 * Several servers on one database share the entries and each signs its own
 * checkpoints with its own key (`tlog_checkpoints.server_id`).
 */
import type { Logger } from "../../common/log.js";
import { SigilError } from "../../spiffe/errors.js";
import type { Signer } from "../../spiffe/signer.js";
import { parseCheckpoint, signCheckpoint } from "../../spiffe/tlog/checkpoint.js";
import { hashesEqual, HASH_SIZE, MerkleHasher, MerkleTreeBuilder } from "../../spiffe/tlog/hash.js";
import { createEd25519NoteVerifier, formatVerifierKey, parseNote, type NoteSigner } from "../../spiffe/tlog/note.js";
import { credentialLookupKey } from "../../spiffe/tlog/sigil-entry.js";
import { bundlePrefix, encodeEntryBundle, parseTilePath, TILE_HEIGHT, TILE_WIDTH, TileReader } from "../../spiffe/tlog/tiles.js";
import type { Datastore, TlogEntryInput } from "../datastore/index.js";
import type { KeyManager } from "../../plugins/keymanager/types.js";
import { ByteLru } from "./byte-lru.js";
import { authorityEntry, credentialLogInputs, toTlogInput, type LoggedAuthorityEvent, type LoggedCredential } from "./entry.js";
import type { TlogReadView, TlogResource } from "./types.js";

/** Default seconds between checkpoints. */
export const DEFAULT_CHECKPOINT_INTERVAL_MS = 1000;
/** Default entries waiting that trigger a checkpoint at once. */
export const DEFAULT_CHECKPOINT_BATCH = 1000;
/** Entries read per datastore call while rebuilding or extending the tree. */
const READ_CHUNK = 10_000;
/** Most leaf hashes of this server's own committed entries kept for the next checkpoint (32 bytes each); past it, entries are read back. */
const MAX_KNOWN_LEAVES = 200_000;
/** Default most bytes of full entry bundles kept in memory (a full bundle holds 256 entries of up to 64 KiB). */
export const DEFAULT_MAX_CACHED_BUNDLE_BYTES = 64 * 1024 * 1024;

/** What the issuance path needs of the log: entries to append with the records, and a count of those committed. */
export interface IssuanceLogSink {
  /** Log entries of issued credentials, to append in the records' transaction. */
  credentialEntries(credentials: readonly LoggedCredential[]): TlogEntryInput[];
  /**
   * Told after `count` entries were committed, so a full batch is checkpointed
   * at once; with the entries and the index the first was stored at, so the
   * tree takes them without reading them back.
   */
  appended(count: number, run?: AppendedRun): void;
}

/** Entries just committed at contiguous indices from `firstIndex`. */
export interface AppendedRun {
  readonly firstIndex: number;
  readonly entries: readonly TlogEntryInput[];
}

/** Dependencies of the {@link TlogService}. */
export interface TlogServiceDeps {
  readonly datastore: Pick<Datastore, "recordIssuances" | "tlogSize" | "readTlogEntries" | "findTlogEntry" | "putTlogCheckpoint" | "latestTlogCheckpoint" | "putTlogKey" | "listTlogKeys">;
  readonly keyManager: Pick<KeyManager, "generateKey" | "getKey">;
  /** The trust domain name; the log's origin is `<trust domain>/sigil/issuance`. */
  readonly trustDomain: string;
  /** This server instance's name (`server.server_id`): its checkpoints and keys are stored under it. */
  readonly serverId: string;
  readonly now: () => Date;
  readonly log?: Logger | undefined;
  readonly checkpointIntervalMs?: number | undefined;
  readonly checkpointBatch?: number | undefined;
  /** Most bytes of full entry bundles kept in memory (default {@link DEFAULT_MAX_CACHED_BUNDLE_BYTES}). */
  readonly maxCachedBundleBytes?: number | undefined;
  /** Timer used for the cadence (tests inject their own); returns a cancel function. Default `setTimeout`. */
  readonly schedule?: ((fn: () => void, ms: number) => () => void) | undefined;
  /** Told of each checkpoint signed and stored (the witness client sends it on); must not throw. */
  readonly onCheckpoint?: ((cp: { readonly note: string; readonly size: number; readonly rootHash: Uint8Array }) => void) | undefined;
}

interface Current {
  readonly note: string;
  readonly size: number;
  readonly rootHash: Uint8Array;
}

const defaultSchedule = (fn: () => void, ms: number): (() => void) => {
  const t = setTimeout(fn, ms);
  t.unref();
  return () => clearTimeout(t);
};

/** See the module comment. */
export class TlogService implements TlogReadView, IssuanceLogSink {
  readonly origin: string;
  readonly #d: TlogServiceDeps;
  readonly #intervalMs: number;
  readonly #batch: number;
  readonly #schedule: (fn: () => void, ms: number) => () => void;
  readonly #tree: MerkleTreeBuilder;
  /** Per tile level: full tiles (8 KiB each) and the hashes of the open one. */
  readonly #full: Buffer[][] = [];
  readonly #open: Buffer[][] = [];
  readonly #bundles: ByteLru<number, Buffer>;
  /** Leaf hashes of entries this server committed and the tree has not taken yet, by the index of the first of each run. */
  readonly #known = new Map<number, Buffer[]>();
  #knownLeaves = 0;
  readonly #hasher = new MerkleHasher();
  #signer!: NoteSigner;
  #keyId = "";
  #current: Current | undefined;
  #pending = 0;
  #running: Promise<void> = Promise.resolve();
  #cancel: (() => void) | undefined;
  #closed = false;

  private constructor(deps: TlogServiceDeps) {
    this.#d = deps;
    this.origin = `${deps.trustDomain}/sigil/issuance`;
    this.#intervalMs = deps.checkpointIntervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS;
    this.#batch = deps.checkpointBatch ?? DEFAULT_CHECKPOINT_BATCH;
    this.#schedule = deps.schedule ?? defaultSchedule;
    this.#bundles = new ByteLru(deps.maxCachedBundleBytes ?? DEFAULT_MAX_CACHED_BUNDLE_BYTES);
    this.#tree = new MerkleTreeBuilder({ onNode: (level, index, hash) => this.#node(level, index, hash) });
  }

  /**
   * Loads the log key, rebuilds the tree from the stored entries, checks it
   * against this server's last checkpoint, signs a checkpoint of the current
   * size, and starts the cadence.
   *
   * @throws SigilError `ERR_TLOG_INCONSISTENT` when the stored log was rewritten or truncated.
   */
  static async start(deps: TlogServiceDeps): Promise<TlogService> {
    const s = new TlogService(deps);
    await s.#loadKey();
    await s.#rebuild();
    await s.#checkpoint(true);
    s.#arm();
    return s;
  }

  // ── writing ────────────────────────────────────────────────────────────

  credentialEntries(credentials: readonly LoggedCredential[]): TlogEntryInput[] {
    return credentialLogInputs(credentials);
  }

  appended(count: number, run?: AppendedRun): void {
    if (run !== undefined && run.entries.length > 0 && run.firstIndex >= this.#tree.size && this.#knownLeaves + run.entries.length <= MAX_KNOWN_LEAVES) {
      this.#known.set(run.firstIndex, run.entries.map((e) => this.#hasher.leaf(e.entry)));
      this.#knownLeaves += run.entries.length;
    }
    this.#pending += count;
    if (this.#pending >= this.#batch && !this.#closed) void this.checkpoint().catch((e: unknown) => this.#d.log?.warn({ err: e }, "tlog: checkpoint failed"));
  }

  /** Appends an authority event (the CA manager's `onAuthorityEvent`). */
  async appendAuthorityEvent(e: LoggedAuthorityEvent): Promise<void> {
    await this.#d.datastore.recordIssuances([], [toTlogInput(authorityEntry(e))]);
    this.appended(1);
  }

  /** Reads entries added since the last checkpoint and signs a new one (serialized with other calls). */
  checkpoint(): Promise<void> {
    const run = this.#running.then(() => this.#checkpoint(false));
    this.#running = run.catch(() => undefined);
    return run;
  }

  /**
   * Replaces the log key with a fresh one (`tlog-<n+1>`), keeps the old one's
   * verifier key in the datastore (retired), and signs a checkpoint with the
   * new key. Returns the new verifier key.
   */
  async rotateKey(): Promise<string> {
    const run = this.#running.then(async () => {
      const vkey = await this.#newKey(await this.#ownKeys());
      await this.#checkpoint(true);
      return vkey;
    });
    this.#running = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** Stops the cadence after any checkpoint under way. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#cancel?.();
    await this.#running;
  }

  // ── TlogReadView ───────────────────────────────────────────────────────

  latestCheckpoint(): Current | undefined {
    return this.#current;
  }

  async resource(path: string): Promise<TlogResource | undefined> {
    if (path === "checkpoint") return this.#current ? { body: Buffer.from(this.#current.note, "utf8"), immutable: false } : undefined;
    let parsed;
    try {
      parsed = parseTilePath(path);
    } catch (e) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: malformed resource path ${JSON.stringify(path)}`, { cause: e });
    }
    const size = this.#current?.size ?? 0;
    if (parsed.kind === "entries") {
      const first = parsed.index * TILE_WIDTH;
      if (first + parsed.width > size) return undefined;
      const immutable = parsed.width === TILE_WIDTH;
      // A partial of a bundle that is full by now: a slice of the full one, which is cached.
      if (immutable || first + TILE_WIDTH <= size) {
        const full = await this.#fullBundle(parsed.index);
        return { body: immutable ? full : bundlePrefix(full, parsed.width), immutable };
      }
      return { body: await this.#readBundle(first, parsed.width), immutable };
    }
    const body = this.#tile(parsed.tile.level, parsed.tile.index, parsed.tile.width, size);
    return body === undefined ? undefined : { body, immutable: parsed.tile.width === TILE_WIDTH };
  }

  async prove(lookup: { readonly serial: string } | { readonly jwtSha256: string }): Promise<{ readonly index: number; readonly entry: Uint8Array; readonly proof: readonly Uint8Array[]; readonly checkpoint: string } | undefined> {
    const cp = this.#current;
    const found = await this.#d.datastore.findTlogEntry(credentialLookupKey(lookup));
    if (cp === undefined || found === undefined || found.index >= cp.size) return undefined;
    const reader = new TileReader((p) => {
      const r = parseTilePath(p);
      const t = r.kind === "hash" ? this.#tile(r.tile.level, r.tile.index, r.tile.width, cp.size) : undefined;
      // The entry is inside the checkpoint, so every tile of its proof must exist: a missing one is our inconsistency.
      return t ? Promise.resolve(t) : Promise.reject(new SigilError("ERR_INTERNAL", `tlog: tile ${p}, needed to prove entry ${found.index} against the checkpoint of size ${cp.size}, is missing`));
    }, cp.size);
    const proof = await reader.inclusionProof(found.index);
    return { index: found.index, entry: found.entry, proof, checkpoint: cp.note };
  }

  async verifierKeys(): Promise<readonly string[]> {
    return (await this.#d.datastore.listTlogKeys()).map((k) => k.vkey);
  }

  // ── internals ──────────────────────────────────────────────────────────

  /** Full entry bundle `index`, from the cache or read and cached. */
  async #fullBundle(index: number): Promise<Buffer> {
    const hit = this.#bundles.get(index);
    if (hit) return hit;
    const body = await this.#readBundle(index * TILE_WIDTH, TILE_WIDTH);
    this.#bundles.set(index, body, body.length);
    return body;
  }

  /** The bundle of the `count` stored entries from `first`. */
  async #readBundle(first: number, count: number): Promise<Buffer> {
    const entries = await this.#d.datastore.readTlogEntries(first, first + count);
    if (entries.length !== count) throw new SigilError("ERR_INTERNAL", `tlog: entries ${first}..${first + count - 1} are not all stored`);
    return encodeEntryBundle(entries);
  }

  #node(level: number, index: number, hash: Buffer): void {
    if (level % TILE_HEIGHT !== 0) return;
    const l = level / TILE_HEIGHT;
    const open = (this.#open[l] ??= []);
    open.push(hash);
    if (open.length === TILE_WIDTH) {
      (this.#full[l] ??= [])[Math.floor(index / TILE_WIDTH)] = Buffer.concat(open);
      open.length = 0;
    }
  }

  /** Tile `(level, index)` of width `width` as of tree size `size`, or undefined when that size has no such tile. */
  #tile(level: number, index: number, width: number, size: number): Buffer | undefined {
    const hashesAtLevel = Math.floor(size / TILE_WIDTH ** level);
    if (index * TILE_WIDTH + width > hashesAtLevel) return undefined;
    const full = this.#full[level]?.[index];
    if (full !== undefined) return width === TILE_WIDTH ? full : full.subarray(0, width * HASH_SIZE);
    const open = this.#open[level] ?? [];
    if ((this.#full[level]?.length ?? 0) !== index || open.length < width) return undefined;
    return Buffer.concat(open.slice(0, width));
  }

  async #ownKeys() {
    return (await this.#d.datastore.listTlogKeys()).filter((k) => k.serverId === this.#d.serverId);
  }

  /** The current key from the key manager, or a new one when it holds none (a memory key manager after restart). */
  async #loadKey(): Promise<void> {
    const own = await this.#ownKeys();
    const current = own.find((k) => k.retiredAt === null);
    const signer = current ? await this.#d.keyManager.getKey(current.keyId) : undefined;
    if (current && signer) {
      this.#use(current.keyId, signer);
      return;
    }
    await this.#newKey(own);
  }

  async #newKey(own: readonly { keyId: string; vkey: string; createdAt: Date; retiredAt: Date | null }[]): Promise<string> {
    const n = own.reduce((max, k) => Math.max(max, Number(/^tlog-(\d+)$/.exec(k.keyId)?.[1] ?? 0)), 0) + 1;
    const keyId = `tlog-${n}`;
    const signer = await this.#d.keyManager.generateKey(keyId, "ed25519");
    const now = this.#d.now();
    const vkey = formatVerifierKey(this.origin, signer.publicKey);
    // Recorded before it signs anything, so every checkpoint's key is findable.
    await this.#d.datastore.putTlogKey({ serverId: this.#d.serverId, keyId, vkey, createdAt: now, retiredAt: null });
    for (const k of own) if (k.retiredAt === null) await this.#d.datastore.putTlogKey({ serverId: this.#d.serverId, keyId: k.keyId, vkey: k.vkey, createdAt: k.createdAt, retiredAt: now });
    this.#use(keyId, signer);
    this.#d.log?.info({ key_id: keyId }, "tlog: new log key");
    return vkey;
  }

  #use(keyId: string, signer: Signer): void {
    const { keyId: noteKeyId } = createEd25519NoteVerifier(this.origin, signer.publicKey);
    this.#keyId = keyId;
    this.#signer = { name: this.origin, keyId: noteKeyId, sign: (m) => signer.sign(m, { hash: "sha512" }) };
  }

  /** Rebuilds the tree from every stored entry and checks it against the last checkpoint. */
  async #rebuild(): Promise<void> {
    const stored = await this.#d.datastore.latestTlogCheckpoint(this.#d.serverId);
    const last = stored === undefined ? undefined : { ...stored, note: this.#loadableNote(stored.note) };
    const lastCp = last === undefined ? undefined : parseCheckpoint(parseNote(last.note).text);
    if (lastCp !== undefined && lastCp.origin !== this.origin) {
      throw new SigilError("ERR_TLOG_INCONSISTENT", `tlog: the last checkpoint is for origin ${lastCp.origin}, this server's log is ${this.origin}`);
    }
    const check = (): void => {
      if (lastCp === undefined || this.#tree.size !== lastCp.size) return;
      const root = this.#tree.root();
      if (!hashesEqual(root, lastCp.rootHash)) {
        throw new SigilError(
          "ERR_TLOG_INCONSISTENT",
          `tlog: the stored log was rewritten: its first ${lastCp.size} entries have root ${root.toString("base64")}, the last checkpoint says ${Buffer.from(lastCp.rootHash).toString("base64")}; refusing to start`,
        );
      }
    };
    check();
    await this.#extend(check);
    if (lastCp !== undefined && this.#tree.size < lastCp.size) {
      throw new SigilError("ERR_TLOG_INCONSISTENT", `tlog: the stored log was truncated: it has ${this.#tree.size} entries, the last checkpoint covers ${lastCp.size}; refusing to start`);
    }
    this.#current = lastCp && last && lastCp.size === this.#tree.size ? { note: last.note, size: lastCp.size, rootHash: lastCp.rootHash } : undefined;
    this.#d.log?.info({ size: this.#tree.size, checkpoint: lastCp?.size }, "tlog: tree rebuilt");
  }

  /**
   * Appends every stored entry past the tree's size, calling `each` after
   * each entry. Runs this server committed are taken by the leaf hashes kept
   * when they were appended; only the others (another server's, or any not
   * kept) are read from the datastore.
   */
  async #extend(each?: () => void): Promise<void> {
    const size = await this.#d.datastore.tlogSize();
    while (this.#tree.size < size) {
      const start = this.#tree.size;
      const own = this.#takeKnown(start, size);
      if (own !== undefined) {
        for (const h of own) {
          this.#tree.appendLeafHash(h);
          each?.();
        }
        continue;
      }
      let end = Math.min(size, start + READ_CHUNK);
      for (const k of this.#known.keys()) if (k > start && k < end) end = k;
      const entries = await this.#d.datastore.readTlogEntries(start, end);
      if (entries.length === 0) throw new SigilError("ERR_TLOG_INCONSISTENT", `tlog: entry ${start} is missing from the store (size ${size})`);
      for (const e of entries) {
        this.#tree.appendEntry(e);
        each?.();
      }
    }
  }

  /** The kept leaf hashes of the run starting at `start` when all of it is below `size`; forgets runs the tree has passed. */
  #takeKnown(start: number, size: number): Buffer[] | undefined {
    let found: Buffer[] | undefined;
    for (const [k, run] of this.#known) {
      if (k > start) continue;
      this.#known.delete(k);
      this.#knownLeaves -= run.length;
      if (k === start && start + run.length <= size) found = run;
    }
    return found;
  }

  async #checkpoint(force: boolean): Promise<void> {
    if (this.#closed && !force) return;
    this.#pending = 0;
    await this.#extend();
    const size = this.#tree.size;
    const cur = this.#current;
    if (!force && cur !== undefined && cur.size === size) return;
    // A checkpoint at start keeps the stored one when it is of this size and signed by the current key.
    if (force && cur !== undefined && cur.size === size && this.#signedByCurrentKey(cur.note)) return;
    const rootHash = this.#tree.root();
    const note = signCheckpoint({ origin: this.origin, size, rootHash, extensions: [] }, [this.#signer]);
    await this.#d.datastore.putTlogCheckpoint({ serverId: this.#d.serverId, treeSize: size, rootHash, note, createdAt: this.#d.now() });
    this.#current = { note, size, rootHash };
    this.#d.log?.debug({ size, key_id: this.#keyId }, "tlog: checkpoint signed");
    this.#d.onCheckpoint?.(this.#current);
  }

  #signedByCurrentKey(note: string): boolean {
    return parseNote(note).signatures.some((sig) => sig.name === this.#signer.name && sig.keyId === this.#signer.keyId);
  }

  /**
   * The stored checkpoint note as this service can serve it: as it is, or,
   * when `parseNote` refuses it for carrying more signature lines than a note
   * may (an earlier version let a witness's junk in), its text with the log's
   * own lines (named after the origin) only; the witnesses cosign it again.
   */
  #loadableNote(note: string): string {
    try {
      parseNote(note);
      return note;
    } catch {
      // Read again below without the line limit; a note malformed otherwise still throws there.
    }
    const parsed = parseNote(note, { maxSignatures: Number.MAX_SAFE_INTEGER });
    const own = note
      .slice(parsed.text.length + 1, -1)
      .split("\n")
      .filter((l) => l.startsWith(`\u2014 ${this.origin} `));
    this.#d.log?.warn({ signatures: parsed.signatures.length, kept: own.length }, "tlog: the stored checkpoint carries too many signature lines; keeping the log's own");
    if (own.length === 0) throw new SigilError("ERR_TLOG_INCONSISTENT", `tlog: the stored checkpoint carries ${parsed.signatures.length} signature lines and none of the log's; refusing to start`);
    return `${parsed.text}\n${own.join("\n")}\n`;
  }

  #arm(): void {
    if (this.#closed) return;
    this.#cancel = this.#schedule(() => {
      this.checkpoint()
        .catch((e: unknown) => this.#d.log?.warn({ err: e }, "tlog: checkpoint failed"))
        .finally(() => this.#arm());
    }, this.#intervalMs);
  }
}
