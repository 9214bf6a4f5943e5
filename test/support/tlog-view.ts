/**
 * A {@link TlogReadView} backed by the library's in-memory reference log, for
 * tests of the log's readers (tiles listener, LogAdmin, `log verify`) without
 * the server's log service. Entries are canonical JSON objects; `prove`
 * finds one by its `serial` or `jwtSha256` field.
 */
import { openCheckpoint } from "../../spiffe/tlog/checkpoint.js";
import { MemoryTlog } from "../../spiffe/tlog/memory-log.js";
import { generateNoteKey, parseVerifierKey, type NoteSigner } from "../../spiffe/tlog/note.js";
import { TileReader, decodeEntryBundle, entryBundlesForSize, entriesPath, parseTilePath } from "../../spiffe/tlog/tiles.js";
import { canonicalJson } from "../../spiffe/tlog/sigil-entry.js";
import type { TlogReadView, TlogResource } from "../../server/tlog/types.js";

/** The fake view, its log (append, publish, tamper with `log.files`) and its key. */
export interface MemoryTlogView extends TlogReadView {
  /** Rotations so far (the fake only records them). */
  readonly rotations: string[];
  rotateKey(): Promise<string>;
  readonly log: MemoryTlog;
  readonly vkey: string;
  readonly signer: NoteSigner;
  /** Appends JSON objects (RFC 8785 canonical) and publishes a checkpoint; returns the checkpoint note. */
  appendAndPublish(entries: readonly object[]): string;
}

/** A fake view of an empty log with a fresh key. */
export function memoryTlogView(origin = "example.org/sigil/issuance"): MemoryTlogView {
  const key = generateNoteKey(origin);
  const log = new MemoryTlog(origin, [key.signer]);
  const verifiers = [parseVerifierKey(key.vkey)];
  let published: string | undefined;
  const rotations: string[] = [];

  const checkpoint = (): { note: string; size: number; rootHash: Uint8Array } | undefined => {
    if (published === undefined) return undefined;
    const { checkpoint: cp } = openCheckpoint(published, verifiers);
    return { note: published, size: cp.size, rootHash: cp.rootHash };
  };

  return {
    origin,
    log,
    vkey: key.vkey,
    signer: key.signer,
    appendAndPublish(entries) {
      for (const e of entries) log.append(Buffer.from(canonicalJson(e), "utf8"));
      published = log.publish();
      return published;
    },
    latestCheckpoint: checkpoint,
    async resource(path): Promise<TlogResource | undefined> {
      if (path !== "checkpoint") parseTilePath(path);
      const body = log.files.get(path);
      return body === undefined ? undefined : { body, immutable: path !== "checkpoint" && !path.includes(".p/") };
    },
    async prove(lookup) {
      const cp = checkpoint();
      if (cp === undefined) return undefined;
      let index = 0;
      for (const b of entryBundlesForSize(cp.size)) {
        for (const entry of decodeEntryBundle(log.files.get(entriesPath(b.index, b.width)) as Uint8Array)) {
          const obj = JSON.parse(Buffer.from(entry).toString("utf8")) as Record<string, unknown>;
          const hit = "serial" in lookup ? obj.serial === lookup.serial : obj.jwtSha256 === lookup.jwtSha256;
          if (hit) {
            const proof = await new TileReader(log.fetch, cp.size).inclusionProof(index);
            return { index, entry, proof, checkpoint: cp.note };
          }
          index++;
        }
      }
      return undefined;
    },
    async verifierKeys() {
      return [key.vkey, ...rotations];
    },
    rotations,
    async rotateKey() {
      const next = generateNoteKey(origin).vkey;
      rotations.push(next);
      return next;
    },
  };
}
