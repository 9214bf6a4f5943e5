/**
 * The tiles listener's memory in front of the log: the resources an
 * anonymous client can ask for again and again without the answer changing
 * (security review M2). Full tiles and full entry bundles are already kept
 * by the log service; what is kept here:
 *
 * - partial tiles and partial entry bundles (`…/<N>.p/<W>`), kept while the
 *   latest checkpoint's tree size stays the same: they only change (appear)
 *   when the tree grows. At most `maxPartials` paths, least recently used
 *   dropped first. A tile's bytes never change once it exists, so an answer
 *   read while a checkpoint was being signed is still right afterwards.
 * - the verifier key list (`/log-keys`), kept while the latest checkpoint
 *   note stays the same (a key rotation signs a new one) and at most
 *   `keysMaxAgeMs`, so keys another server on the database added show up.
 *
 * Concurrent requests for the same thing share one read; a failed read is
 * not kept.
 */
import { systemClock, type Clock } from "../../common/clock.js";
import { parseTilePath, TILE_WIDTH } from "../../spiffe/tlog/tiles.js";
import type { TlogReadView, TlogResource } from "./types.js";

/** Default most partial resources kept (a growing log has one partial tile per level and one partial bundle). */
export const DEFAULT_MAX_CACHED_PARTIALS = 64;
/** Default longest time the verifier key list is kept. */
export const DEFAULT_KEYS_MAX_AGE_MS = 10_000;

/** Options of {@link cachedTlogView}. */
export interface TlogReadCacheOptions {
  /** Most partial resources kept (default {@link DEFAULT_MAX_CACHED_PARTIALS}). */
  readonly maxPartials?: number | undefined;
  /** Longest time the key list is kept (default {@link DEFAULT_KEYS_MAX_AGE_MS}). */
  readonly keysMaxAgeMs?: number | undefined;
  readonly clock?: Clock | undefined;
}

/** True for a well-formed partial tile or entry bundle path; malformed paths go to the view, which refuses them. */
function isPartial(path: string): boolean {
  try {
    const p = parseTilePath(path);
    return (p.kind === "entries" ? p.width : p.tile.width) < TILE_WIDTH;
  } catch {
    return false;
  }
}

/** `view` with partial resources and the key list answered from memory; see the module comment. */
export function cachedTlogView(view: TlogReadView, options: TlogReadCacheOptions = {}): TlogReadView {
  const maxPartials = options.maxPartials ?? DEFAULT_MAX_CACHED_PARTIALS;
  const keysMaxAgeMs = options.keysMaxAgeMs ?? DEFAULT_KEYS_MAX_AGE_MS;
  const clock = options.clock ?? systemClock;
  // Insertion order is recency: a hit is moved to the end.
  const partials = new Map<string, Promise<TlogResource | undefined>>();
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
      if (!isPartial(path)) return view.resource(path);
      const size = view.latestCheckpoint()?.size;
      if (size !== partialsSize) {
        partials.clear();
        partialsSize = size;
      }
      const hit = partials.get(path);
      if (hit) {
        partials.delete(path);
        partials.set(path, hit);
        return hit;
      }
      const read = view.resource(path);
      partials.set(path, read);
      if (partials.size > maxPartials) partials.delete(partials.keys().next().value as string);
      return forget(read, () => partials.get(path) === read, () => partials.delete(path));
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
