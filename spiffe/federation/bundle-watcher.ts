/**
 * Polling one bundle endpoint: fetch at the bundle's refresh hint (clamped),
 * keep only bundles whose sequence number does not go backwards, retry a
 * failed poll at the same interval, start every poll at the configured URL.
 */
import type { SpiffeBundle } from "../bundle/spiffe-bundle.js";
import { SigilError, toSigilError } from "../errors.js";
import {
  fetchBundle,
  validateEndpointUrl,
  type EndpointProfile,
  type FetchBundleOptions,
  type FetchedBundle,
} from "./bundle-endpoint-client.js";

/** Timers the watcher schedules polls with; tests pass their own. */
export interface WatcherTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: WatcherTimers = {
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Options of {@link BundleWatcher}. */
export interface BundleWatcherOptions extends Omit<FetchBundleOptions, "profile" | "signal"> {
  /**
   * The endpoint profile. A function is called before every fetch, so an
   * `https_spiffe` watcher authenticates with the latest bundle held (FED-23).
   */
  readonly profile: EndpointProfile | (() => EndpointProfile);
  /** Interval when the bundle has no `spiffe_refresh_hint` (BUNDLE-18, FED-3); default 5 min. */
  readonly defaultRefreshMs?: number;
  /** Lower bound of the interval; default 30 s. */
  readonly minRefreshMs?: number;
  /** Upper bound of the interval; default 1 h. */
  readonly maxRefreshMs?: number;
  /** Called with every accepted bundle; the watcher waits for it. If it throws, the bundle is not accepted. */
  readonly onBundle: (f: FetchedBundle) => void | Promise<void>;
  /** Called with every failed poll (fetch, refused sequence, onBundle failure). */
  readonly onError?: (e: SigilError) => void;
  /** The sequence number of a bundle already held (e.g. set by an operator): lower ones are refused. */
  readonly initialSequence?: bigint;
  /** Timers for scheduling polls (default: Node's, unref'd). */
  readonly timers?: WatcherTimers;
}

/** Default of {@link BundleWatcherOptions.defaultRefreshMs}. */
export const DEFAULT_REFRESH_MS = 5 * 60_000;
/** Default of {@link BundleWatcherOptions.minRefreshMs}. */
export const DEFAULT_MIN_REFRESH_MS = 30_000;
/** Default of {@link BundleWatcherOptions.maxRefreshMs}. */
export const DEFAULT_MAX_REFRESH_MS = 60 * 60_000;

function badArgument(message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `bundle watcher: ${message}`);
}

function interval(v: number | undefined, dflt: number, name: string): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1) throw badArgument(`${name} must be a positive integer of milliseconds, got ${String(v)}`);
  return v;
}

/**
 * The delay before the next poll: the bundle's refresh hint (or the default
 * without one) clamped to [min, max].
 */
export function refreshDelayMs(bundle: SpiffeBundle | undefined, o: { defaultMs: number; minMs: number; maxMs: number }): number {
  const hint = bundle?.refreshHintSeconds;
  const wanted = hint === undefined ? o.defaultMs : hint * 1000;
  return Math.min(o.maxMs, Math.max(o.minMs, wanted));
}

/**
 * Watches one bundle endpoint.
 *
 * Ordering policy (FED-4): a bundle is accepted when it has no
 * `spiffe_sequence`, when none was accepted before, or when its sequence is
 * greater than or equal to the last accepted one; a lower sequence is refused
 * with an error and the last good bundle stays. Every poll starts at the
 * configured URL (FED-19); a failed poll is retried at the same interval, never
 * sooner (FED-25).
 *
 * @example
 * ```ts
 * const w = new BundleWatcher({ url, trustDomain, profile: () => ({ kind: "https_spiffe", endpointSpiffeId, bundle: store.x509(td) }),
 *   onBundle: (f) => store.put(f.bundle), onError: (e) => log.warn(e.message) });
 * w.start();
 * await w.stop();
 * ```
 */
export class BundleWatcher {
  readonly #o: BundleWatcherOptions;
  readonly #timers: WatcherTimers;
  readonly #defaultMs: number;
  readonly #minMs: number;
  readonly #maxMs: number;
  #lastSequence: bigint | undefined;
  #delayMs: number;
  #timer: unknown;
  #inFlight: Promise<FetchedBundle> | undefined;
  #abort: AbortController | undefined;
  #started = false;
  #stopped = false;

  /** @throws SigilError `ERR_INVALID_ARGUMENT` naming the option. */
  constructor(o: BundleWatcherOptions) {
    if (o === null || typeof o !== "object") throw badArgument("options are missing");
    validateEndpointUrl(o.url);
    if (typeof o.onBundle !== "function") throw badArgument("onBundle must be a function");
    if (o.onError !== undefined && typeof o.onError !== "function") throw badArgument("onError must be a function");
    if (o.profile === undefined || o.profile === null) throw badArgument("profile is missing");
    this.#defaultMs = interval(o.defaultRefreshMs, DEFAULT_REFRESH_MS, "defaultRefreshMs");
    this.#minMs = interval(o.minRefreshMs, DEFAULT_MIN_REFRESH_MS, "minRefreshMs");
    this.#maxMs = interval(o.maxRefreshMs, DEFAULT_MAX_REFRESH_MS, "maxRefreshMs");
    if (this.#minMs > this.#maxMs) throw badArgument(`minRefreshMs ${this.#minMs} is above maxRefreshMs ${this.#maxMs}`);
    if (o.initialSequence !== undefined && (typeof o.initialSequence !== "bigint" || o.initialSequence < 0n)) {
      throw badArgument("initialSequence must be a non-negative bigint");
    }
    this.#o = o;
    this.#timers = o.timers ?? realTimers;
    this.#lastSequence = o.initialSequence;
    this.#delayMs = refreshDelayMs(undefined, this.#bounds());
  }

  /** The interval the next poll is scheduled at (after a failure, the same as before it). */
  get refreshIntervalMs(): number {
    return this.#delayMs;
  }

  /** Starts polling; the first poll runs at once. Idempotent. */
  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    this.#schedule(0);
  }

  /**
   * Polls now (joining a poll already running) and reschedules the next one.
   * Resolves with the accepted bundle; rejects with the poll's error, which
   * `onError` also receives.
   */
  refreshNow(): Promise<FetchedBundle> {
    if (this.#stopped) return Promise.reject(new SigilError("ERR_FAILED_PRECONDITION", "bundle watcher: stopped"));
    if (this.#inFlight !== undefined) return this.#inFlight;
    if (this.#timer !== undefined) {
      this.#timers.clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    const run = this.#poll().finally(() => {
      this.#inFlight = undefined;
      if (this.#started && !this.#stopped) this.#schedule(this.#delayMs);
    });
    this.#inFlight = run;
    return run;
  }

  /** Stops polling, aborting a fetch in progress, and waits for it to end. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#timers.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#abort?.abort(new SigilError("ERR_UNAVAILABLE", "bundle watcher: stopped"));
    await this.#inFlight?.catch(() => undefined);
  }

  #bounds(): { defaultMs: number; minMs: number; maxMs: number } {
    return { defaultMs: this.#defaultMs, minMs: this.#minMs, maxMs: this.#maxMs };
  }

  #schedule(ms: number): void {
    if (this.#timer !== undefined) this.#timers.clearTimeout(this.#timer);
    this.#timer = this.#timers.setTimeout(() => {
      this.#timer = undefined;
      // Errors reach onError inside #poll.
      this.refreshNow().catch(() => undefined);
    }, ms);
  }

  async #poll(): Promise<FetchedBundle> {
    const abort = new AbortController();
    this.#abort = abort;
    try {
      const profile = typeof this.#o.profile === "function" ? this.#o.profile() : this.#o.profile;
      const { defaultRefreshMs: _d, minRefreshMs: _min, maxRefreshMs: _max, onBundle: _b, onError: _e, initialSequence: _s, timers: _t, ...fetchOptions } = this.#o;
      // Always the configured URL: a redirect seen last time is not remembered (FED-19).
      const fetched = await fetchBundle({ ...fetchOptions, profile, signal: abort.signal });
      const seq = fetched.bundle.sequenceNumber;
      if (seq !== undefined && this.#lastSequence !== undefined && seq < this.#lastSequence) {
        throw new SigilError(
          "ERR_BUNDLE_INVALID",
          `bundle endpoint ${this.#o.url}: spiffe_sequence ${seq} is lower than the last accepted ${this.#lastSequence}; kept the last bundle`,
        );
      }
      await this.#o.onBundle(fetched);
      if (seq !== undefined) this.#lastSequence = seq;
      this.#delayMs = refreshDelayMs(fetched.bundle, this.#bounds());
      return fetched;
    } catch (e) {
      const err = toSigilError(e, "ERR_INTERNAL", `bundle watcher ${this.#o.url}`);
      if (!this.#stopped) this.#o.onError?.(err);
      throw err;
    } finally {
      if (this.#abort === abort) this.#abort = undefined;
    }
  }
}
