/**
 * Services: the named parts a binary is composed of (the server's SVID
 * renewal, the entry index feed, prune jobs, each endpoint, health), each with
 * `start` and `stop` and, where it has one, its own readiness. A
 * {@link ServiceGroup} starts them in order, stops them in reverse (on SIGTERM,
 * or when a later one fails to start), and combines their readiness, so a
 * composition root reads as the list of its services.
 */
import type { Logger } from "./log.js";
import type { Readiness } from "./health/http-server.js";

/** A named part of a binary with a lifecycle. */
export interface Service {
  /** Short, stable, for logs (`entry-index`, `agent-api`). */
  readonly name: string;
  /** Starts the service; resolves once it does its job (a listener is bound, a first load done). */
  start(): Promise<void> | void;
  /** Stops it and releases what it holds. Called once, and only after a successful start. */
  stop(): Promise<void> | void;
  /** Why the service cannot do its job now (empty when it can); omitted means always ready once started. */
  readiness?(): readonly string[] | Promise<readonly string[]>;
}

/** A service made of two functions, for the parts that need no state of their own. */
export function service(name: string, start: () => Promise<void> | void, stop: () => Promise<void> | void = () => undefined, readiness?: Service["readiness"]): Service {
  return { name, start, stop, ...(readiness === undefined ? {} : { readiness }) };
}

/**
 * Services started in order and stopped in reverse.
 *
 * @example
 * ```ts
 * const services = new ServiceGroup([datastore, ca, entryIndex, agentApi, health], log);
 * await services.start();   // a failing start stops those already started, then rethrows
 * await waitForStopSignal();
 * await services.stop();
 * ```
 */
export class ServiceGroup {
  readonly #services: readonly Service[];
  readonly #log: Logger;
  readonly #started: Service[] = [];
  #stopping: Promise<void> | undefined;

  constructor(services: readonly Service[], log: Logger) {
    this.#services = services;
    this.#log = log;
  }

  /** The services' names, in start order. */
  get names(): string[] {
    return this.#services.map((s) => s.name);
  }

  /**
   * Starts every service in order. If one fails, those already started are
   * stopped in reverse order and the failure is rethrown.
   */
  async start(): Promise<void> {
    for (const s of this.#services) {
      try {
        await s.start();
      } catch (e) {
        this.#log.error({ service: s.name, err: e }, "Service failed to start; stopping those already started");
        await this.stop();
        throw e;
      }
      this.#started.push(s);
      this.#log.info({ service: s.name }, "Service started");
    }
  }

  /** Stops the started services in reverse order; a failing stop is logged and the rest still stop. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      for (const s of [...this.#started].reverse()) {
        try {
          await s.stop();
          this.#log.info({ service: s.name }, "Service stopped");
        } catch (e) {
          this.#log.error({ service: s.name, err: e }, "Service failed to stop cleanly");
        }
      }
      this.#started.length = 0;
    })();
    return this.#stopping;
  }

  /** Ready when every service has started and none reports a reason; the reasons name their service. */
  async readiness(): Promise<Readiness> {
    if (this.#started.length < this.#services.length) {
      const pending = this.#services.filter((s) => !this.#started.includes(s)).map((s) => `${s.name}: not started`);
      return { ready: false, reasons: pending };
    }
    const reasons: string[] = [];
    for (const s of this.#services) {
      for (const r of (await s.readiness?.()) ?? []) reasons.push(`${s.name}: ${r}`);
    }
    return { ready: reasons.length === 0, reasons };
  }
}
