/**
 * The entry index fed by the datastore, as a service: it subscribes to the
 * cross-server change feed first and then loads every entry in pages, so no
 * change made during the load is missed; from then on it follows the feed,
 * which carries the changes of every server sharing the database (a changed
 * or deleted entry is read again, and only the newest read of an entry is
 * applied, so events arriving out of order across servers converge on the
 * stored state). When the feed fell behind its pruning, the index reloads
 * once. Answers "which entries is this agent authorized for" without a
 * datastore query.
 */
import type { Logger } from "../../common/log.js";
import { formatSelector } from "../../common/selector.js";
import type { Service } from "../../common/service.js";
import type { ChangeFeed } from "../datastore/change-feed.js";
import type { AttestedAgent, Datastore, RegistrationEntry } from "../datastore/index.js";
import { EntryIndex, type IndexedEntry } from "./entry-index.js";

/** Entries read from the datastore per page while loading. */
const LOAD_PAGE_SIZE = 1000;
/** First and longest wait before reading again what the datastore could not answer (ms). */
export const RETRY_MIN_MS = 250;
export const RETRY_MAX_MS = 10_000;

/** What the entry index holds per entry: its keys plus the datastore record. */
export interface IndexedRecord extends IndexedEntry {
  readonly record: RegistrationEntry;
}

/** Wraps a datastore entry for the index. */
export function toIndexed(e: RegistrationEntry): IndexedRecord {
  return { id: e.id, spiffeId: e.spiffeId, parentId: e.parentId, selectors: e.selectors.map(formatSelector), revision: e.revision, record: e };
}

/**
 * The unexpired entries `agent` is authorized for (descendants of its ID and
 * of the node aliases its selectors match), from the index.
 */
export function authorizedEntries(index: EntryIndex<IndexedRecord>, agentId: string, agent: AttestedAgent, now: Date): RegistrationEntry[] {
  const t = now.getTime();
  return index
    .authorizedEntries(agentId, agent.selectors.map(formatSelector))
    .map((i) => i.record)
    .filter((e) => !e.expiresAt || e.expiresAt.getTime() > t);
}

/** Dependencies of the {@link EntryIndexFeed}. */
export interface EntryIndexFeedDeps {
  /** The datastore service, started before this one. */
  readonly datastore: { readonly datastore: Datastore };
  /** The change feed, started before this service. */
  readonly feed: Pick<ChangeFeed, "subscribe">;
  /** The server's SPIFFE ID: node aliases are its children. */
  readonly serverId: string;
  readonly log: Logger;
}

/** The `entry-index` service; see the module comment. */
export class EntryIndexFeed implements Service {
  readonly name = "entry-index";
  /** The index (empty until the service starts). */
  readonly index: EntryIndex<IndexedRecord>;
  readonly #d: EntryIndexFeedDeps;
  #unsubscribe: (() => void) | undefined;
  /** Per entry ID: the version of its latest event (from one counter), so a read answered after a newer event is dropped. */
  readonly #versions = new Map<string, number>();
  #lastVersion = 0;
  /** Per entry ID: the read applying its latest event, until it settles. */
  readonly #inflight = new Map<string, Promise<void>>();
  #reloading: Promise<void> | undefined;
  /** While loading: the entries an event touched (the load's possibly older copy must not overwrite them). */
  #touched: Set<string> | undefined;
  // An event is delivered once: a read that failed (the database restarting) is retried until it
  // succeeds, or the index would keep the entry's old state (or lack it) until the next reload.
  readonly #failed = new Set<string>();
  #reloadFailed = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryMs = RETRY_MIN_MS;

  constructor(deps: EntryIndexFeedDeps) {
    this.#d = deps;
    this.index = new EntryIndex<IndexedRecord>(deps.serverId);
  }

  async start(): Promise<void> {
    this.#unsubscribe = this.#d.feed.subscribe({
      onEvent: (event) => {
        if (event.kind === "entry") this.#refresh(event.objectId);
      },
      onResync: () => this.#reload(),
    });
    try {
      await this.#load(false);
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  #reload(): void {
    this.#reloadFailed = false;
    this.#reloading ??= this.#load(true)
      .then(
        () => {
          this.#retryMs = RETRY_MIN_MS;
        },
        (err: unknown) => {
          this.#d.log.error({ err }, "entry index: reload after the change feed fell behind failed; retrying");
          this.#reloadFailed = true;
          this.#scheduleRetry();
        },
      )
      .finally(() => (this.#reloading = undefined));
  }

  /** Reads again, after a backoff, the entries (or the reload) the datastore failed to answer. */
  #scheduleRetry(): void {
    if (this.#retryTimer !== undefined || this.#unsubscribe === undefined) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
      if (this.#reloadFailed) this.#reload();
      const ids = [...this.#failed];
      this.#failed.clear();
      for (const id of ids) this.#refresh(id);
    }, this.#retryMs);
    this.#retryTimer.unref?.();
  }

  /**
   * Resolves when the reads applying the events delivered so far have settled
   * (applied, or failed and queued for retry); undefined when none is in
   * flight. The agent API waits for it before answering from the index, so a
   * change this server made is in the answer of any call that follows it.
   */
  settled(): Promise<void> | undefined {
    if (this.#inflight.size === 0) return undefined;
    return Promise.all(this.#inflight.values()).then(() => undefined);
  }

  /** Reads the entry again and applies it, unless a newer event for it came in meanwhile. */
  #refresh(id: string): void {
    this.#touched?.add(id);
    const version = ++this.#lastVersion;
    this.#versions.set(id, version);
    const read = this.#d.datastore.datastore.getEntry(id).then(
      (e) => {
        if (this.#versions.get(id) !== version) return;
        this.#versions.delete(id);
        this.#retryMs = RETRY_MIN_MS;
        if (e) this.index.upsert(toIndexed(e));
        else this.index.delete(id);
      },
      (err: unknown) => {
        if (this.#versions.get(id) !== version) return;
        this.#versions.delete(id);
        this.#d.log.warn({ err, entry_id: id }, "entry index: cannot load a changed entry; retrying");
        this.#failed.add(id);
        this.#scheduleRetry();
      },
    );
    const settled = read.finally(() => {
      if (this.#inflight.get(id) === settled) this.#inflight.delete(id);
    });
    this.#inflight.set(id, settled);
  }

  /** Loads every entry; a reload also drops the entries no longer stored (unless an event touched them meanwhile). */
  async #load(reload: boolean): Promise<void> {
    const datastore = this.#d.datastore.datastore;
    const loaded = new Set<string>();
    const before = reload ? new Set(this.index.ids()) : undefined;
    const touched = (this.#touched = new Set());
    try {
      let pageToken: string | undefined;
      do {
        const page = await datastore.listEntries({ pageSize: LOAD_PAGE_SIZE, ...(pageToken ? { pageToken } : {}) });
        for (const e of page.items) {
          loaded.add(e.id);
          if (!touched.has(e.id)) this.index.upsert(toIndexed(e));
        }
        pageToken = page.nextPageToken;
      } while (pageToken);
    } finally {
      this.#touched = undefined;
    }
    if (before === undefined) return;
    for (const id of before) if (!loaded.has(id) && !touched.has(id)) this.index.delete(id);
    this.#d.log.info({ entries: loaded.size }, "entry index: reloaded every entry");
  }

  stop(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#failed.clear();
  }
}
