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
 *
 * **Per-agent caching.** An agent's answer depends only on the node aliases
 * its selectors match and on the children of the nodes its traversal visited
 * (its own ID, the matched aliases' SPIFFE IDs, its entries' SPIFFE IDs). So
 * each cached answer keeps those nodes, and a change drops only the answers
 * of the agents that visited the changed entry's old or new parent (a changed
 * SPIFFE ID, selector or revision is covered: the entry's parent is visited by
 * every agent holding it), plus, for a node alias, the agents whose selectors
 * match it before or after the change. {@link EntryIndex.onInvalidate} tells
 * consumers (the change notifier) which agents those were.
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
  readonly selectorKey: string;
  readonly selectors: ReadonlySet<string>;
  readonly entries: readonly E[];
  /** The nodes whose children the traversal read; the agent is registered under each in `#watchedBy`. */
  readonly visited: readonly string[];
}

/** Told which agents' cached answers were dropped; see {@link EntryIndex.onInvalidate}. */
export type InvalidationListener = (agentIds: ReadonlySet<string>) => void;

/** The entry index; see the module comment. */
export class EntryIndex<E extends IndexedEntry = IndexedEntry> {
  readonly #serverId: string;
  readonly #entries = new Map<string, E>();
  readonly #byParent = new Map<string, Set<string>>();
  readonly #bySpiffeId = new Map<string, Set<string>>();
  readonly #aliasesBySelector = new Map<string, Set<string>>();
  readonly #cache = new Map<string, AgentCacheSlot<E>>();
  /** Node ID -> the agents whose cached traversal read that node's children. */
  readonly #watchedBy = new Map<string, Set<string>>();
  readonly #listeners = new Set<InvalidationListener>();
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
    const old = this.#entries.get(entry.id);
    if (old) this.#remove(entry.id);
    this.#add(entry);
    this.#generation++;
    this.#invalidate(old, entry);
  }

  /** Removes an entry (a delete event). Unknown IDs are ignored. */
  delete(id: string): void {
    const old = this.#entries.get(id);
    if (!old) return;
    this.#remove(id);
    this.#generation++;
    this.#invalidate(old, undefined);
  }

  /**
   * Calls `listener`, synchronously, with the IDs of the agents whose cached
   * answer a change dropped: after an upsert or delete that concerns them, and
   * when an agent's answer is recomputed for other selectors than it was
   * cached with. An agent not cached is never named: a consumer that must
   * learn of every change to an agent's answer asks for that answer once (so
   * it is cached) and again after each time the agent is named. Returns the
   * unsubscribe function.
   */
  onInvalidate(listener: InvalidationListener): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
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
   * selectors from its node attestation. Results are cached per agent until a
   * change concerns that agent (see the module comment) or it is asked for with
   * other selectors.
   */
  authorizedEntries(agentId: string, agentSelectors: readonly string[]): readonly E[] {
    const selectorKey = agentSelectors.length === 0 ? "" : [...agentSelectors].sort().join("\n");
    const slot = this.#cache.get(agentId);
    if (slot?.selectorKey === selectorKey) return slot.entries;
    const selectors = new Set(agentSelectors);
    const { entries, visited } = this.#compute(agentId, selectors);
    if (slot) this.#unregister(agentId, slot);
    this.#cache.set(agentId, { selectorKey, selectors, entries, visited });
    for (const node of visited) {
      let agents = this.#watchedBy.get(node);
      if (!agents) this.#watchedBy.set(node, (agents = new Set()));
      agents.add(agentId);
    }
    // Another caller may hold a digest of the answer for the other selectors.
    if (slot) this.#emit(new Set([agentId]));
    return entries;
  }

  /** Node aliases (children of the server ID) whose selectors the agent has. */
  matchingAliases(agentSelectors: readonly string[] | ReadonlySet<string>): E[] {
    const have = agentSelectors instanceof Set ? (agentSelectors as ReadonlySet<string>) : new Set(agentSelectors);
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

  /** The agent's entries and the nodes whose children were read (the traversal's queue). */
  #compute(agentId: string, agentSelectors: ReadonlySet<string>): { entries: E[]; visited: string[] } {
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
    return { entries: out, visited: queue };
  }

  /**
   * Drops the cached answers a change from `old` to `now` (either absent) may
   * alter, and tells the listeners which agents those were.
   */
  #invalidate(old: E | undefined, now: E | undefined): void {
    if (this.#cache.size === 0) return;
    const agents = new Set<string>();
    for (const parent of [old?.parentId, now?.parentId]) {
      if (parent === undefined) continue;
      for (const a of this.#watchedBy.get(parent) ?? []) agents.add(a);
    }
    // A node alias decides which agents start from its SPIFFE ID: those whose selectors match it, before or after.
    const aliases = [old, now].filter((e): e is E => e !== undefined && e.parentId === this.#serverId && e.selectors.length > 0);
    if (aliases.length > 0) {
      for (const [agentId, slot] of this.#cache) {
        if (aliases.some((a) => a.selectors.every((s) => slot.selectors.has(s)))) agents.add(agentId);
      }
    }
    if (agents.size === 0) return;
    for (const a of agents) {
      const slot = this.#cache.get(a);
      if (!slot) continue;
      this.#cache.delete(a);
      this.#unregister(a, slot);
    }
    this.#emit(agents);
  }

  /** Removes the agent from the reverse map under each node its cached answer visited. */
  #unregister(agentId: string, slot: AgentCacheSlot<E>): void {
    for (const node of slot.visited) {
      const agents = this.#watchedBy.get(node);
      agents?.delete(agentId);
      if (agents?.size === 0) this.#watchedBy.delete(node);
    }
  }

  #emit(agents: ReadonlySet<string>): void {
    for (const l of [...this.#listeners]) l(agents);
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
