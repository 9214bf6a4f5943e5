/**
 * The tiles listener's memory in front of the log: the resources an
 * anonymous client can ask for again and again without the answer changing
 * (security review M2). Full tiles and full entry bundles are already kept
 * by the log service; what is kept here:
 *
 * - the right-edge partial tiles and partial entry bundles (`…/<N>.p/<W>`
 *   where tile N is not full at the latest checkpoint's tree size), kept
 *   while that size stays the same: they only change (appear) when the tree
 *   grows. At most `maxPartialBytes` of bodies, least recently used dropped
 *   first. A tile's bytes never change once it exists, so an answer read
 *   while a checkpoint was being signed is still right afterwards. A partial
 *   of a tile that is full by now goes to the view uncached: the log service
 *   answers it as a slice of the full one it keeps (no copy), so asking for
 *   many of them pins no more than the full-bundle cache.
 * - the verifier key list (`/log-keys`), kept while the latest checkpoint
 *   note stays the same (a key rotation signs a new one) and at most
 *   `keysMaxAgeMs`, so keys another server on the database added show up.
 *
 * Concurrent requests for the same thing share one read; a failed read is
 * not kept.
 */
import { systemClock, type Clock } from "../../common/clock.js";
import { parseTilePath, TILE_WIDTH, tileWidth } from "../../spiffe/tlog/tiles.js";
import { ByteLru } from "./byte-lru.js";
import type { TlogReadView, TlogResource } from "./types.js";

/** Default most bytes of partial resources kept (a growing log has one partial tile per level and one partial bundle; older widths of them may be asked for too). */
export const DEFAULT_MAX_PARTIAL_BYTES = 32 * 1024 * 1024;
/** Default longest time the verifier key list is kept. */
export const DEFAULT_KEYS_MAX_AGE_MS = 10_000;

/** Options of {@link cachedTlogView}. */
export interface TlogReadCacheOptions {
  /** Most bytes of partial resources kept (default {@link DEFAULT_MAX_PARTIAL_BYTES}). */
  readonly maxPartialBytes?: number | undefined;
  /** Longest time the key list is kept (default {@link DEFAULT_KEYS_MAX_AGE_MS}). */
  readonly keysMaxAgeMs?: number | undefined;
  readonly clock?: Clock | undefined;
}

/**
 * True for a well-formed partial tile or entry bundle path of the right edge
 * of a tree of `size` (its tile not full, the width at most the tile's):
 * what is worth keeping. Malformed paths go to the view, which refuses them.
 */
function isEdgePartial(path: string, size: number): boolean {
  try {
    const p = parseTilePath(path);
    const [level, index, width] = p.kind === "entries" ? [0, p.index, p.width] : [p.tile.level, p.tile.index, p.tile.width];
    if (width >= TILE_WIDTH) return false;
    const now = tileWidth(level, index, size);
    return now < TILE_WIDTH && width <= now;
  } catch {
    return false;
  }
}

/** `view` with partial resources and the key list answered from memory; see the module comment. */
export function cachedTlogView(view: TlogReadView, options: TlogReadCacheOptions = {}): TlogReadView {
  const keysMaxAgeMs = options.keysMaxAgeMs ?? DEFAULT_KEYS_MAX_AGE_MS;
  const clock = options.clock ?? systemClock;
  const partials = new ByteLru<string, TlogResource>(options.maxPartialBytes ?? DEFAULT_MAX_PARTIAL_BYTES);
  // Reads under way, shared by concurrent requests; each leaves when it settles.
  const reading = new Map<string, Promise<TlogResource | undefined>>();
  let partialsSize: number | undefined;
  let keys: { readonly note: string | undefined; readonly at: number; readonly list: Promise<readonly string[]> } | undefined;

  const forget = <T>(p: Promise<T>, still: () => boolean, drop: () => void): Promise<T> => {
    p.catch(() => {
      if (still()) drop();
    });
    return p;
  };

  return {
    origin: view.origin,
    latestCheckpoint: () => view.latestCheckpoint(),
    prove: (lookup) => view.prove(lookup),

    resource(path) {
      const size = view.latestCheckpoint()?.size;
      if (size === undefined || !isEdgePartial(path, size)) return view.resource(path);
      if (size !== partialsSize) {
        partials.clear();
        reading.clear();
        partialsSize = size;
      }
      const hit = partials.get(path);
      if (hit) return Promise.resolve(hit);
      const pending = reading.get(path);
      if (pending) return pending;
      const read = view.resource(path);
      reading.set(path, read);
      read.then(
        (r) => {
          if (reading.get(path) !== read) return;
          reading.delete(path);
          if (r !== undefined) partials.set(path, r, r.body.length);
        },
        () => {
          if (reading.get(path) === read) reading.delete(path);
        },
      );
      return read;
    },

    verifierKeys() {
      const note = view.latestCheckpoint()?.note;
      const now = clock.now().getTime();
      if (keys && keys.note === note && now >= keys.at && now - keys.at < keysMaxAgeMs) return keys.list;
      const entry = { note, at: now, list: view.verifierKeys() };
      keys = entry;
      return forget(entry.list, () => keys === entry, () => (keys = undefined));
    },
  };
}
