/**
 * How often to re-fetch a bundle (SPIFFE Trust Domain and Bundle §4.1.2, §6.1):
 * the publisher's refresh hint, within limits, or about five minutes without one
 * (BUNDLE-18).
 */

/** Refresh interval used when a bundle has no hint (BUNDLE-18). */
export const DEFAULT_BUNDLE_REFRESH_SECONDS = 300;
/** Shortest interval: a tiny hint must not turn into a polling storm. */
export const MIN_BUNDLE_REFRESH_SECONDS = 10;
/** Longest interval: a huge hint must not delay picking up added keys for long (pitfall A12). */
export const MAX_BUNDLE_REFRESH_SECONDS = 3600;

/** Limits for {@link bundleRefreshSeconds}. */
export interface RefreshLimits {
  readonly minSeconds?: number;
  readonly maxSeconds?: number;
  /** Used when there is no hint; default {@link DEFAULT_BUNDLE_REFRESH_SECONDS}. */
  readonly defaultSeconds?: number;
}

/**
 * Seconds until the next fetch of a bundle whose refresh hint is
 * `refreshHintSeconds` (undefined when it has none).
 *
 * @example
 * ```ts
 * bundleRefreshSeconds(undefined) // 300
 * bundleRefreshSeconds(1)         // 10
 * bundleRefreshSeconds(86_400)    // 3600
 * ```
 */
export function bundleRefreshSeconds(refreshHintSeconds: number | undefined, limits: RefreshLimits = {}): number {
  const min = limits.minSeconds ?? MIN_BUNDLE_REFRESH_SECONDS;
  const max = limits.maxSeconds ?? MAX_BUNDLE_REFRESH_SECONDS;
  const wanted = refreshHintSeconds ?? limits.defaultSeconds ?? DEFAULT_BUNDLE_REFRESH_SECONDS;
  return Math.min(max, Math.max(min, wanted));
}
