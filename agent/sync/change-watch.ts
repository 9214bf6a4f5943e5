/**
 * The agent's change stream (AgentAPI WatchChanges): held open to the server
 * the client currently talks to; every notice the server pushes (and the
 * first one, sent when the stream opens) triggers a sync at once, so a new or
 * edited entry reaches the agent without waiting for the next poll. When the
 * stream ends (the server stopped, crashed, or the client failed over to
 * another server) it is opened again after a backoff that starts at
 * {@link WATCH_MIN_BACKOFF_MS}, doubles up to {@link WATCH_MAX_BACKOFF_MS},
 * carries jitter, and resets once a notice arrives; a server that refuses
 * the stream with a retry hint (rate limited) is not asked again sooner than
 * the hint. The periodic poll never stops, so a lost stream only costs latency.
 */
import type { Logger } from "../../common/log.js";
import { retryAfterMsOf } from "../../common/rpc/status.js";
import type { SigilError } from "../../spiffe/errors.js";
import { pushbackDelayMs } from "./pushback.js";
import type { ChangeWatch, ServerClient } from "./server-client.js";

/** First reconnect delay (ms). */
export const WATCH_MIN_BACKOFF_MS = 250;
/** Longest reconnect delay (ms). */
export const WATCH_MAX_BACKOFF_MS = 30_000;

/**
 * Reconnect delay after `failures` consecutive ends without a notice:
 * {@link WATCH_MIN_BACKOFF_MS} doubled per failure up to
 * {@link WATCH_MAX_BACKOFF_MS}, minus up to 20% jitter. Pure.
 *
 * @param random uniform in [0, 1]
 */
export function watchBackoffMs(failures: number, random: number): number {
  const base = Math.min(WATCH_MAX_BACKOFF_MS, WATCH_MIN_BACKOFF_MS * 2 ** Math.max(0, Math.min(failures, 20)));
  return Math.round(base * (1 - 0.2 * Math.min(1, Math.max(0, random))));
}

/** Options of {@link ChangeWatcher}. */
export interface ChangeWatcherOptions {
  readonly client: ServerClient & { readonly currentAddress?: string };
  /** Runs a sync now (the sync loop's `syncNow`). */
  readonly onChange: () => void;
  readonly log?: Logger | undefined;
  /** Uniform random numbers in [0, 1] (default `Math.random`). */
  readonly random?: () => number;
}

/** The change stream; see the module comment. */
export class ChangeWatcher {
  readonly #o: ChangeWatcherOptions;
  #watch: ChangeWatch | undefined;
  #address: string | undefined;
  #failures = 0;
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  #notices = 0;

  constructor(options: ChangeWatcherOptions) {
    this.#o = options;
  }

  /** Notices received since start. */
  get notices(): number {
    return this.#notices;
  }

  /** True while a stream is open. */
  get open(): boolean {
    return this.#watch !== undefined;
  }

  /** Opens the stream (no-op when the client cannot watch). */
  start(): void {
    if (this.#running || !this.#o.client.watchChanges) return;
    this.#running = true;
    this.#open();
  }

  /**
   * Re-opens the stream when the client moved to another server (after a
   * failover the old stream may still hang on to an unreachable peer). Called
   * after each sync round.
   */
  follow(): void {
    if (!this.#running || this.#watch === undefined) return;
    if (this.#o.client.currentAddress !== undefined && this.#o.client.currentAddress !== this.#address) {
      this.#o.log?.info({ from: this.#address, to: this.#o.client.currentAddress }, "sync: the change stream follows the agent to another server");
      this.#close();
      this.#open();
    }
  }

  /** Closes the stream and stops reconnecting. */
  stop(): void {
    this.#running = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#close();
  }

  #close(): void {
    const w = this.#watch;
    this.#watch = undefined;
    w?.cancel();
  }

  #open(): void {
    const { client, log } = this.#o;
    if (!this.#running || !client.watchChanges) return;
    this.#address = client.currentAddress;
    let watch: ChangeWatch | undefined;
    const onNotice = (): void => {
      this.#failures = 0;
      this.#notices++;
      this.#o.onChange();
    };
    const onEnd = (error: SigilError): void => {
      if (this.#watch !== watch) return;
      this.#watch = undefined;
      this.#retry(error);
    };
    try {
      watch = client.watchChanges(onNotice, onEnd);
    } catch (e) {
      this.#retry(e);
      return;
    }
    this.#watch = watch;
    log?.debug({ server: this.#address }, "sync: change stream open");
  }

  #retry(error: unknown): void {
    if (!this.#running) return;
    const random = this.#o.random ?? Math.random;
    const hint = retryAfterMsOf(error);
    const delay = Math.max(watchBackoffMs(this.#failures++, random()), hint === undefined ? 0 : pushbackDelayMs(hint, random()));
    this.#o.log?.info({ err: error, server: this.#address, retry_in_ms: delay }, "sync: the change stream ended; the poll goes on, reconnecting");
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#open();
    }, delay);
    this.#timer.unref?.();
  }
}
