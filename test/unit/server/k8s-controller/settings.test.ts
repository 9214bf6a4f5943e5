/**
 * The `k8s_controller` config section: defaults, the entry ID prefix rule
 * (it must contain a ".", which generated IDs never do), and the cluster that
 * must be a k8s_psat cluster, whose kubeconfig is the default.
 */
import { describe, expect, it } from "vitest";
import { parseServerConfig } from "../../../../server/config/load.js";
import { k8sControllerSettings } from "../../../../server/k8s-controller/settings.js";

const config = (psat: string, controller: string) =>
  parseServerConfig(
    `server: { trust_domain: example.org }
plugins:
  DataStore: { sql: { database_type: sqlite3, connection_string: /tmp/unused.sqlite3 } }
  KeyManager: { memory: {} }
  NodeAttestor:
    join_token: {}
${psat}
k8s_controller: ${controller}
`,
  );
const psat = `    k8s_psat: { clusters: { prod: { service_account_allow_list: ["sigil:sigil-agent"], kube_config_file: /etc/sigil/prod.kubeconfig } } }`;

describe("k8sControllerSettings", () => {
  it("applies the defaults and takes the k8s_psat cluster's kubeconfig", () => {
    expect(k8sControllerSettings(config(psat, "{ enabled: true, cluster: prod }"))).toEqual({
      cluster: "prod",
      kubeConfigFile: "/etc/sigil/prod.kubeconfig",
      className: "",
      defaultClusterSpiffeId: true,
      resyncIntervalMs: 10_000,
      ignoreNamespaces: ["kube-system", "kube-public", "sigil"],
      entryIdPrefix: "k8s.prod.",
      clusterDomain: "cluster.local",
    });
    expect(k8sControllerSettings(config(psat, "{ cluster: prod, kube_config_file: /other, entry_id_prefix: ctl.a, resync_interval: 1m }"))).toMatchObject({
      kubeConfigFile: "/other",
      entryIdPrefix: "ctl.a",
      resyncIntervalMs: 60_000,
    });
  });

  it("refuses a cluster the k8s_psat attestor does not know", () => {
    expect(() => k8sControllerSettings(config(psat, "{ enabled: true, cluster: staging }"))).toThrow(
      /^k8s_controller\.cluster: "staging" is not a cluster of plugins\.NodeAttestor\.k8s_psat \(prod\)/,
    );
    expect(() => k8sControllerSettings(config("", "{ enabled: true, cluster: prod }"))).toThrow(/\(none configured\)/);
  });

  it("refuses an entry ID prefix without a dot, which a generated entry ID could start with", () => {
    expect(() => config(psat, "{ cluster: prod, entry_id_prefix: k8s }")).toThrow(/k8s_controller\.entry_id_prefix: must contain a "\."/);
    expect(() => config(psat, "{ cluster: prod, entry_id_prefix: 'a/b.' }")).toThrow(/must be 1-100 of/);
  });
});
