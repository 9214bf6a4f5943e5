/**
 * Delta sync for SyncAuthorized. For every agent the server remembers what it
 * last answered: the revision, each entry's ID and revision, and the bundles'
 * key. When the agent comes back with that revision (and accepts deltas) the
 * server answers only the entries added or changed since, the IDs removed,
 * and the bundles only if they changed. Any other revision (a server that
 * restarted, another server of the cluster, an answer the agent never got)
 * gets the full set, which the agent applies as before.
 *
 * Memory is bounded: at most `maxEntries` remembered entry revisions in all;
 * past that the agents not heard from longest are forgotten (their next sync
 * is full). One remembered answer per agent.
 */

/** What the server answered an agent last. */
interface Remembered {
  readonly revision: string;
  /** Entry ID → entry revision. */
  readonly entries: ReadonlyMap<string, number>;
  readonly bundlesKey: string;
}

/** What changed since a remembered answer. */
export interface SyncDelta<E> {
  readonly changed: readonly E[];
  readonly removedIds: readonly string[];
  readonly bundlesChanged: boolean;
}

/** Default bound on remembered entry revisions (about 100 bytes each). */
export const DEFAULT_MAX_REMEMBERED_ENTRIES = 2_000_000;

/** Per-agent memory of the last SyncAuthorized answer; see the module comment. */
export class AgentSyncHistory {
  readonly #maxEntries: number;
  // Insertion order is recency order: an agent is re-inserted on every answer.
  readonly #byAgent = new Map<string, Remembered>();
  #total = 0;

  constructor(maxEntries: number = DEFAULT_MAX_REMEMBERED_ENTRIES) {
    this.#maxEntries = maxEntries;
  }

  /** Agents remembered. */
  get agents(): number {
    return this.#byAgent.size;
  }

  /** Entry revisions remembered in all. */
  get entries(): number {
    return this.#total;
  }

  /**
   * What changed for `agentId` since `knownRevision`, or undefined when that
   * is not the revision remembered for it (then the answer must be full).
   */
  delta<E extends { readonly id: string; readonly revision: number }>(agentId: string, knownRevision: string, current: readonly E[], bundlesKey: string): SyncDelta<E> | undefined {
    const before = this.#byAgent.get(agentId);
    if (!before || knownRevision === "" || before.revision !== knownRevision) return undefined;
    const changed: E[] = [];
    const seen = new Set<string>();
    for (const e of current) {
      seen.add(e.id);
      if (before.entries.get(e.id) !== e.revision) changed.push(e);
    }
    const removedIds: string[] = [];
    for (const id of before.entries.keys()) if (!seen.has(id)) removedIds.push(id);
    return { changed, removedIds, bundlesChanged: before.bundlesKey !== bundlesKey };
  }

  /** Remembers the answer `revision` given to `agentId`. */
  remember(agentId: string, revision: string, current: readonly { readonly id: string; readonly revision: number }[], bundlesKey: string): void {
    const old = this.#byAgent.get(agentId);
    if (old) {
      if (old.revision === revision) {
        // Unchanged: only its recency moves.
        this.#byAgent.delete(agentId);
        this.#byAgent.set(agentId, old);
        return;
      }
      this.#forget(agentId, old);
    }
    if (current.length > this.#maxEntries) return;
    const entries = new Map<string, number>();
    for (const e of current) entries.set(e.id, e.revision);
    this.#byAgent.set(agentId, { revision, entries, bundlesKey });
    this.#total += entries.size;
    for (const [id, r] of this.#byAgent) {
      if (this.#total <= this.#maxEntries) break;
      this.#forget(id, r);
    }
  }

  /** Forgets an agent (evicted, or its answer can no longer be trusted). */
  forget(agentId: string): void {
    const r = this.#byAgent.get(agentId);
    if (r) this.#forget(agentId, r);
  }

  #forget(agentId: string, r: Remembered): void {
    this.#byAgent.delete(agentId);
    this.#total -= r.entries.size;
  }
}
