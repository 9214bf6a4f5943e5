/**
 * Retry delays for the agent's sync with the server: the normal interval while
 * syncs succeed, doubling per consecutive failure up to a cap (SPIRE's rule:
 * at most min(8m, 48 × interval), 4 minutes at the default 5s). Pure.
 */
import { SigilError } from "../../spiffe/errors.js";

/** The longest delay between sync attempts, whatever the interval. */
export const MAX_SYNC_BACKOFF_MS = 8 * 60_000;

/** How many sync intervals the backoff may grow to. */
export const SYNC_BACKOFF_INTERVALS = 48;

/**
 * `baseMs × 2^failures`, capped at `capMs`. `failures` 0 gives `baseMs`.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` for a negative or fractional
 *   failure count, a non-positive base or a cap below the base
 */
export function exponentialBackoffMs(failures: number, baseMs: number, capMs: number): number {
  if (!Number.isSafeInteger(failures) || failures < 0) throw new SigilError("ERR_INVALID_ARGUMENT", `backoff: failure count ${failures} is not a whole number ≥ 0`);
  if (!(baseMs > 0) || !(capMs >= baseMs)) throw new SigilError("ERR_INVALID_ARGUMENT", `backoff: need 0 < base (${baseMs}) ≤ cap (${capMs})`);
  // 2^failures overflows to Infinity for large counts; min() still gives the cap.
  return Math.min(capMs, baseMs * 2 ** failures);
}

/** The backoff cap for a sync interval: min(8m, 48 × interval), never below the interval. */
export function syncBackoffCapMs(intervalMs: number): number {
  return Math.max(intervalMs, Math.min(MAX_SYNC_BACKOFF_MS, SYNC_BACKOFF_INTERVALS * intervalMs));
}

/**
 * The delay before the next sync after `consecutiveFailures` failed attempts
 * in a row (0 after a success).
 *
 * @example
 * ```ts
 * nextSyncDelayMs(5_000, 0); // 5s
 * nextSyncDelayMs(5_000, 3); // 40s
 * nextSyncDelayMs(5_000, 9); // 4m (the cap)
 * ```
 */
export function nextSyncDelayMs(intervalMs: number, consecutiveFailures: number): number {
  return exponentialBackoffMs(consecutiveFailures, intervalMs, syncBackoffCapMs(intervalMs));
}
