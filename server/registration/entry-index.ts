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
 * **Caching per root.** An agent's answer is the union of what descends from
 * each of its *roots*: its own ID and the SPIFFE IDs of the node aliases its
 * selectors match (reachability from a set of nodes is the union of the
 * reachability from each). One traversal is cached per root, with the nodes
 * whose children it read, its entries and a digest of them; agents sharing a
 * node alias (the Kubernetes layout: one alias per cluster with every
 * workload under it) share its traversal. Per agent only its selectors, its
 * roots and, once asked, the combined answer are kept. A change drops the
 * traversals of the roots that visited the changed entry's old or new parent
 * (a changed SPIFFE ID, selector or revision is covered: the entry's parent
 * is visited by every root reaching it) and names the agents using those
 * roots; a node alias change re-matches the agents whose selectors match it
 * before or after and names those whose roots changed.
 * {@link EntryIndex.onInvalidate} tells consumers (the change notifier) which
 * agents were named. {@link EntryIndex.forget} drops a deleted agent.
 */

import { createHash } from "node:crypto";
import { StringSetMap } from "./string-set-map.js";

/** The fields of a registration entry the index needs. */
export interface IndexedEntry {
  readonly id: string;
  readonly spiffeId: string;
  readonly parentId: string;
  /** Selectors as `type:value` strings. */
  readonly selectors: readonly string[];
  readonly revision: number;
}

/** One root's cached traversal. */
interface RootSlot<E> {
  readonly entries: readonly E[];
  /** The nodes whose children the traversal read; the root is registered under each in `#rootsByNode`. */
  readonly visited: readonly string[];
  /** Hash over the entries' `id@revision`, in order. */
  readonly digest: string;
}

/** What is kept per agent. */
interface AgentSlot<E> {
  readonly selectorKey: string;
  readonly selectors: ReadonlySet<string>;
  /** Its own ID, then the matched node aliases' SPIFFE IDs (no repeats); it is registered under each in `#agentsByRoot`. */
  roots: readonly string[];
  /** The combined answer, once asked; dropped with any of its roots' traversals. */
  entries: readonly E[] | undefined;
  /** Its roots' digests joined, once asked; dropped with the answer. */
  digest: string | undefined;
}

/** Told which agents' cached answers were dropped; see {@link EntryIndex.onInvalidate}. */
export type InvalidationListener = (agentIds: ReadonlySet<string>) => void;

/** Options of an {@link EntryIndex}. */
export interface EntryIndexOptions {
  /**
   * Called with what an invalidation listener threw (the index and the other
   * listeners carry on). Default: `process.emitWarning`.
   */
  readonly onListenerError?: (err: unknown) => void;
}

/** Delivery rounds of names raised while listeners run (a listener calling back into the index) before giving up. */
const MAX_EMIT_ROUNDS = 100;
const NO_ENTRIES: readonly never[] = Object.freeze([]);
const EMPTY_DIGEST = digestOf([]);

function digestOf(entries: readonly IndexedEntry[]): string {
  const h = createHash("sha256");
  for (const e of entries) h.update(`${e.id}@${e.revision};`);
  return h.digest("base64url").slice(0, 22);
}

function defaultListenerError(err: unknown): void {
  process.emitWarning(`entry index: an invalidation listener threw: ${err instanceof Error ? err.message : String(err)}`, {
    type: "SigilWarning",
    code: "SIGIL_ENTRY_INDEX_LISTENER",
    ...(err instanceof Error && err.stack !== undefined ? { detail: err.stack } : {}),
  });
}

/** The entry index; see the module comment. */
export class EntryIndex<E extends IndexedEntry = IndexedEntry> {
  readonly #serverId: string;
  readonly #onListenerError: (err: unknown) => void;
  readonly #entries = new Map<string, E>();
  readonly #byParent = new Map<string, Set<string>>();
  readonly #bySpiffeId = new StringSetMap();
  readonly #aliasesBySelector = new Map<string, Set<string>>();
  readonly #agents = new Map<string, AgentSlot<E>>();
  /** Root ID -> its cached traversal (absent until an agent using it is asked for, and after a change dropped it). */
  readonly #roots = new Map<string, RootSlot<E>>();
  /** Node ID -> the roots whose cached traversal read that node's children. */
  readonly #rootsByNode = new StringSetMap();
  /** Root ID -> the agents whose roots include it. */
  readonly #agentsByRoot = new StringSetMap();
  readonly #listeners = new Set<InvalidationListener>();
  /** Names raised and not yet delivered (delivery is under way while `#emitting`). */
  #pending = new Set<string>();
  #emitting = false;
  #generation = 0;

  /** @param serverId the server's SPIFFE ID (`spiffe://<td>/spire/server`): node aliases are its children. */
  constructor(serverId: string, entries: Iterable<E> = [], options: EntryIndexOptions = {}) {
    this.#serverId = serverId;
    this.#onListenerError = options.onListenerError ?? defaultListenerError;
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
    this.#flush();
  }

  /** Removes an entry (a delete event). Unknown IDs are ignored. */
  delete(id: string): void {
    const old = this.#entries.get(id);
    if (!old) return;
    this.#remove(id);
    this.#generation++;
    this.#invalidate(old, undefined);
    this.#flush();
  }

  /**
   * Calls `listener` with the IDs of the agents whose cached answer a change
   * dropped: after an upsert or delete that concerns them (once the index is
   * updated), and when an agent's answer is asked for with other selectors
   * than it was cached with. An agent never asked for (or forgotten) is never
   * named: a consumer that must learn of every change to an agent's answer
   * asks for that answer once (so it is cached) and again after each time the
   * agent is named. Listeners should not call into the index synchronously
   * (defer to a tick, as the change notifier does): names raised meanwhile are
   * delivered after the current round, and an answer asked for with other
   * selectors replaces the one an outer caller is being given. What a listener
   * throws goes to `onListenerError`. Returns the unsubscribe function.
   */
  onInvalidate(listener: InvalidationListener): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /**
   * Drops what is cached for the agent (a deleted, banned or evicted agent
   * that will not be asked for again). It is not named. Asking for it again
   * later caches it again.
   */
  forget(agentId: string): void {
    const slot = this.#agents.get(agentId);
    if (!slot) return;
    this.#agents.delete(agentId);
    this.#unlink(agentId, slot.roots);
  }

  /** True while something is cached for the agent (it was asked for and not forgotten). */
  caches(agentId: string): boolean {
    return this.#agents.has(agentId);
  }

  /** Entries whose SPIFFE ID is `spiffeId` (any parent). */
  withSpiffeId(spiffeId: string): E[] {
    return this.#bySpiffeId.get(spiffeId).map((id) => this.#entries.get(id) as E);
  }

  /** Entries directly parented by `parentId`. */
  children(parentId: string): E[] {
    const ids = this.#byParent.get(parentId);
    return ids ? [...ids].map((id) => this.#entries.get(id) as E) : [];
  }

  /**
   * Every entry the agent may obtain SVIDs for, given its SPIFFE ID and the
   * selectors from its node attestation: the union of its roots' entries (its
   * own ID's first, then each matched alias's), each entry once. Results are
   * cached until a change concerns the agent (see the module comment) or it is
   * asked for with other selectors.
   */
  authorizedEntries(agentId: string, agentSelectors: readonly string[]): readonly E[] {
    const slot = this.#agentSlot(agentId, agentSelectors);
    const entries = (slot.entries ??= this.#combine(slot.roots));
    this.#flush();
    return entries;
  }

  /**
   * A key that changes whenever the agent's {@link authorizedEntries} answer
   * does (its entries' IDs or revisions): its roots' digests, in order. Cheap
   * when many agents share a root (the root's digest is computed once per
   * traversal). It does not follow expiry. Caches the agent like
   * {@link authorizedEntries}.
   */
  authorizedDigest(agentId: string, agentSelectors: readonly string[]): string {
    const slot = this.#agentSlot(agentId, agentSelectors);
    const digest = (slot.digest ??= slot.roots.map((r) => this.#root(r).digest).join(""));
    this.#flush();
    return digest;
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

  /** The agent's slot for these selectors: the cached one, or a new one (then the agent is named if it replaced one). */
  #agentSlot(agentId: string, agentSelectors: readonly string[]): AgentSlot<E> {
    const sorted = agentSelectors.length === 0 ? [] : [...agentSelectors].sort();
    const selectorKey = sorted.join("\n");
    const slot = this.#agents.get(agentId);
    if (slot?.selectorKey === selectorKey) return slot;
    const selectors = new Set(sorted);
    const fresh: AgentSlot<E> = { selectorKey, selectors, roots: this.#rootsOf(agentId, selectors), entries: undefined, digest: undefined };
    this.#link(agentId, fresh.roots);
    this.#agents.set(agentId, fresh);
    if (slot) {
      this.#unlink(agentId, slot.roots.filter((r) => !fresh.roots.includes(r)));
      // Another caller may hold the answer for the other selectors.
      this.#pending.add(agentId);
    }
    return fresh;
  }

  /** The agent's own ID, then the SPIFFE IDs of the node aliases its selectors match, each once. */
  #rootsOf(agentId: string, selectors: ReadonlySet<string>): string[] {
    const roots = [agentId];
    for (const alias of this.matchingAliases(selectors)) if (!roots.includes(alias.spiffeId)) roots.push(alias.spiffeId);
    return roots;
  }

  #link(agentId: string, roots: readonly string[]): void {
    for (const r of roots) this.#agentsByRoot.add(r, agentId);
  }

  /** Removes the agent from these roots; a root no agent uses any more loses its traversal. */
  #unlink(agentId: string, roots: readonly string[]): void {
    for (const r of roots) if (this.#agentsByRoot.delete(r, agentId)) this.#dropRoot(r, undefined);
  }

  /** The root's cached traversal, computed (and its visited nodes registered) if absent. */
  #root(rootId: string): RootSlot<E> {
    const cached = this.#roots.get(rootId);
    if (cached) return cached;
    const queue: string[] = [rootId];
    const visited = new Set<string>(queue);
    const out: E[] = [];
    for (let i = 0; i < queue.length; i++) {
      const ids = this.#byParent.get(queue[i] as string);
      if (!ids) continue;
      for (const id of ids) {
        // Each entry has one parent, visited once: no entry is reached twice.
        const e = this.#entries.get(id) as E;
        out.push(e);
        if (!visited.has(e.spiffeId)) {
          visited.add(e.spiffeId);
          queue.push(e.spiffeId);
        }
      }
    }
    const slot: RootSlot<E> = out.length === 0 ? { entries: NO_ENTRIES, visited: queue, digest: EMPTY_DIGEST } : { entries: out, visited: queue, digest: digestOf(out) };
    this.#roots.set(rootId, slot);
    for (const node of queue) this.#rootsByNode.add(node, rootId);
    return slot;
  }

  /** The union of the roots' entries, each once, in root order (a single non-empty root's array is shared, not copied). */
  #combine(roots: readonly string[]): readonly E[] {
    const lists = roots.map((r) => this.#root(r).entries).filter((l) => l.length > 0);
    if (lists.length <= 1) return lists[0] ?? NO_ENTRIES;
    const seen = new Set<string>();
    const out: E[] = [];
    for (const list of lists) {
      for (const e of list) {
        if (seen.has(e.id)) continue;
        seen.add(e.id);
        out.push(e);
      }
    }
    return out;
  }

  /** Drops the root's traversal; the agents using it lose their combined answer and are added to `named`. */
  #dropRoot(rootId: string, named: Set<string> | undefined): void {
    const slot = this.#roots.get(rootId);
    if (!slot) return;
    this.#roots.delete(rootId);
    for (const node of slot.visited) this.#rootsByNode.delete(node, rootId);
    for (const a of this.#agentsByRoot.get(rootId)) {
      const agent = this.#agents.get(a);
      if (!agent) continue;
      agent.entries = undefined;
      agent.digest = undefined;
      named?.add(a);
    }
  }

  /**
   * Drops the cached traversals and answers a change from `old` to `now`
   * (either absent) may alter, and queues the names of the agents concerned.
   */
  #invalidate(old: E | undefined, now: E | undefined): void {
    if (this.#agents.size === 0) return;
    const named = this.#pending;
    for (const parent of [old?.parentId, now?.parentId]) {
      if (parent === undefined) continue;
      for (const r of this.#rootsByNode.get(parent)) this.#dropRoot(r, named);
    }
    // A node alias decides which agents start from its SPIFFE ID: those whose selectors match it, before or after.
    const aliases = [old, now].filter((e): e is E => e !== undefined && e.parentId === this.#serverId && e.selectors.length > 0);
    if (aliases.length === 0) return;
    for (const [agentId, slot] of this.#agents) {
      if (!aliases.some((a) => a.selectors.every((s) => slot.selectors.has(s)))) continue;
      const roots = this.#rootsOf(agentId, slot.selectors);
      if (roots.length === slot.roots.length && roots.every((r, i) => r === slot.roots[i])) continue;
      const before = slot.roots;
      this.#link(agentId, roots);
      slot.roots = roots;
      slot.entries = undefined;
      slot.digest = undefined;
      this.#unlink(agentId, before.filter((r) => !roots.includes(r)));
      named.add(agentId);
    }
  }

  /**
   * Delivers the queued names to the listeners, unless a delivery is under
   * way (a listener called back into the index): that one delivers them after
   * its current round.
   */
  #flush(): void {
    if (this.#emitting || this.#pending.size === 0) return;
    this.#emitting = true;
    try {
      for (let round = 0; this.#pending.size > 0; round++) {
        const names = this.#pending;
        this.#pending = new Set();
        if (round === MAX_EMIT_ROUNDS) {
          this.#onListenerError(new Error(`entry index: invalidation listeners kept changing the index for ${MAX_EMIT_ROUNDS} rounds; ${names.size} agents not named (a listener calls back into the index with other selectors)`));
          break;
        }
        for (const l of [...this.#listeners]) {
          try {
            l(names);
          } catch (err) {
            this.#onListenerError(err);
          }
        }
      }
    } finally {
      this.#emitting = false;
    }
  }

  #add(e: E): void {
    this.#entries.set(e.id, e);
    let set = this.#byParent.get(e.parentId);
    if (!set) this.#byParent.set(e.parentId, (set = new Set()));
    set.add(e.id);
    this.#bySpiffeId.add(e.spiffeId, e.id);
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
    this.#bySpiffeId.delete(e.spiffeId, id);
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
