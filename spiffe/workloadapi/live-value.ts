/**
 * The part X509Source and JwtSource share: their options, and a value kept
 * current by a Workload API watcher, with a promise for its first arrival and
 * update/error listeners.
 */
import { SigilError } from "../errors.js";
import {
  createWorkloadApiClient,
  type WatchErrorHandler,
  type WatchErrorInfo,
  type WatchUpdateHandler,
  type Watcher,
  type WorkloadApiClient,
  type WorkloadApiClientOptions,
} from "./client.js";

/** Events of a live source: `update` with the new value, `error` with the watch error. */
export interface LiveSourceEvents<T> {
  update: (value: T) => void;
  error: (error: SigilError, info: WatchErrorInfo) => void;
}

/** Options of {@link X509Source.create} and {@link JwtSource.create}. */
export interface SourceOptions {
  /**
   * The client to watch with. The source does not close a client it was given.
   * Without one, the source creates (and on close, closes) its own from `clientOptions`.
   */
  readonly client?: WorkloadApiClient;
  /** Options for the source's own client, when `client` is not given. */
  readonly clientOptions?: WorkloadApiClientOptions;
  /** Stops waiting for the first update; `create` then rejects. */
  readonly signal?: AbortSignal;
}

/** @internal The client a source uses, and whether the source must close it. */
export function ownedClient(options: SourceOptions): { client: WorkloadApiClient; owned: boolean } {
  if (options.client !== undefined) return { client: options.client, owned: false };
  return { client: createWorkloadApiClient(options.clientOptions ?? {}), owned: true };
}

/** @internal A watched value. */
export class LiveValue<T> {
  #value: T | undefined;
  #closed = false;
  readonly #watcher: Watcher;
  readonly #update = new Set<(value: T) => void>();
  readonly #error = new Set<(error: SigilError, info: WatchErrorInfo) => void>();
  readonly #ready: Promise<void>;
  #settleReady!: (err?: SigilError) => void;

  constructor(
    what: string,
    start: (onUpdate: WatchUpdateHandler<T>, onError: WatchErrorHandler) => Watcher,
    signal: AbortSignal | undefined,
  ) {
    this.#ready = new Promise<void>((resolve, reject) => {
      let done = false;
      this.#settleReady = (err) => {
        if (done) return;
        done = true;
        if (err === undefined) resolve();
        else reject(err);
      };
    });
    // Callers may never await `ready` (e.g. after close); avoid unhandled rejections.
    this.#ready.catch(() => undefined);
    this.#watcher = start(
      (value) => {
        this.#value = value;
        this.#settleReady();
        for (const l of [...this.#update]) l(value);
      },
      (error, info) => {
        if (info.terminal) {
          this.#settleReady(
            new SigilError("ERR_WORKLOAD_API", `workloadapi: ${what}: watch stopped before the first update: ${error.message}`, {
              cause: error,
            }),
          );
        }
        for (const l of [...this.#error]) l(error, info);
      },
    );
    void this.#watcher.stopped.then(() =>
      this.#settleReady(new SigilError("ERR_WORKLOAD_API", `workloadapi: ${what}: watch stopped before the first update`)),
    );
    if (signal !== undefined) {
      const onAbort = (): void => {
        this.#settleReady(
          new SigilError("ERR_WORKLOAD_API", `workloadapi: ${what}: gave up waiting for the first update`, {
            cause: signal.reason,
          }),
        );
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
  }

  /** Resolves on the first update; rejects on a terminal error, abort, or close. */
  get ready(): Promise<void> {
    return this.#ready;
  }

  get value(): T | undefined {
    return this.#value;
  }

  get closed(): boolean {
    return this.#closed;
  }

  on<E extends keyof LiveSourceEvents<T>>(event: E, listener: LiveSourceEvents<T>[E]): () => void {
    const set = (event === "update" ? this.#update : this.#error) as Set<LiveSourceEvents<T>[E]>;
    set.add(listener);
    return () => set.delete(listener);
  }

  close(what: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#settleReady(new SigilError("ERR_WORKLOAD_API", `workloadapi: ${what}: closed before the first update`));
    this.#watcher.close();
  }
}
