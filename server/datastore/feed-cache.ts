/**
 * A cache of one kind of datastore record (agent records, bundles) kept
 * current by the change feed, as a service, so the agent API answers its
 * steady stream of calls without reading the database.
 *
 * - **Following.** Each event of the cache's kind drops the cached copy at
 *   once (synchronously, within the feed's delivery: for a write made through
 *   this server, before the write's promise resolves; for another server's,
 *   when this server's feed reads it), so no call after the delivery is
 *   answered from the old copy. A read already in flight for that ID is
 *   disowned: its answer goes to its caller but is not stored.
 * - **Two modes.** With `readAll` the cache holds every record (loaded at
 *   start, after subscribing, so nothing committed meanwhile is missed), a
 *   miss means "not stored", and each event reads the record again at once.
 *   Without it records are read on first use and kept; a record that is not
 *   stored is not remembered (its absence costs a read per call, as before).
 * - **Gaps and restarts.** When the feed may have lost events (`onResync`:
 *   it fell behind; `onMissed`: it gave up a gap ID, or the window after it
 *   took its position closed), every cached copy is dropped and, with
 *   `readAll`, everything is loaded again; until that load succeeds (retried
 *   with backoff) calls read through to the database. A record whose re-read
 *   failed is read on its next use.
 * - **Age bound.** An event can still be missed without the feed knowing (a
 *   transaction committing after `onMissed` was called), so no copy is
 *   served older than `maxAgeMs`: an older one is read again on use (without
 *   `readAll`: one read per record in use per `maxAgeMs`), and with `readAll`
 *   the first call after half of `maxAgeMs` since the last load starts a load
 *   in the background that replaces every copy (one load per `maxAgeMs / 2`
 *   while calls come in); a known absence is trusted only while the last load
 *   is younger than `maxAgeMs`.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import type { ChangeKind } from "./change-event.js";
import type { ChangeFeed } from "./change-feed.js";

/** First and longest wait before loading again after a failed load (ms). */
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 10_000;

/** Dependencies and settings of a {@link FeedCache}. */
export interface FeedCacheOptions<T> {
  /** Service name, for logs (`agent-cache`). */
  readonly name: string;
  /** The events followed. */
  readonly kind: ChangeKind;
  /** The change feed, started before this service. */
  readonly feed: Pick<ChangeFeed, "subscribe">;
  /** Reads one record from the datastore (`undefined`: not stored). */
  readonly read: (id: string) => Promise<T | undefined>;
  /** Reads every record with its ID: the cache then holds them all. Omitted: records are read on first use. */
  readonly readAll?: () => Promise<ReadonlyArray<readonly [string, T]>>;
  /** The longest a copy is served without reading it again (ms); see the module comment. */
  readonly maxAgeMs: number;
  readonly clock: Clock;
  readonly log: Logger;
}

/** A cached copy. */
interface Held<T> {
  readonly record: T;
  /** When the read that returned it started (ms). */
  readonly readAt: number;
  /** The read's number ({@link FeedCache} counts reads and loads): a higher one is newer. */
  readonly seq: number;
}

/** Cache counters, for benches and status. */
export interface FeedCacheStats {
  /** Calls answered from memory (a cached record, or a known absence). */
  readonly hits: number;
  /** Calls that read the datastore (or waited for a read in flight). */
  readonly misses: number;
  /** Records held. */
  readonly size: number;
}

/** See the module comment. */
export class FeedCache<T> implements Service {
  readonly name: string;
  readonly #o: FeedCacheOptions<T>;
  readonly #records = new Map<string, Held<T>>();
  /** Reads whose answer is current: started after the last event of their ID. An event removes its ID's entry. */
  readonly #reading = new Map<string, Promise<T | undefined>>();
  /** With `readAll`: IDs whose stored state is not known (an event's re-read failed or is pending). */
  readonly #unknown = new Set<string>();
  /** With `readAll`: true once a load succeeded and no resync came after it. */
  #complete = false;
  /** The load under way: the IDs events touched meanwhile (its older copy must not overwrite them). */
  #loading: { readonly touched: Set<string> } | undefined;
  /** With `readAll`: when the last successful load started (ms). */
  #loadedAt = 0;
  /** Numbers reads and loads, so a load does not overwrite a copy read after it began. */
  #seq = 0;
  #unsubscribe: (() => void) | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryMs = RETRY_MIN_MS;
  #hits = 0;
  #misses = 0;

  constructor(options: FeedCacheOptions<T>) {
    this.#o = options;
    this.name = options.name;
  }

  async start(): Promise<void> {
    this.#unsubscribe = this.#o.feed.subscribe({
      onEvent: (event) => {
        if (event.kind === this.#o.kind) this.#changed(event.objectId);
      },
      onResync: () => this.#resync("the change feed fell behind"),
      onMissed: (cause) => this.#resync(cause === "gap" ? "the change feed gave up an event ID" : "an event may have committed below the change feed's start"),
    });
    if (this.#o.readAll === undefined) return;
    try {
      await this.#load();
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  stop(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
  }

  /** The record with this ID, from memory when held; otherwise read from the datastore (and kept). */
  get(id: string): Promise<T | undefined> {
    const now = this.#o.clock.now().getTime();
    if (this.#complete && now - this.#loadedAt >= this.#o.maxAgeMs / 2) this.#refresh();
    const held = this.#records.get(id);
    if (held !== undefined && now - held.readAt <= this.#o.maxAgeMs) {
      this.#hits++;
      return Promise.resolve(held.record);
    }
    if (held === undefined && this.#complete && now - this.#loadedAt <= this.#o.maxAgeMs && !this.#unknown.has(id) && !this.#reading.has(id)) {
      this.#hits++;
      return Promise.resolve(undefined);
    }
    this.#misses++;
    return this.#reading.get(id) ?? this.#fetch(id);
  }

  /**
   * Reads the record from the datastore now, replacing the cached copy (for a
   * caller that has reason to think the copy is older than the database, e.g.
   * an agent presenting a serial the copy does not know yet).
   */
  reload(id: string): Promise<T | undefined> {
    this.#misses++;
    this.#forget(id);
    return this.#fetch(id);
  }

  /** Counters since the start. */
  stats(): FeedCacheStats {
    return { hits: this.#hits, misses: this.#misses, size: this.#records.size };
  }

  /** Drops the copy of `id` and disowns a read of it in flight. */
  #forget(id: string): void {
    this.#records.delete(id);
    this.#reading.delete(id);
    this.#loading?.touched.add(id);
    if (this.#o.readAll !== undefined) this.#unknown.add(id);
  }

  /** An event of this kind: the copy is stale; with `readAll` it is read again at once. */
  #changed(id: string): void {
    this.#forget(id);
    if (this.#o.readAll === undefined) return;
    this.#fetch(id).catch((err: unknown) => this.#o.log.warn({ err, id }, `${this.name}: cannot read a changed record; reading it on its next use`));
  }

  /** Reads `id`; stores the answer unless an event for it came in meanwhile. */
  #fetch(id: string): Promise<T | undefined> {
    const readAt = this.#o.clock.now().getTime();
    const seq = ++this.#seq;
    const read: Promise<T | undefined> = this.#o.read(id).then(
      (record) => {
        if (this.#reading.get(id) !== read) return record;
        this.#reading.delete(id);
        this.#unknown.delete(id);
        // A load that began after this read may have stored a newer copy meanwhile.
        const current = this.#records.get(id);
        if (current !== undefined && current.seq > seq) return record;
        if (record !== undefined) this.#records.set(id, { record, readAt, seq });
        else this.#records.delete(id);
        return record;
      },
      (err: unknown) => {
        if (this.#reading.get(id) === read) this.#reading.delete(id);
        throw err;
      },
    );
    this.#reading.set(id, read);
    return read;
  }

  /** Events may have been lost (`why`, for the log): drop everything; with `readAll`, load everything again. */
  #resync(why: string): void {
    this.#records.clear();
    this.#reading.clear();
    this.#unknown.clear();
    this.#complete = false;
    if (this.#o.readAll === undefined) {
      this.#o.log.info({}, `${this.name}: ${why}; dropped every cached record`);
      return;
    }
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#reloadInBackground(why);
  }

  /** With `readAll`, the last load is half `maxAgeMs` old: load again in the background, serving the copies meanwhile. */
  #refresh(): void {
    if (this.#loading !== undefined || this.#retryTimer !== undefined || this.#unsubscribe === undefined) return;
    this.#load().catch((err: unknown) => this.#o.log.warn({ err }, `${this.name}: periodic reload failed; copies older than the age bound are read on use`));
  }

  #reloadInBackground(why: string): void {
    this.#load().then(
      () => {
        this.#retryMs = RETRY_MIN_MS;
        this.#o.log.info({ records: this.#records.size }, `${this.name}: reloaded every record (${why})`);
      },
      (err: unknown) => {
        if (this.#unsubscribe === undefined) return;
        this.#o.log.error({ err }, `${this.name}: reload failed; reading through to the datastore and retrying`);
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = undefined;
          this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
          this.#reloadInBackground(why);
        }, this.#retryMs);
        this.#retryTimer.unref?.();
      },
    );
  }

  /**
   * Loads every record (`readAll`), replacing the copies read before it
   * began (and dropping those no longer stored); a newer load started
   * meanwhile supersedes this one.
   */
  async #load(): Promise<void> {
    const readAll = this.#o.readAll;
    if (readAll === undefined) return;
    const loading = (this.#loading = { touched: new Set<string>() });
    const readAt = this.#o.clock.now().getTime();
    const seq = ++this.#seq;
    try {
      const all = await readAll();
      if (this.#loading !== loading) return;
      // A copy read since the load began (on use, or after an event) is at least as new as the load's.
      const newer = (id: string): boolean => loading.touched.has(id) || (this.#records.get(id)?.seq ?? 0) > seq;
      const stored = new Set<string>();
      for (const [id, record] of all) {
        stored.add(id);
        if (!newer(id)) this.#records.set(id, { record, readAt, seq });
      }
      for (const id of [...this.#records.keys()]) if (!stored.has(id) && !newer(id)) this.#records.delete(id);
      for (const id of [...this.#unknown]) if (!newer(id) && !this.#reading.has(id)) this.#unknown.delete(id);
      this.#loadedAt = readAt;
      this.#complete = true;
    } finally {
      if (this.#loading === loading) this.#loading = undefined;
    }
  }
}
