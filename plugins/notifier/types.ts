/**
 * The Notifier plugin type (server side): told of every new bundle of the
 * server's own trust domain, after the CA has stored it, so it can publish
 * it elsewhere (a Kubernetes ConfigMap, webhook CA bundles). A notifier does
 * its work in the background: it never delays the CA, a rotation or the
 * server's start, and it retries its own failures.
 */
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import type { SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";

/** A notifier plugin instance. */
export interface BundleNotifier {
  /** Plugin name, for logs. */
  readonly name: string;
  /**
   * The own trust domain's current bundle: once when the CA is ready, then
   * after each change is stored (an authority prepared, or one expired and
   * removed). Returns at once; must not throw.
   */
  bundleUpdated(bundle: SpiffeBundle): void;
  /** Stops background work (an update under way is abandoned). */
  close?(): Promise<void>;
}

/** What the server hands a notifier when it creates it. */
export interface NotifierDeps {
  readonly log: Logger;
  readonly metrics: Metrics;
}
