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
 * - **Gaps and restarts.** When the feed may have lost events (`onResync`),
 *   every cached copy is dropped and, with `readAll`, everything is loaded
 *   again; until that load succeeds (retried with backoff) calls read through
 *   to the database. A record whose re-read failed is read on its next use.
 */
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
  readonly log: Logger;
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
  readonly #records = new Map<string, T>();
  /** Reads whose answer is current: started after the last event of their ID. An event removes its ID's entry. */
  readonly #reading = new Map<string, Promise<T | undefined>>();
  /** With `readAll`: IDs whose stored state is not known (an event's re-read failed or is pending). */
  readonly #unknown = new Set<string>();
  /** With `readAll`: true once a load succeeded and no resync came after it. */
  #complete = false;
  /** The load under way: the IDs events touched meanwhile (its older copy must not overwrite them). */
  #loading: { readonly touched: Set<string> } | undefined;
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
      onResync: () => this.#resync(),
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
    const held = this.#records.get(id);
    if (held !== undefined) {
      this.#hits++;
      return Promise.resolve(held);
    }
    if (this.#complete && !this.#unknown.has(id) && !this.#reading.has(id)) {
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
    const read: Promise<T | undefined> = this.#o.read(id).then(
      (record) => {
        if (this.#reading.get(id) !== read) return record;
        this.#reading.delete(id);
        this.#unknown.delete(id);
        if (record !== undefined) this.#records.set(id, record);
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

  /** Events may have been lost: drop everything; with `readAll`, load everything again. */
  #resync(): void {
    this.#records.clear();
    this.#reading.clear();
    this.#unknown.clear();
    this.#complete = false;
    if (this.#o.readAll === undefined) {
      this.#o.log.info({}, `${this.name}: the change feed fell behind; dropped every cached record`);
      return;
    }
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#reloadInBackground();
  }

  #reloadInBackground(): void {
    this.#load().then(
      () => {
        this.#retryMs = RETRY_MIN_MS;
        this.#o.log.info({ records: this.#records.size }, `${this.name}: reloaded every record after the change feed fell behind`);
      },
      (err: unknown) => {
        if (this.#unsubscribe === undefined) return;
        this.#o.log.error({ err }, `${this.name}: reload failed; reading through to the datastore and retrying`);
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = undefined;
          this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
          this.#reloadInBackground();
        }, this.#retryMs);
        this.#retryTimer.unref?.();
      },
    );
  }

  /** Loads every record (`readAll`); a newer load started meanwhile supersedes this one. */
  async #load(): Promise<void> {
    const readAll = this.#o.readAll;
    if (readAll === undefined) return;
    const loading = (this.#loading = { touched: new Set<string>() });
    try {
      const all = await readAll();
      if (this.#loading !== loading) return;
      // A copy read since the load began (on use, or after an event) is at least as new as the load's.
      for (const [id, record] of all) if (!loading.touched.has(id) && !this.#records.has(id)) this.#records.set(id, record);
      this.#complete = true;
    } finally {
      if (this.#loading === loading) this.#loading = undefined;
    }
  }
}
