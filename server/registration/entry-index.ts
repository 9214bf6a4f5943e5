/**
 * In-memory index of registration entries answering "which entries is agent X
 * authorized for" without a datastore query per request. It is loaded once
 * from a full listing and then follows the datastore's change feed.
 *
 * An agent is authorized for every entry that descends from its own SPIFFE ID
 * or from a node alias it matches: a node alias is an entry parented by the
 * server's ID whose selectors are all among the agent's selectors. Descent is
 * followed through entries' SPIFFE IDs (an entry whose parent is another
 * authorized entry's SPIFFE ID is authorized too), as nested/downstream setups
 * need.
 */

/** The fields of a registration entry the index needs. */
export interface IndexedEntry {
  readonly id: string;
  readonly spiffeId: string;
  readonly parentId: string;
  /** Selectors as `type:value` strings. */
  readonly selectors: readonly string[];
  readonly revision: number;
}

interface AgentCacheSlot<E> {
  generation: number;
  selectorKey: string;
  entries: readonly E[];
}

/** The entry index; see the module comment. */
export class EntryIndex<E extends IndexedEntry = IndexedEntry> {
  readonly #serverId: string;
  readonly #entries = new Map<string, E>();
  readonly #byParent = new Map<string, Set<string>>();
  readonly #bySpiffeId = new Map<string, Set<string>>();
  readonly #aliasesBySelector = new Map<string, Set<string>>();
  readonly #cache = new Map<string, AgentCacheSlot<E>>();
  #generation = 0;

  /** @param serverId the server's SPIFFE ID (`spiffe://<td>/spire/server`): node aliases are its children. */
  constructor(serverId: string, entries: Iterable<E> = []) {
    this.#serverId = serverId;
    for (const e of entries) this.#add(e);
  }

  /** Number of entries held. */
  get size(): number {
    return this.#entries.size;
  }

  /** Bumped on every change; callers can use it as a cheap "anything changed" revision. */
  get generation(): number {
    return this.#generation;
  }

  /** The IDs of every entry held. */
  ids(): string[] {
    return [...this.#entries.keys()];
  }

  /** The entry with this ID. */
  get(id: string): E | undefined {
    return this.#entries.get(id);
  }

  /** Inserts or replaces an entry (a create or update event). */
  upsert(entry: E): void {
    if (this.#entries.has(entry.id)) this.#remove(entry.id);
    this.#add(entry);
    this.#generation++;
  }

  /** Removes an entry (a delete event). Unknown IDs are ignored. */
  delete(id: string): void {
    if (this.#remove(id)) this.#generation++;
  }

  /** Entries whose SPIFFE ID is `spiffeId` (any parent). */
  withSpiffeId(spiffeId: string): E[] {
    const ids = this.#bySpiffeId.get(spiffeId);
    return ids ? [...ids].map((id) => this.#entries.get(id) as E) : [];
  }

  /** Entries directly parented by `parentId`. */
  children(parentId: string): E[] {
    const ids = this.#byParent.get(parentId);
    return ids ? [...ids].map((id) => this.#entries.get(id) as E) : [];
  }

  /**
   * Every entry the agent may obtain SVIDs for, given its SPIFFE ID and the
   * selectors from its node attestation. Results are cached per agent until the
   * index or the agent's selectors change.
   */
  authorizedEntries(agentId: string, agentSelectors: readonly string[]): readonly E[] {
    const selectorKey = agentSelectors.length === 0 ? "" : [...agentSelectors].sort().join("\n");
    const slot = this.#cache.get(agentId);
    if (slot && slot.generation === this.#generation && slot.selectorKey === selectorKey) return slot.entries;
    const entries = this.#compute(agentId, agentSelectors);
    this.#cache.set(agentId, { generation: this.#generation, selectorKey, entries });
    return entries;
  }

  /** Node aliases (children of the server ID) whose selectors the agent has. */
  matchingAliases(agentSelectors: readonly string[]): E[] {
    const have = new Set(agentSelectors);
    const seen = new Set<string>();
    const out: E[] = [];
    for (const sel of have) {
      const ids = this.#aliasesBySelector.get(sel);
      if (!ids) continue;
      for (const id of ids) {
        if (seen.has(id)) continue;
        seen.add(id);
        const alias = this.#entries.get(id) as E;
        if (alias.selectors.every((s) => have.has(s))) out.push(alias);
      }
    }
    return out;
  }

  #compute(agentId: string, agentSelectors: readonly string[]): E[] {
    const queue: string[] = [agentId];
    const visited = new Set<string>(queue);
    for (const alias of this.matchingAliases(agentSelectors)) {
      if (!visited.has(alias.spiffeId)) {
        visited.add(alias.spiffeId);
        queue.push(alias.spiffeId);
      }
    }
    const out: E[] = [];
    const emitted = new Set<string>();
    for (let i = 0; i < queue.length; i++) {
      const ids = this.#byParent.get(queue[i] as string);
      if (!ids) continue;
      for (const id of ids) {
        if (emitted.has(id)) continue;
        emitted.add(id);
        const e = this.#entries.get(id) as E;
        out.push(e);
        if (!visited.has(e.spiffeId)) {
          visited.add(e.spiffeId);
          queue.push(e.spiffeId);
        }
      }
    }
    return out;
  }

  #add(e: E): void {
    this.#entries.set(e.id, e);
    let set = this.#byParent.get(e.parentId);
    if (!set) this.#byParent.set(e.parentId, (set = new Set()));
    set.add(e.id);
    let same = this.#bySpiffeId.get(e.spiffeId);
    if (!same) this.#bySpiffeId.set(e.spiffeId, (same = new Set()));
    same.add(e.id);
    if (e.parentId === this.#serverId) {
      for (const s of e.selectors) {
        let ids = this.#aliasesBySelector.get(s);
        if (!ids) this.#aliasesBySelector.set(s, (ids = new Set()));
        ids.add(e.id);
      }
    }
  }

  #remove(id: string): boolean {
    const e = this.#entries.get(id);
    if (!e) return false;
    this.#entries.delete(id);
    const set = this.#byParent.get(e.parentId);
    set?.delete(id);
    if (set?.size === 0) this.#byParent.delete(e.parentId);
    const same = this.#bySpiffeId.get(e.spiffeId);
    same?.delete(id);
    if (same?.size === 0) this.#bySpiffeId.delete(e.spiffeId);
    if (e.parentId === this.#serverId) {
      for (const s of e.selectors) {
        const ids = this.#aliasesBySelector.get(s);
        ids?.delete(id);
        if (ids?.size === 0) this.#aliasesBySelector.delete(s);
      }
    }
    return true;
  }
}
