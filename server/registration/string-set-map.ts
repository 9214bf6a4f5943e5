/**
 * Keys to sets of strings, holding a key's lone member as the string itself.
 * Most keys of the entry index have one member (a node reached from one
 * root, a root used by one agent, a SPIFFE ID held by one entry), and a
 * one-member `Set` costs about 150 bytes of heap (the set and its table)
 * where the string is already held elsewhere: with 20 entries per agent that
 * was a few kilobytes per connected agent.
 */
export class StringSetMap {
  readonly #m = new Map<string, string | Set<string>>();

  /** Adds `member` to `key`'s set. */
  add(key: string, member: string): void {
    const held = this.#m.get(key);
    if (held === undefined) this.#m.set(key, member);
    else if (typeof held !== "string") held.add(member);
    else if (held !== member) this.#m.set(key, new Set([held, member]));
  }

  /** Removes `member` from `key`'s set; true when that emptied it (the key is then gone). */
  delete(key: string, member: string): boolean {
    const held = this.#m.get(key);
    if (held === undefined) return false;
    if (typeof held === "string") {
      if (held !== member) return false;
      this.#m.delete(key);
      return true;
    }
    held.delete(member);
    // Back to the lone string, so a key that once had two members does not keep its set.
    if (held.size === 1) this.#m.set(key, held.values().next().value as string);
    return false;
  }

  /** A copy of `key`'s members in insertion order (empty when it has none): callers may change the map while going through it. */
  get(key: string): string[] {
    const held = this.#m.get(key);
    if (held === undefined) return [];
    return typeof held === "string" ? [held] : [...held];
  }

  /** Keys with at least one member. */
  get size(): number {
    return this.#m.size;
  }
}
