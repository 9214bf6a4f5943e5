/**
 * The entry index fed by the datastore, as a service: it subscribes to the
 * cross-server change feed first and then loads every entry in pages, so no
 * change made during the load is missed; from then on it follows the feed,
 * which carries the changes of every server sharing the database (a changed
 * or deleted entry is read again, and only the newest read of an entry is
 * applied, so events arriving out of order across servers converge on the
 * stored state). Answers "which entries is this agent authorized for" without
 * a datastore query.
 *
 * **Reconciling.** When the feed may have lost events (`onResync`: it fell
 * behind pruning; `onMissed`: it gave up a gap ID whose transaction may still
 * commit, or the window after it took its position closed), and once per
 * `reconcileIntervalMs` as a safety net (an event can still be missed without
 * the feed knowing), the index is compared with the database: every entry is
 * read in pages while calls keep being answered from the index as it is; an
 * entry whose revision or update time differs, that the index lacks, or that
 * is no longer stored, is then replaced or removed in one synchronous step
 * (unless an event touched it meanwhile: the event's own read is newer). Only
 * changed entries move the index's generation, so only the agents they
 * concern get a change notice. One reconcile runs at a time; a request during
 * one runs another after it (the first may have read the changed row before
 * it committed), no sooner than {@link RECONCILE_SPACING} times the last one's
 * duration after it began, so a burst of given-up gap IDs cannot keep the
 * database busy re-reading every entry.
 */
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import { formatSelector } from "../../common/selector.js";
import type { Service } from "../../common/service.js";
import { SigilError } from "../../spiffe/errors.js";
import type { ChangeFeed, MissedCause } from "../datastore/change-feed.js";
import type { AttestedAgent, Datastore, Page, RegistrationEntry } from "../datastore/index.js";
import { EntryIndex, type IndexedEntry } from "./entry-index.js";

/** Entries read from the datastore per page while loading (a round trip per page; one page is read ahead). */
const LOAD_PAGE_SIZE = 5000;
/** First and longest wait before reading again what the datastore could not answer (ms). */
export const RETRY_MIN_MS = 250;
export const RETRY_MAX_MS = 10_000;
/** A reconcile begins no sooner than this many times the last one's duration after the last one began. */
export const RECONCILE_SPACING = 10;

/** Why the index was compared with the database (the `cause` label of `sigil_entry_index_reconciles_total`). */
export type ReconcileCause = MissedCause | "resync" | "periodic";

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
  /** How often the index is reconciled although the feed reported nothing missed (ms); 0 or omitted: never. */
  readonly reconcileIntervalMs?: number;
  /** Counts reconciles and the entries they corrected; omitted in unit tests. */
  readonly metrics?: Metrics;
  readonly log: Logger;
}

/** What one reconcile found and corrected. */
export interface ReconcileResult {
  /** Entries stored. */
  readonly entries: number;
  /** Entries replaced or added (their stored revision differed from the index's, or the index lacked them). */
  readonly changed: number;
  /** Entries removed (no longer stored). */
  readonly removed: number;
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
  /** The reconcile under way, and the cause of one asked for meanwhile (it runs after). */
  #reconciling: Promise<void> | undefined;
  #reconcileNext: ReconcileCause | undefined;
  /** When the last reconcile began and how long it took (ms, `performance.now()`), for the spacing. */
  #lastReconcile: { readonly at: number; readonly ms: number } | undefined;
  /** While loading: the entries an event touched (the load's possibly older copy must not overwrite them). */
  #touched: Set<string> | undefined;
  // An event is delivered once: a read that failed (the database restarting) is retried until it
  // succeeds, or the index would keep the entry's old state (or lack it) until the next reconcile.
  readonly #failed = new Set<string>();
  #retryTimer: NodeJS.Timeout | undefined;
  #retryMs = RETRY_MIN_MS;
  #periodic: NodeJS.Timeout | undefined;
  readonly #reconciles: { inc(labels: { cause: ReconcileCause }): void } | undefined;
  readonly #corrected: { inc(n: number): void } | undefined;

  constructor(deps: EntryIndexFeedDeps) {
    this.#d = deps;
    this.index = new EntryIndex<IndexedRecord>(deps.serverId, [], {
      onListenerError: (err) => deps.log.error({ err }, "entry index: an invalidation listener threw; the index and the other listeners carried on"),
    });
    const interval = deps.reconcileIntervalMs ?? 0;
    if (!Number.isFinite(interval) || interval < 0) throw new SigilError("ERR_INVALID_ARGUMENT", `entry index: reconcileIntervalMs must be a non-negative number of milliseconds, not ${interval}`);
    this.#reconciles = deps.metrics?.counter({
      name: "sigil_entry_index_reconciles_total",
      help: "Comparisons of the entry index with every stored entry, by cause: gap, start, resync, periodic.",
      labelNames: ["cause"],
    });
    this.#corrected = deps.metrics?.counter({ name: "sigil_entry_index_reconciled_entries_total", help: "Entries a reconcile of the entry index replaced, added or removed (changes whose event was missed)." });
  }

  async start(): Promise<void> {
    this.#unsubscribe = this.#d.feed.subscribe({
      onEvent: (event) => {
        if (event.kind === "entry") this.#refresh(event.objectId);
      },
      onResync: () => this.reconcile("resync"),
      onMissed: (cause) => this.reconcile(cause),
    });
    try {
      await this.#loadAll();
    } catch (e) {
      this.stop();
      throw e;
    }
    const interval = this.#d.reconcileIntervalMs ?? 0;
    if (interval > 0) {
      this.#periodic = setInterval(() => this.reconcile("periodic"), interval);
      this.#periodic.unref();
    }
  }

  /**
   * Compares the index with the database in the background (see the module
   * comment); the answer of calls meanwhile comes from the index as it is.
   * Returns the reconcile's promise (for tests), which never rejects: a
   * failed reconcile is logged and retried with backoff.
   */
  reconcile(cause: ReconcileCause): Promise<void> {
    if (this.#unsubscribe === undefined) return Promise.resolve();
    if (this.#reconciling !== undefined) {
      // The one under way may have read the changed row before it committed: one more after it.
      this.#reconcileNext ??= cause;
      return this.#reconciling;
    }
    const run = this.#runReconcile(cause).finally(() => {
      if (this.#reconciling === run) this.#reconciling = undefined;
      const next = this.#reconcileNext;
      this.#reconcileNext = undefined;
      if (next !== undefined) void this.reconcile(next);
    });
    this.#reconciling = run;
    return run;
  }

  async #runReconcile(cause: ReconcileCause): Promise<void> {
    const last = this.#lastReconcile;
    const wait = last === undefined ? 0 : last.at + last.ms * RECONCILE_SPACING - performance.now();
    if (wait > 0) await new Promise<void>((r) => setTimeout(r, wait).unref());
    if (this.#unsubscribe === undefined) return;
    const t0 = performance.now();
    try {
      const r = await this.#diff();
      this.#lastReconcile = { at: t0, ms: performance.now() - t0 };
      this.#retryMs = RETRY_MIN_MS;
      this.#reconciles?.inc({ cause });
      this.#corrected?.inc(r.changed + r.removed);
      const fields = { cause, entries: r.entries, changed: r.changed, removed: r.removed, ms: Math.round(performance.now() - t0) };
      if (r.changed + r.removed > 0) this.#d.log.warn(fields, "entry index: reconciled with the database; entries changed without their event reaching this server");
      else this.#d.log.info(fields, "entry index: reconciled with the database; nothing had been missed");
    } catch (err) {
      this.#lastReconcile = { at: t0, ms: performance.now() - t0 };
      this.#d.log.error({ err, cause }, "entry index: reconcile with the database failed; retrying");
      this.#retryLater(() => void this.reconcile(cause));
    }
  }

  /** Runs `fn` after the current backoff (doubling it each time, up to {@link RETRY_MAX_MS}). */
  #retryLater(fn: () => void): void {
    if (this.#unsubscribe === undefined) return;
    const t = setTimeout(() => {
      this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
      fn();
    }, this.#retryMs);
    t.unref();
  }

  /** Reads again, after a backoff, the entries the datastore failed to answer. */
  #scheduleRetry(): void {
    if (this.#retryTimer !== undefined || this.#unsubscribe === undefined) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
      const ids = [...this.#failed];
      this.#failed.clear();
      for (const id of ids) this.#refresh(id);
    }, this.#retryMs);
    this.#retryTimer.unref();
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

  /** Calls `each` with every stored entry, page by page, and the entries events touched so far; returns those at the end. */
  async #scan(each: (e: RegistrationEntry, touched: ReadonlySet<string>) => void): Promise<Set<string>> {
    const datastore = this.#d.datastore.datastore;
    const touched = (this.#touched = new Set());
    const read = (pageToken: string | undefined): Promise<Page<RegistrationEntry>> => datastore.listEntries({ pageSize: LOAD_PAGE_SIZE, ...(pageToken ? { pageToken } : {}) });
    let next: Promise<Page<RegistrationEntry>> | undefined = read(undefined);
    try {
      while (next !== undefined) {
        const page: Page<RegistrationEntry> = await next;
        // The database reads the next page while this one is indexed.
        next = page.nextPageToken === undefined ? undefined : read(page.nextPageToken);
        for (const e of page.items) each(e, touched);
      }
      return touched;
    } finally {
      // A page read ahead of a failure is not awaited: its own failure is not the caller's.
      next?.catch(() => undefined);
      if (this.#touched === touched) this.#touched = undefined;
    }
  }

  /** The first load: every entry into the empty index (an entry an event touched meanwhile keeps the event's read). */
  async #loadAll(): Promise<void> {
    await this.#scan((e, touched) => {
      if (!touched.has(e.id)) this.index.upsert(toIndexed(e));
    });
  }

  /**
   * Reads every entry and then, in one synchronous step, replaces the ones
   * whose revision or update time differs from the index's, adds the missing
   * ones and removes the ones no longer stored, leaving alone those an event
   * touched meanwhile.
   */
  async #diff(): Promise<ReconcileResult> {
    const stored = new Set<string>();
    const changed: RegistrationEntry[] = [];
    const touched = await this.#scan((e) => {
      stored.add(e.id);
      const held = this.index.get(e.id)?.record;
      if (held === undefined || held.revision !== e.revision || held.updatedAt.getTime() !== e.updatedAt.getTime()) changed.push(e);
    });
    let applied = 0;
    for (const e of changed) {
      if (touched.has(e.id)) continue;
      this.index.upsert(toIndexed(e));
      applied++;
    }
    let removed = 0;
    for (const id of this.index.ids()) {
      if (stored.has(id) || touched.has(id)) continue;
      this.index.delete(id);
      removed++;
    }
    return { entries: stored.size, changed: applied, removed };
  }

  stop(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    clearInterval(this.#periodic);
    this.#periodic = undefined;
    this.#failed.clear();
  }
}
