/**
 * The `k8sbundle` Notifier: the trust bundle in a Kubernetes ConfigMap (and
 * optionally in labelled webhook configurations and APIServices), kept
 * current on every CA rotation. See publisher.ts.
 */
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";
import type { BundleNotifier, NotifierDeps } from "../types.js";
import { createK8sBundleNotifier, K8SBUNDLE_NOTIFIER, k8sBundleConfigSchema } from "./publisher.js";

/** The `k8sbundle` Notifier in the plugin catalog. */
export const k8sBundleNotifierPlugin: PluginDescriptor<"Notifier", NotifierDeps, BundleNotifier> = {
  type: "Notifier",
  name: K8SBUNDLE_NOTIFIER,
  server: pluginHalf({
    description: "Keeps the trust bundle (PEM of the X.509 authorities) in a Kubernetes ConfigMap, and optionally in the caBundle of labelled webhook configurations and APIServices.",
    configSchema: k8sBundleConfigSchema,
    create: (config, deps: NotifierDeps) => createK8sBundleNotifier(config, deps),
  }),
};
