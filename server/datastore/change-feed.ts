/**
 * The cross-server change feed (`change-feed` service): every change to
 * entries, agents and bundles committed by any server sharing the database, in the
 * order it is read, to followers such as the entry index.
 *
 * - **Reading by sequence.** The `change_events` table (written in the same
 *   transaction as each change) is read by event ID from where the feed
 *   started: the highest ID when the service started, so a follower that
 *   subscribes and then loads everything misses nothing (a change in between
 *   is in the load, the feed, or both; followers re-read the object, so a
 *   replay is harmless).
 * - **Waking.** On PostgreSQL each writing transaction sends a `NOTIFY` (see
 *   `Datastore.watchEvents`) that wakes the reader at once, with a slow poll
 *   as fallback; on MySQL/MariaDB and SQLite the reader polls every
 *   `poll_interval`. Changes made through this server are delivered at commit,
 *   without waiting for a read.
 * - **Gaps.** An ID may become visible after a higher one (concurrent
 *   transactions commit out of order); {@link EventGapTracker} keeps such IDs
 *   and reads them again until they appear or `gap_timeout` passes.
 * - **Events possibly missed.** A gap ID given up may still commit later (a
 *   transaction slower than `gap_timeout`), and a transaction open when the
 *   feed took its position (at start, or after falling behind) may commit
 *   below it: neither event is ever delivered. So the feed tells followers
 *   (`onMissed`) when it gives up gap IDs, and once `gap_timeout` after taking
 *   its position; followers holding copies drop them (the caches) or
 *   compare them with the database (the entry index).
 * - **Falling behind.** Events older than `event_retention` are pruned. A feed
 *   that could not read for longer than that may have lost events: it tells
 *   followers to reload everything once (`onResync`) and logs it. It never
 *   reloads on a timer.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import { SigilError } from "../../spiffe/errors.js";
import type { ChangeEvent } from "./change-event.js";
import type { Datastore } from "./datastore.js";
import { EventGapTracker } from "./event-gaps.js";

/** Events read per query. */
export const FEED_PAGE_SIZE = 1000;

/** Settings of the feed (`server.change_feed` in the config). */
export interface ChangeFeedSettings {
  /** How often the table is read when nothing wakes the reader (MySQL, SQLite). */
  readonly pollIntervalMs: number;
  /** How often it is read when the datastore wakes the reader (PostgreSQL NOTIFY), as a fallback. */
  readonly notifyPollIntervalMs: number;
  /** How long a missing event ID below a seen one is read again. */
  readonly gapTimeoutMs: number;
  /** How long events are kept before pruning; a feed stalled longer reloads its followers. */
  readonly eventRetentionMs: number;
}

/** Defaults of {@link ChangeFeedSettings}. */
export const DEFAULT_CHANGE_FEED_SETTINGS: ChangeFeedSettings = {
  pollIntervalMs: 250,
  notifyPollIntervalMs: 5_000,
  gapTimeoutMs: 60_000,
  eventRetentionMs: 24 * 3600_000,
};

/** The feed settings of a server config's `server.change_feed` section. */
export function changeFeedSettings(c: { poll_interval: number; notify_poll_interval: number; gap_timeout: number; event_retention: number }): ChangeFeedSettings {
  return { pollIntervalMs: c.poll_interval, notifyPollIntervalMs: c.notify_poll_interval, gapTimeoutMs: c.gap_timeout, eventRetentionMs: c.event_retention };
}

/** A follower of the feed. */
export interface ChangeFeedListener {
  /** One event, after its transaction committed. Events of one object arrive in commit order per server, not across servers: re-read the object. */
  onEvent(event: ChangeEvent): void;
  /** Events may have been lost (the feed fell behind pruning): reload everything. */
  onResync?(): void;
  /**
   * An event may have been missed although the feed kept up: `gap` when gap
   * IDs were given up (one call per read that gave some up), `start` once
   * `gap_timeout` after the feed took its position (a transaction open then
   * may have committed below it; not called when a `gap` call came at the
   * same read). Copies read before this call may be stale.
   */
  onMissed?(cause: MissedCause): void;
}

/** Why {@link ChangeFeedListener.onMissed} was called. */
export type MissedCause = "gap" | "start";

/** Dependencies of the {@link ChangeFeed}. */
export interface ChangeFeedDeps {
  /** The datastore service, started before this one. */
  readonly datastore: { readonly datastore: Datastore };
  readonly settings: ChangeFeedSettings;
  readonly clock: Clock;
  readonly log: Logger;
}

/** What one {@link ChangeFeed.poll} did, for tests and metrics. */
export interface PollResult {
  /** Events delivered. */
  readonly delivered: number;
  /** Gap IDs given up. */
  readonly gaveUp: number;
}

/** The `change-feed` service; see the module comment. */
export class ChangeFeed implements Service {
  readonly name = "change-feed";
  readonly #d: ChangeFeedDeps;
  readonly #listeners = new Set<ChangeFeedListener>();
  #tracker: EventGapTracker | undefined;
  #unsubscribeLocal: (() => void) | undefined;
  #stopWatch: (() => Promise<void>) | undefined;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<PollResult> | undefined;
  #queued: Promise<PollResult> | undefined;
  #stopped = false;
  #interval: number;
  /** When the last read succeeded (ms). */
  #lastReadAt = 0;
  #failing = false;
  /** When the window after taking a position closes (ms); undefined once closed. */
  #startWindowEnd: number | undefined;

  constructor(deps: ChangeFeedDeps) {
    this.#d = deps;
    this.#interval = deps.settings.pollIntervalMs;
  }

  /** The highest event ID delivered or passed over (for status and tests). */
  get position(): number {
    return this.#tracker?.high ?? 0;
  }

  /** The event IDs being waited for (for status and tests). */
  gaps(): number[] {
    return this.#tracker?.gaps() ?? [];
  }

  /** Starts from the highest event ID now; begins reading. */
  async start(): Promise<void> {
    const ds = this.#d.datastore.datastore;
    this.#stopped = false;
    this.#tracker = new EventGapTracker(await ds.lastEventId(), this.#d.settings.gapTimeoutMs);
    this.#lastReadAt = this.#d.clock.now().getTime();
    this.#startWindowEnd = this.#lastReadAt + this.#d.settings.gapTimeoutMs;
    // This server's own changes are delivered at commit; the read then skips them.
    this.#unsubscribeLocal = ds.subscribe((e) => this.#offer([e]));
    if (ds.watchEvents !== undefined) {
      try {
        this.#stopWatch = await ds.watchEvents(() => this.wake());
        if (this.#stopWatch !== undefined) this.#interval = this.#d.settings.notifyPollIntervalMs;
      } catch (err) {
        this.#d.log.warn({ err }, "change feed: cannot listen for change notifications; polling instead");
      }
    }
    this.#schedule();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#unsubscribeLocal?.();
    this.#unsubscribeLocal = undefined;
    const stopWatch = this.#stopWatch;
    this.#stopWatch = undefined;
    await stopWatch?.().catch(() => undefined);
    await this.#running?.catch(() => undefined);
    await this.#queued?.catch(() => undefined);
  }

  /** Registers a follower; returns the function that unregisters it. */
  subscribe(listener: ChangeFeedListener): () => void {
    if (listener === null || typeof listener !== "object" || typeof listener.onEvent !== "function") {
      throw new SigilError("ERR_INVALID_ARGUMENT", "change feed: listener must have an onEvent function");
    }
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** Reads at once (a change notification arrived). */
  wake(): void {
    if (this.#stopped || this.#tracker === undefined) return;
    void this.poll().catch(() => undefined);
  }

  /**
   * Reads the events past the feed's position (and its open gaps) and
   * delivers the new ones. One read at a time: a call during a read waits for
   * it and then reads again (once, however many calls came in), so what
   * committed before the call is read.
   */
  poll(): Promise<PollResult> {
    if (this.#running === undefined) return this.#begin();
    this.#queued ??= this.#running
      .catch(() => undefined)
      .then(() => {
        this.#queued = undefined;
        return this.#begin();
      });
    return this.#queued;
  }

  #begin(): Promise<PollResult> {
    const run: Promise<PollResult> = this.#read().finally(() => {
      if (this.#running === run) this.#running = undefined;
    });
    this.#running = run;
    return run;
  }

  async #read(): Promise<PollResult> {
    const tracker = this.#tracker;
    if (tracker === undefined) throw new SigilError("ERR_UNAVAILABLE", "change feed: not started");
    const ds = this.#d.datastore.datastore;
    const now = this.#d.clock.now().getTime();
    if (now - this.#lastReadAt > this.#d.settings.eventRetentionMs) {
      // Events may have been pruned past our position: start over from now and reload once.
      const since = new Date(this.#lastReadAt).toISOString();
      this.#tracker = new EventGapTracker(await ds.lastEventId(), this.#d.settings.gapTimeoutMs);
      this.#lastReadAt = now;
      this.#startWindowEnd = now + this.#d.settings.gapTimeoutMs;
      this.#d.log.warn({ last_read: since, event_retention_ms: this.#d.settings.eventRetentionMs }, "change feed: fell behind event pruning; followers reload everything");
      for (const l of [...this.#listeners]) this.#call(() => l.onResync?.());
      return { delivered: 0, gaveUp: 0 };
    }
    let delivered = 0;
    try {
      const high = tracker.high;
      let after = tracker.readAfter();
      for (;;) {
        const events = await ds.listEvents(after, FEED_PAGE_SIZE);
        delivered += this.#offer(events);
        const last = events[events.length - 1];
        if (events.length < FEED_PAGE_SIZE || last === undefined) break;
        after = last.eventId;
        // Re-reading a long gap window: stop once past what was already read, the next poll continues.
        if (after > high + FEED_PAGE_SIZE * 10) break;
      }
    } catch (err) {
      if (!this.#failing) this.#d.log.warn({ err }, "change feed: cannot read change events; retrying");
      this.#failing = true;
      throw err;
    }
    if (this.#failing) this.#d.log.info({}, "change feed: reading change events again");
    this.#failing = false;
    // When this read started: everything committed before then has been read.
    this.#lastReadAt = now;
    const expiredAt = this.#d.clock.now().getTime();
    const { ids } = tracker.expire(expiredAt);
    if (ids.length > 0) {
      this.#d.log.debug({ count: ids.length, first: ids[0] }, "change feed: event IDs given up (rolled back, retried, or slower than gap_timeout)");
      this.#missed("gap");
    }
    if (this.#startWindowEnd !== undefined && expiredAt >= this.#startWindowEnd) {
      this.#startWindowEnd = undefined;
      // One drop covers both.
      if (ids.length === 0) this.#missed("start");
    }
    return { delivered, gaveUp: ids.length };
  }

  /** Delivers the events not seen yet; returns how many. */
  #offer(events: readonly ChangeEvent[]): number {
    const tracker = this.#tracker;
    if (tracker === undefined) return 0;
    const now = this.#d.clock.now().getTime();
    let n = 0;
    for (const e of events) {
      if (!tracker.accept(e.eventId, now)) continue;
      n++;
      for (const l of [...this.#listeners]) this.#call(() => l.onEvent(e));
    }
    return n;
  }

  #missed(cause: MissedCause): void {
    for (const l of [...this.#listeners]) this.#call(() => l.onMissed?.(cause));
  }

  #call(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#d.log.error({ err }, "change feed: a follower failed on an event");
    }
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.poll().then(
        () => this.#schedule(),
        () => this.#schedule(),
      );
    }, this.#interval);
    this.#timer.unref?.();
  }
}
