/**
 * The in-process side of the change feed, shared by every driver: listeners
 * registered with `Datastore.subscribe` hear the events of each committed
 * write, in order; a throwing listener neither fails the write nor starves
 * the others.
 */
import type { ChangeEvent, ChangeListener } from "./change-event.js";
import { invalid } from "./validate.js";

/** Receives a listener's error, with the event it failed on. */
export type ListenerErrorHandler = (error: unknown, event: ChangeEvent) => void;

function warn(error: unknown, event: ChangeEvent): void {
  process.emitWarning(`datastore: change listener failed on event ${event.eventId}: ${error instanceof Error ? error.message : String(error)}`);
}

/** The listeners of one datastore instance. */
export class ChangeNotifier {
  readonly #listeners = new Set<ChangeListener>();
  readonly #onError: ListenerErrorHandler;

  /** `onError` defaults to `process.emitWarning`. */
  constructor(onError: ListenerErrorHandler | undefined) {
    this.#onError = onError ?? warn;
  }

  /** Registers a listener; returns the function that unregisters it. The same function subscribed twice is two subscriptions. */
  subscribe(listener: ChangeListener): () => void {
    if (typeof listener !== "function") throw invalid("listener must be a function");
    const wrapped: ChangeListener = (e) => listener(e);
    this.#listeners.add(wrapped);
    return () => {
      this.#listeners.delete(wrapped);
    };
  }

  /** Tells every listener about `events` (already committed), in order. */
  notify(events: readonly ChangeEvent[]): void {
    if (events.length === 0 || this.#listeners.size === 0) return;
    const listeners = [...this.#listeners];
    for (const event of events) {
      for (const l of listeners) {
        try {
          l(event);
        } catch (e) {
          this.#onError(e, event);
        }
      }
    }
  }

  /** Drops every listener (on close). */
  clear(): void {
    this.#listeners.clear();
  }
}
