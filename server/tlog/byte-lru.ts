/**
 * A map held under a byte budget, for the log's resource caches: the least
 * recently used values are dropped first, and a value larger than the whole
 * budget is never kept. The caller says what each value costs.
 */

/** See the module comment. */
export class ByteLru<K, V> {
  readonly maxBytes: number;
  // Insertion order is recency: a hit is moved to the end.
  readonly #map = new Map<K, { readonly value: V; readonly bytes: number }>();
  #bytes = 0;

  /** @param maxBytes - the budget; 0 keeps nothing. */
  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  /** Bytes held now (never more than {@link maxBytes}). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Values held now. */
  get size(): number {
    return this.#map.size;
  }

  /** The value kept under `key`, now the most recently used; undefined when none. */
  get(key: K): V | undefined {
    const hit = this.#map.get(key);
    if (hit === undefined) return undefined;
    this.#map.delete(key);
    this.#map.set(key, hit);
    return hit.value;
  }

  /** Keeps `value` under `key` at a cost of `bytes`, dropping the least recently used until it fits; not kept when `bytes` exceeds the budget. */
  set(key: K, value: V, bytes: number): void {
    this.delete(key);
    if (bytes > this.maxBytes) return;
    this.#map.set(key, { value, bytes });
    this.#bytes += bytes;
    while (this.#bytes > this.maxBytes) this.delete(this.#map.keys().next().value as K);
  }

  /** Drops the value under `key`, if any. */
  delete(key: K): void {
    const old = this.#map.get(key);
    if (old === undefined) return;
    this.#map.delete(key);
    this.#bytes -= old.bytes;
  }

  /** Drops everything. */
  clear(): void {
    this.#map.clear();
    this.#bytes = 0;
  }
}
