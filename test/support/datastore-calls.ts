/**
 * Counts a datastore's method calls, split by whether the agent API's code
 * made them (read from the call stack at the call), for tests and benches
 * that check what agents cost the database. Wraps the instance's methods in
 * place, so every service holding the instance is counted.
 */
import type { Datastore } from "../../server/datastore/index.js";

/** What {@link countDatastoreCalls} counts into. */
export interface DatastoreCalls {
  /** Calls made from `server/api/agent-api.ts`, by method. */
  readonly agentApi: Map<string, number>;
  /** Every other call (the server's timers, admin API, change feed), by method. */
  readonly other: Map<string, number>;
  /** Counting happens only while this is true. */
  counting: boolean;
  /** Empties both maps. */
  clear(): void;
}

/** Wraps every method of `ds`; counting starts on. */
export function countDatastoreCalls(ds: Datastore): DatastoreCalls {
  const calls: DatastoreCalls = {
    agentApi: new Map(),
    other: new Map(),
    counting: true,
    clear() {
      this.agentApi.clear();
      this.other.clear();
    },
  };
  const target = ds as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (const name of Object.getOwnPropertyNames(Object.getPrototypeOf(ds))) {
    if (name === "constructor" || typeof target[name] !== "function") continue;
    const original = target[name] as (...args: unknown[]) => unknown;
    target[name] = (...args: unknown[]) => {
      if (calls.counting) {
        const into = /server[\\/]api[\\/]agent-api\./.test(new Error().stack ?? "") ? calls.agentApi : calls.other;
        into.set(name, (into.get(name) ?? 0) + 1);
      }
      return original.apply(ds, args);
    };
  }
  return calls;
}
