/**
 * The controller's settings from the server config (`k8s_controller`), shared
 * by the in-server service and the `sigil-server k8s-controller` process.
 */
import { SigilError } from "../../spiffe/errors.js";
import type { ServerConfig } from "../config/schema.js";
import type { K8sControllerSettings } from "./controller.js";

/**
 * Checks `k8s_controller` against the rest of the config: its cluster must be
 * a `k8s_psat` cluster (entries are parented to that attestor's agent IDs),
 * whose `kube_config_file` is the default. Undefined when the section is absent.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming `k8s_controller.cluster`.
 */
export function k8sControllerSettings(config: ServerConfig): K8sControllerSettings | undefined {
  const c = config.k8s_controller;
  if (c === undefined) return undefined;
  const psat = (config.plugins.NodeAttestor as Record<string, { clusters?: Record<string, { kube_config_file?: string }> } | undefined> | undefined)?.k8s_psat;
  const cluster = psat?.clusters?.[c.cluster];
  if (cluster === undefined) {
    throw new SigilError(
      "ERR_INVALID_ARGUMENT",
      `k8s_controller.cluster: ${JSON.stringify(c.cluster)} is not a cluster of plugins.NodeAttestor.k8s_psat (${Object.keys(psat?.clusters ?? {}).join(", ") || "none configured"}); the controller parents entries to that attestor's agents`,
    );
  }
  return {
    cluster: c.cluster,
    kubeConfigFile: c.kube_config_file ?? cluster.kube_config_file,
    className: c.class_name,
    defaultClusterSpiffeId: c.default_cluster_spiffe_id,
    resyncIntervalMs: c.resync_interval,
    ignoreNamespaces: c.ignore_namespaces,
    entryIdPrefix: c.entry_id_prefix,
    clusterDomain: c.cluster_domain,
  };
}
