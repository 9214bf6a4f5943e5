/**
 * The entry index fed by the datastore, as a service: it subscribes to the
 * datastore's change events first and then loads every entry in pages, so no
 * change made during the load is missed; from then on it follows the events
 * (a changed entry is read again). Answers "which entries is this agent
 * authorized for" without a datastore query.
 */
import type { Logger } from "../../common/log.js";
import { formatSelector } from "../../common/selector.js";
import type { Service } from "../../common/service.js";
import type { AttestedAgent, Datastore, RegistrationEntry } from "../datastore/index.js";
import { EntryIndex, type IndexedEntry } from "./entry-index.js";

/** Entries read from the datastore per page while loading. */
const LOAD_PAGE_SIZE = 1000;

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

  constructor(deps: EntryIndexFeedDeps) {
    this.#d = deps;
    this.index = new EntryIndex<IndexedRecord>(deps.serverId);
  }

  async start(): Promise<void> {
    const datastore = this.#d.datastore.datastore;
    const index = this.index;
    this.#unsubscribe = datastore.subscribe((event) => {
      if (event.kind !== "entry") return;
      if (event.op === "delete") {
        index.delete(event.objectId);
        return;
      }
      datastore.getEntry(event.objectId).then(
        (e) => (e ? index.upsert(toIndexed(e)) : index.delete(event.objectId)),
        (err: unknown) => this.#d.log.error({ err, entry_id: event.objectId }, "entry index: cannot load a changed entry"),
      );
    });
    try {
      let pageToken: string | undefined;
      do {
        const page = await datastore.listEntries({ pageSize: LOAD_PAGE_SIZE, ...(pageToken ? { pageToken } : {}) });
        for (const e of page.items) index.upsert(toIndexed(e));
        pageToken = page.nextPageToken;
      } while (pageToken);
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  stop(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
  }
}
