/**
 * Server half of the `k8s_psat` node attestor. The agent sends a projected
 * service account token and its cluster's name; the identity decision rests
 * only on what that cluster's API server says, never on the token's own
 * claims:
 *
 * 1. a TokenReview with the cluster's audiences must authenticate the token and
 *    confirm one of those audiences;
 * 2. the user must be a service account (`system:serviceaccount:<ns>:<name>`)
 *    on the cluster's `service_account_allow_list`;
 * 3. the token must be bound to a pod (the `authentication.kubernetes.io/pod-name`
 *    and `pod-uid` extras), and that pod must still exist with that UID, run
 *    as that service account, and be scheduled on a node that still exists.
 *
 * The agent ID is `spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node UID>`:
 * the same node attests again under the same ID with every fresh token, so
 * re-attestation is allowed. Selectors are SPIRE's (`k8s_psat:agent_ns:…`).
 */
import { accessSync, constants } from "node:fs";
import { z } from "zod";
import { formatConfigPath } from "../../../common/config/issues.js";
import { agentSpiffeId } from "../../../common/reserved-ids.js";
import { makeSelector, type Selector } from "../../../common/selector.js";
import { isSigilError, SigilError } from "../../../spiffe/errors.js";
import type { SpiffeId, TrustDomain } from "../../../spiffe/id.js";
import type { NodeAttestationResult, ServerNodeAttestor } from "../types.js";
import { createKubeApi, type KubeApi, type KubeApiSource } from "./kube-api.js";
import { clusterNameProblem, K8S_PSAT_ATTESTOR, parseK8sPsatPayload } from "./payload.js";

/** The audience asked for when a cluster configures none; the agent's projected token must carry it. */
export const DEFAULT_K8S_PSAT_AUDIENCE = "sigil-server";

/** TokenReview user extra naming the pod a projected token is bound to. */
export const POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name";
/** TokenReview user extra giving that pod's UID. */
export const POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid";
/** TokenReview user extra naming the bound pod's node (Kubernetes 1.32 and later); checked when present. */
export const NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name";
/** TokenReview user extra giving that node's UID (Kubernetes 1.32 and later); checked when present. */
export const NODE_UID_EXTRA = "authentication.kubernetes.io/node-uid";

const SERVICE_ACCOUNT_USER_PREFIX = "system:serviceaccount:";
// RFC 1123 label (namespace) and DNS subdomain (service account name), as Kubernetes validates them.
const NAMESPACE_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const SA_NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

const serviceAccount = z.string().superRefine((value, ctx) => {
  const [ns, name, extra] = value.split(":");
  if (extra !== undefined || ns === undefined || name === undefined || !NAMESPACE_RE.test(ns) || ns.length > 63 || !SA_NAME_RE.test(name) || name.length > 253) {
    ctx.addIssue({ code: "custom", message: `${JSON.stringify(value)} is not "<namespace>:<service account name>" (e.g. "sigil:sigil-agent")` });
  }
});

/** One cluster's settings (SPIRE's option names). */
export const k8sPsatClusterConfigSchema = z.strictObject({
  service_account_allow_list: z
    .array(serviceAccount)
    .min(1, { error: "list at least one \"<namespace>:<service account>\" the agents run as" })
    .describe("Service accounts (`<namespace>:<name>`) whose tokens may attest agents, e.g. `[\"sigil:sigil-agent\"]`."),
  audience: z
    .array(z.string().min(1, { error: "an audience is empty" }))
    .min(1, { error: "list at least one audience (or leave audience out for [\"sigil-server\"])" })
    .default([DEFAULT_K8S_PSAT_AUDIENCE])
    .describe("Audiences the TokenReview asks for; the agent's projected token must carry one of them. Default `[\"sigil-server\"]`."),
  kube_config_file: z
    .string()
    .min(1, { error: "is empty (leave kube_config_file out for the in-cluster config)" })
    .optional()
    .describe("Kubeconfig file for this cluster's API server (its current context); without it, the server's in-cluster service account config."),
  allowed_node_label_keys: z.array(z.string().min(1, { error: "a label key is empty" })).default([]).describe("Node label keys that become `k8s_psat:agent_node_label:<key>:<value>` selectors."),
  allowed_pod_label_keys: z.array(z.string().min(1, { error: "a label key is empty" })).default([]).describe("Pod label keys that become `k8s_psat:agent_pod_label:<key>:<value>` selectors."),
}).describe("One cluster, keyed by its name (A-Z a-z 0-9 . _ -), which becomes part of its agents' IDs.");

/** Configuration of the server half. */
export const k8sPsatServerConfigSchema = z.strictObject({
  clusters: z
    .record(z.string(), k8sPsatClusterConfigSchema)
    .superRefine((clusters, ctx) => {
      if (Object.keys(clusters).length === 0) ctx.addIssue({ code: "custom", message: "configure at least one cluster" });
      for (const name of Object.keys(clusters)) {
        const problem = clusterNameProblem(name);
        if (problem !== undefined) ctx.addIssue({ code: "custom", path: [name], message: `cluster name ${problem}` });
      }
    })
    .describe("Clusters whose agents may attest, by name; an agent names its cluster in its own config (`cluster`)."),
});

/** Parsed configuration of the server half. */
export type K8sPsatServerConfig = z.output<typeof k8sPsatServerConfigSchema>;

/** What the server half needs. */
export interface K8sPsatServerDeps {
  readonly trustDomain: TrustDomain;
  /** The environment, to tell whether the server runs in a pod (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Builds a cluster's API access (tests may bound the timeout); default {@link createKubeApi}. */
  readonly kubeApi?: (source: KubeApiSource) => KubeApi;
}

interface Cluster {
  readonly name: string;
  readonly config: K8sPsatServerConfig["clusters"][string];
  readonly allowed: ReadonlySet<string>;
  readonly api: KubeApi;
}

function denied(message: string): SigilError {
  return new SigilError("ERR_PERMISSION_DENIED", `k8s_psat: ${message}`);
}

/**
 * Creates the server half. Checks what it can without the network: every
 * kubeconfig file can be read, and a cluster without one is only configured
 * when the server runs in a pod.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the config key
 */
export function createK8sPsatServerAttestor(config: K8sPsatServerConfig, deps: K8sPsatServerDeps): ServerNodeAttestor {
  const env = deps.env ?? process.env;
  const clusters = new Map<string, Cluster>();
  for (const [name, c] of Object.entries(config.clusters)) {
    const key = formatConfigPath(["plugins", "NodeAttestor", K8S_PSAT_ATTESTOR, "clusters", name]);
    if (c.kube_config_file !== undefined) {
      try {
        accessSync(c.kube_config_file, constants.R_OK);
      } catch (e) {
        throw new SigilError("ERR_INVALID_ARGUMENT", `k8s_psat: ${key}.kube_config_file: cannot read ${c.kube_config_file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
      }
    } else if (!env.KUBERNETES_SERVICE_HOST || !env.KUBERNETES_SERVICE_PORT) {
      throw new SigilError(
        "ERR_INVALID_ARGUMENT",
        `k8s_psat: ${key}: no kube_config_file is set and the server does not run in a Kubernetes pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set); set kube_config_file`,
      );
    }
    const api = (deps.kubeApi ?? createKubeApi)({ cluster: name, kubeConfigFile: c.kube_config_file });
    clusters.set(name, { name, config: c, allowed: new Set(c.service_account_allow_list), api });
  }
  const agentPathPrefix = `/spire/agent/${K8S_PSAT_ATTESTOR}/`;

  return {
    name: K8S_PSAT_ATTESTOR,
    async attest(payload: Uint8Array): Promise<NodeAttestationResult> {
      const { cluster: clusterName, token } = parseK8sPsatPayload(payload);
      const cluster = clusters.get(clusterName);
      // The configured names are not told to a caller that has not proved anything yet.
      if (cluster === undefined) throw denied(`cluster ${JSON.stringify(clusterName)} is not configured on this server`);
      return attestInCluster(cluster, token, deps.trustDomain);
    },
    // spiffe://<td>/spire/agent/k8s_psat/<configured cluster>/<one segment>: the ID attestInCluster gives a node of that cluster.
    issuesAgentId(id: SpiffeId): boolean {
      if (!id.memberOf(deps.trustDomain) || !id.path.startsWith(agentPathPrefix)) return false;
      const [cluster, nodeUid, ...rest] = id.path.slice(agentPathPrefix.length).split("/");
      return cluster !== undefined && clusters.has(cluster) && nodeUid !== undefined && nodeUid !== "" && rest.length === 0;
    },
  };
}

/** The single value of a TokenReview user extra, or undefined when absent. */
function extra(values: Readonly<Record<string, readonly string[]>> | undefined, key: string): string | undefined {
  const v = values?.[key];
  if (v === undefined || v.length === 0) return undefined;
  if (v.length !== 1 || v[0] === "") throw denied(`the TokenReview gives ${v.length} values for ${key}; expected one`);
  return v[0];
}

async function attestInCluster(cluster: Cluster, token: string, td: TrustDomain): Promise<NodeAttestationResult> {
  const where = `cluster ${JSON.stringify(cluster.name)}`;
  const audiences = cluster.config.audience;

  // 1. The API server's verdict on the token.
  const review = await cluster.api.reviewToken(token, audiences);
  if (review.authenticated !== true) {
    throw denied(`the Kubernetes API of ${where} did not authenticate the token${review.error ? `: ${review.error}` : ""} (a token from another cluster, expired, or for an audience other than ${audiences.join(", ")}?)`);
  }
  const confirmed = (review.audiences ?? []).filter((a) => audiences.includes(a));
  if (confirmed.length === 0) {
    throw denied(`the TokenReview of ${where} does not confirm any of the audiences ${audiences.join(", ")} (it names ${JSON.stringify(review.audiences ?? [])})`);
  }

  // 2. The service account, from the username the API server vouches for.
  const username = review.user?.username ?? "";
  if (!username.startsWith(SERVICE_ACCOUNT_USER_PREFIX)) throw denied(`the token of ${where} belongs to ${JSON.stringify(username)}, not a service account`);
  const [namespace, saName, rest] = username.slice(SERVICE_ACCOUNT_USER_PREFIX.length).split(":");
  if (!namespace || !saName || rest !== undefined) throw denied(`the TokenReview of ${where} names a malformed service account user ${JSON.stringify(username)}`);
  if (!cluster.allowed.has(`${namespace}:${saName}`)) {
    // Not the list itself: it names the service accounts whose tokens are worth stealing.
    throw denied(`service account ${namespace}:${saName} is not in ${where}'s service_account_allow_list`);
  }

  // 3. The pod the token is bound to, and its node, as the API server has them now.
  const extras = review.user?.extra;
  const podName = extra(extras, POD_NAME_EXTRA);
  const podUid = extra(extras, POD_UID_EXTRA);
  if (podName === undefined || podUid === undefined) {
    throw denied(`the token of ${namespace}:${saName} in ${where} is not bound to a pod (the TokenReview gives no ${POD_NAME_EXTRA} / ${POD_UID_EXTRA}); mount a projected service account token in the agent pod`);
  }
  const pod = await cluster.api.getPod(namespace, podName);
  if (pod === undefined) throw denied(`pod ${namespace}/${podName}, which the token is bound to, no longer exists in ${where}`);
  if (pod.metadata?.uid !== podUid) {
    throw denied(`pod ${namespace}/${podName} in ${where} has UID ${pod.metadata?.uid ?? "(none)"}, but the token is bound to UID ${podUid}: the pod was replaced`);
  }
  // A pod that has finished (evicted, completed) may still hold a token the API server accepts: it is no agent.
  const phase = pod.status?.phase;
  if (phase === "Succeeded" || phase === "Failed") throw denied(`pod ${namespace}/${podName} in ${where} has terminated (phase ${phase})`);
  const podSa = pod.spec?.serviceAccountName ?? "default";
  if (podSa !== saName) throw denied(`pod ${namespace}/${podName} in ${where} runs as service account ${podSa}, not ${saName}`);
  const nodeName = pod.spec?.nodeName;
  if (!nodeName) throw denied(`pod ${namespace}/${podName} in ${where} is not scheduled on a node`);
  const boundNode = extra(extras, NODE_NAME_EXTRA);
  if (boundNode !== undefined && boundNode !== nodeName) throw denied(`the token is bound to node ${boundNode}, but pod ${namespace}/${podName} runs on ${nodeName}`);
  const node = await cluster.api.getNode(nodeName);
  if (node === undefined) throw denied(`node ${nodeName}, where pod ${namespace}/${podName} runs, no longer exists in ${where}`);
  const nodeUid = node.metadata?.uid;
  if (!nodeUid) throw denied(`node ${nodeName} in ${where} has no UID`);
  const boundNodeUid = extra(extras, NODE_UID_EXTRA);
  if (boundNodeUid !== undefined && boundNodeUid !== nodeUid) throw denied(`the token is bound to node UID ${boundNodeUid}, but node ${nodeName} has UID ${nodeUid}: the node was replaced`);

  let agentId: SpiffeId;
  try {
    agentId = agentSpiffeId(td, `${K8S_PSAT_ATTESTOR}/${cluster.name}/${nodeUid}`);
  } catch (e) {
    if (!isSigilError(e)) throw e;
    throw denied(`node ${nodeName} in ${where} has a UID that cannot be part of a SPIFFE ID: ${e.message}`);
  }

  const values: string[] = [
    `cluster:${cluster.name}`,
    `agent_ns:${namespace}`,
    `agent_sa:${saName}`,
    `agent_pod_name:${podName}`,
    `agent_pod_uid:${podUid}`,
    `agent_node_name:${nodeName}`,
    `agent_node_uid:${nodeUid}`,
  ];
  if (pod.status?.hostIP) values.push(`agent_node_ip:${pod.status.hostIP}`);
  values.push(...labelSelectors("agent_pod_label", pod.metadata?.labels, cluster.config.allowed_pod_label_keys));
  values.push(...labelSelectors("agent_node_label", node.metadata?.labels, cluster.config.allowed_node_label_keys));
  let selectors: Selector[];
  try {
    selectors = values.map((v) => makeSelector(K8S_PSAT_ATTESTOR, v));
  } catch (e) {
    if (!isSigilError(e)) throw e;
    throw denied(`the Kubernetes API of ${where} describes the agent's pod or node with a value that cannot be a selector: ${e.message}`);
  }
  return { agentId, selectors, canReattest: true };
}

/** `<kind>:<key>:<value>` for each allow-listed key the object carries, in allow-list order. */
function labelSelectors(kind: string, labels: Readonly<Record<string, string>> | undefined, allowedKeys: readonly string[]): string[] {
  if (labels === undefined) return [];
  return allowedKeys.filter((key) => Object.hasOwn(labels, key)).map((key) => `${kind}:${key}:${labels[key] ?? ""}`);
}
