/**
 * Values built once per turn of the event loop. After a rotation every open
 * stream on the Workload Endpoint recomputes its message in the same turn;
 * callers whose views are made of the same cache objects (the replicas of one
 * service on a node) share one message, so it is built and encoded once. The
 * cache replaces entries, SVIDs and bundle snapshots on change and never
 * modifies them, so a key made of their {@link objectKey}s names exactly one
 * state. The memo is dropped at the next turn.
 */

/** Small numbers naming objects in memo keys. */
const objectKeys = new WeakMap<object, number>();
let lastObjectKey = 0;

/** A number naming `o` for as long as it lives, for memo keys. */
export function objectKey(o: object): number {
  let id = objectKeys.get(o);
  if (id === undefined) objectKeys.set(o, (id = ++lastObjectKey));
  return id;
}

/** This turn's values, by kind and key. */
let thisTurn: Map<string, unknown> | undefined;

/**
 * The value built for `kind` and `key` in this turn of the event loop, or
 * `build()`'s result, kept until the next turn. `kind` keeps the values of
 * different builders apart.
 */
export function memoThisTurn<T>(kind: string, key: string, build: () => T): T {
  if (thisTurn === undefined) {
    thisTurn = new Map();
    setImmediate(() => {
      thisTurn = undefined;
    });
  }
  const k = `${kind}\u0000${key}`;
  if (thisTurn.has(k)) return thisTurn.get(k) as T;
  const value = build();
  thisTurn.set(k, value);
  return value;
}
