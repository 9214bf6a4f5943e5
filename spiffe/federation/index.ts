/**
 * SPIFFE federation client side: fetching a bundle endpoint (both profiles)
 * and watching one at its refresh hint.
 */
export {
  DEFAULT_FETCH_TIMEOUT_MS,
  DEFAULT_MAX_BUNDLE_BYTES,
  DEFAULT_MAX_REDIRECTS,
  fetchBundle,
  validateEndpointUrl,
  type EndpointProfile,
  type FetchBundleOptions,
  type FetchedBundle,
} from "./bundle-endpoint-client.js";
export {
  BundleWatcher,
  DEFAULT_MAX_REFRESH_MS,
  DEFAULT_MIN_REFRESH_MS,
  DEFAULT_REFRESH_MS,
  refreshDelayMs,
  type BundleWatcherOptions,
  type WatcherTimers,
} from "./bundle-watcher.js";
