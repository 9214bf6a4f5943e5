/**
 * The Notifier plugins as a service (`notifiers`): creates them, hands each
 * the CA's current bundle at start and every new one after the CA stored it
 * ({@link CaManager.onBundleChange}: an authority prepared, or one expired and
 * removed). Notifiers work in the background, so neither the start nor a
 * rotation waits for them, and a notifier that throws is logged, never
 * propagated into the CA.
 */
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import type { Service } from "../../common/service.js";
import { createPlugins, PLUGIN_CATALOG, type PluginSection } from "../../plugins/catalog.js";
import { OwnedPlugins } from "../../plugins/descriptor.js";
import type { BundleNotifier } from "../../plugins/notifier/types.js";
import type { SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import type { CaManager } from "./manager.js";

/** Dependencies of the {@link NotifierService}. */
export interface NotifierServiceDeps {
  /** `plugins.Notifier` of the server config. */
  readonly plugins: PluginSection | undefined;
  /** The CA service, started before this one. */
  readonly ca: { readonly manager: CaManager };
  readonly metrics: Metrics;
  readonly log: Logger;
}

/** The `notifiers` service; see the module comment. */
export class NotifierService implements Service {
  readonly name = "notifiers";
  readonly #d: NotifierServiceDeps;
  readonly #plugins: OwnedPlugins;
  #unsubscribe: (() => void) | undefined;

  constructor(deps: NotifierServiceDeps) {
    this.#d = deps;
    this.#plugins = new OwnedPlugins(deps.log);
  }

  start(): Promise<void> {
    return this.#plugins.starting(async () => {
      const { log, metrics } = this.#d;
      const notifiers = this.#plugins.add(createPlugins("server", PLUGIN_CATALOG.Notifier, this.#d.plugins, { log, metrics }));
      if (notifiers.length === 0) return;
      const manager = this.#d.ca.manager;
      const notify = (bundle: SpiffeBundle): void => {
        for (const n of notifiers) this.#notify(n, bundle);
      };
      this.#unsubscribe = manager.onBundleChange(notify);
      notify(manager.bundle());
    });
  }

  #notify(notifier: BundleNotifier, bundle: SpiffeBundle): void {
    try {
      notifier.bundleUpdated(bundle);
    } catch (err) {
      this.#d.log.error({ plugin: notifier.name, err }, "notifier: failed to take the new bundle");
    }
  }

  /** Unsubscribes, then closes the notifiers (abandoning work under way). */
  stop(): Promise<void> {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    return this.#plugins.close();
  }
}
