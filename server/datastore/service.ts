/**
 * The datastore as a service (`datastore`): opens the configured DataStore
 * plugin, refuses a datastore that holds another trust domain's CA (the trust
 * domain may never change under existing data), is ready while a query
 * answers, and is closed last at stop.
 */
import type { Clock } from "../../common/clock.js";
import type { Service } from "../../common/service.js";
import { createPlugins, PLUGIN_CATALOG, type PluginSection } from "../../plugins/catalog.js";
import { SigilError } from "../../spiffe/errors.js";
import type { TrustDomain } from "../../spiffe/id.js";
import type { Datastore } from "./datastore.js";

/** Dependencies of the {@link DatastoreService}. */
export interface DatastoreServiceDeps {
  /** `plugins.DataStore` of the server config. */
  readonly plugin: PluginSection | undefined;
  /** The configured trust domain, which the stored CA must belong to. */
  readonly trustDomain: TrustDomain;
  readonly clock: Clock;
}

/** The `datastore` service; see the module comment. */
export class DatastoreService implements Service {
  readonly name = "datastore";
  readonly #d: DatastoreServiceDeps;
  #datastore: Datastore | undefined;

  constructor(deps: DatastoreServiceDeps) {
    this.#d = deps;
  }

  /** The open datastore, for the services started after this one. */
  get datastore(): Datastore {
    if (!this.#datastore) throw new SigilError("ERR_UNAVAILABLE", "datastore: not started");
    return this.#datastore;
  }

  async start(): Promise<void> {
    const [open] = createPlugins("server", PLUGIN_CATALOG.DataStore, this.#d.plugin, { clock: this.#d.clock });
    if (open === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", "server: plugins.DataStore: one DataStore plugin must be configured");
    const datastore = await open;
    try {
      const td = this.#d.trustDomain.name;
      const ownStored = (await datastore.listBundles()).some((b) => b.trustDomain === td);
      if (!ownStored && (await datastore.listCaJournal()).length > 0) {
        throw new SigilError("ERR_INVALID_ARGUMENT", `server: the datastore holds a CA for another trust domain; trust_domain cannot change (config says ${td})`);
      }
    } catch (e) {
      await datastore.close();
      throw e;
    }
    this.#datastore = datastore;
  }

  async stop(): Promise<void> {
    await this.#datastore?.close();
  }

  /** Not ready while the datastore does not answer a query. */
  async readiness(): Promise<string[]> {
    try {
      await this.datastore.countAgents();
      return [];
    } catch (e) {
      return [(e as Error).message];
    }
  }
}
