/**
 * `k8s` WorkloadAttestor: the caller's pod and container, found through its
 * cgroups and the kubelet's pod list, as selectors with SPIRE's names
 * (`k8s:ns`, `k8s:sa`, `k8s:pod-label:app:web`, … see `pod-selectors.ts`).
 *
 * 1. `/proc/<pid>/cgroup` gives the pod UID and container ID (`cgroup.ts`).
 *    A caller in no pod gets no `k8s` selectors and no error: other
 *    attestors (`unix`) still answer for it.
 * 2. The kubelet's `/pods` (`kubelet.ts`) gives the pod with that UID and, in
 *    its container statuses (app or init), the container with that ID. A
 *    container that has just started may not be listed yet, so the list is
 *    asked again every `poll_retry_interval`, at most `max_poll_attempts`
 *    times, and never beyond the agent's `workload_attestation_timeout`
 *    (its abort signal). Still missing then: the attestation fails.
 *
 * Failures are failures, never fewer selectors: a kubelet that cannot be
 * reached, answers an error, or presents a certificate the cluster CA did not
 * sign fails the attestation, so a pod's caller is never matched against
 * entries chosen by its `unix` selectors alone.
 *
 * Why the cgroup read can be believed: the agent reads it before anything
 * else, and after every attestor has finished it checks (`verifyPeer`) that
 * the pidfd taken at connect time still shows the caller alive (so the pid
 * named the caller, not a process that reused it) and still owned by the uid
 * and gid it connected with. Cgroup membership is not the caller's to choose:
 * moving a process into a cgroup needs write access to that cgroup's
 * `cgroup.procs`, which under `/kubepods` belongs to root (the kubelet and
 * the runtime), unless an administrator delegated it. A container may at most
 * make cgroups below its own, which `cgroup.ts` never reads as another pod.
 */
import { readFile } from "node:fs/promises";
import { isIP } from "node:net";
import path from "node:path";
import { z } from "zod";
import type { Logger } from "../../../common/log.js";
import type { Selector } from "../../../common/selector.js";
import { duration } from "../../../common/config/duration.js";
import { SigilError } from "../../../spiffe/errors.js";
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";
import type { WorkloadAttestor, WorkloadAttestorDeps, WorkloadCaller } from "../types.js";
import { parseProcCgroup } from "./cgroup.js";
import { createKubeletClient, type KubeletClient } from "./kubelet.js";
import { findContainerStatuses, findEphemeralContainerStatus, K8S_SELECTOR_TYPE, podSelectors, podShapeProblem } from "./pod-selectors.js";

/** Plugin name and selector type. */
export const K8S_WORKLOAD_ATTESTOR = K8S_SELECTOR_TYPE;

/** Defaults, as SPIRE's where SPIRE has the option. */
export const K8S_WORKLOAD_ATTESTOR_DEFAULTS = {
  kubelet_host: "127.0.0.1",
  kubelet_secure_port: 10250,
  kubelet_ca_path: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
  token_path: "/var/run/secrets/kubernetes.io/serviceaccount/token",
  node_name_env: "MY_NODE_NAME",
  max_poll_attempts: 60,
  poll_retry_interval_ms: 500,
  pod_list_cache_ttl_ms: 1_000,
} as const;

const port = (what: string) => z.number().int().min(1).max(65535).optional().describe(what);

// A DNS name (RFC 1123 labels; the URL's host, so nothing that would end it or add a user or port).
const HOSTNAME_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?$/;
// A Kubernetes node name: a DNS subdomain, lowercase, as the API validates object names.
const NODE_NAME_RE = /^(?=.{1,253}$)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$/;
/** Longest poll_retry_interval and pod_list_cache_ttl: beyond this a timer cannot be trusted to mean it, nor a pod list to be current. */
const MAX_INTERVAL_MS = 10 * 60_000;

/** Why `host` cannot be `kubelet_host`, or undefined. */
function kubeletHostProblem(host: string): string | undefined {
  if (isIP(host) !== 0 || HOSTNAME_RE.test(host)) return undefined;
  return `${JSON.stringify(host)} is not an IP address or a DNS name (no brackets, port, user or path)`;
}

/** Why `name` cannot be a node name, or undefined. */
function nodeNameProblem(name: string): string | undefined {
  return NODE_NAME_RE.test(name) ? undefined : `${JSON.stringify(name)} is not a Kubernetes node name (a lowercase DNS subdomain)`;
}

const boundedInterval = (what: string) =>
  duration()
    .refine((ms) => ms <= MAX_INTERVAL_MS, { error: `at most 10m` })
    .optional()
    .describe(what);

/** Configuration of the `k8s` workload attestor (SPIRE's option names). */
export const k8sWorkloadAttestorConfigSchema = z
  .strictObject({
    kubelet_host: z
      .string()
      .min(1)
      .superRefine((v, ctx) => {
        const problem = kubeletHostProblem(v);
        if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
      })
      .optional()
      .describe("Address or name the kubelet is reached at; default 127.0.0.1 (the agent runs with hostNetwork, or set it to the node's address)."),
    kubelet_secure_port: port("The kubelet's authenticated HTTPS port; default 10250. Not with kubelet_read_only_port."),
    kubelet_read_only_port: port("Use the kubelet's unauthenticated, deprecated read-only HTTP port (usually 10255) instead of the secure port. Only when set."),
    kubelet_ca_path: z
      .string()
      .min(1)
      .optional()
      .describe("PEM file of the CA(s) that sign the kubelet's serving certificate; default the cluster CA, /var/run/secrets/kubernetes.io/serviceaccount/ca.crt. Reloaded when it changes."),
    skip_kubelet_verification: z.boolean().optional().describe("Accept any kubelet serving certificate (kubelets often serve self-signed ones). Default false."),
    token_path: z
      .string()
      .min(1)
      .optional()
      .describe("File with the bearer token for the kubelet; default the agent's service-account token, /var/run/secrets/kubernetes.io/serviceaccount/token. Read on every request."),
    node_name: z
      .string()
      .min(1)
      .superRefine((v, ctx) => {
        const problem = nodeNameProblem(v);
        if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
      })
      .optional()
      .describe("The node's name: only pods on it are considered, and the kubelet's certificate must name it. Overrides node_name_env."),
    node_name_env: z.string().min(1).optional().describe("Environment variable holding the node name (set it from spec.nodeName with the downward API); default MY_NODE_NAME."),
    max_poll_attempts: z.number().int().min(1).optional().describe("How many times the pod list is read while the caller's pod or container is not in it yet; default 60."),
    poll_retry_interval: boundedInterval("Wait between those reads; default 500ms, at most 10m."),
    pod_list_cache_ttl: boundedInterval("How long one pod list answers attestations before the kubelet is asked again; default 1s, at most 10m (not a SPIRE option). 0 asks on every attestation."),
  })
  .superRefine((c, ctx) => {
    if (c.kubelet_read_only_port !== undefined && c.kubelet_secure_port !== undefined) {
      ctx.addIssue({ code: "custom", message: "kubelet_read_only_port and kubelet_secure_port exclude each other; set one", path: ["kubelet_read_only_port"] });
    }
  });

/** Parsed configuration of the `k8s` workload attestor. */
export type K8sWorkloadAttestorConfig = z.infer<typeof k8sWorkloadAttestorConfigSchema>;

/** What the attestor reads besides its config; tests and containers (SPIRE's HOST_PROC) override them. */
export interface K8sWorkloadAttestorDeps {
  /** The proc filesystem; default `/proc`. */
  readonly procRoot?: string;
  /** Environment for `node_name_env`; default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly log?: Logger;
}

/** The `k8s` attestor, with the kubelet client it holds. */
export interface K8sWorkloadAttestor extends WorkloadAttestor {
  /** Closes the kubelet client's idle connections. */
  close(): void;
}

function pluginError(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_UNAVAILABLE", `workloadattestor(k8s): ${message}`, cause === undefined ? undefined : { cause });
}

/** Resolves after `ms`, or rejects when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Creates the `k8s` workload attestor.
 *
 * @example
 * ```ts
 * const k8s = createK8sWorkloadAttestor({ node_name: "node-1" }, { log });
 * await k8s.attest({ pid, uid, gid }); // [k8s:ns:prod, k8s:sa:web, k8s:pod-name:web-7d9…, …] or [] outside pods
 * ```
 */
export function createK8sWorkloadAttestor(config: K8sWorkloadAttestorConfig = {}, deps: K8sWorkloadAttestorDeps = {}): K8sWorkloadAttestor {
  const d = K8S_WORKLOAD_ATTESTOR_DEFAULTS;
  const procRoot = deps.procRoot ?? "/proc";
  const env = deps.env ?? process.env;
  const envName = config.node_name_env ?? d.node_name_env;
  const envNode = env[envName];
  const nodeName = config.node_name ?? (envNode === undefined || envNode === "" ? undefined : envNode);
  if (nodeName !== undefined && config.node_name === undefined) {
    const problem = nodeNameProblem(nodeName);
    if (problem !== undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `workloadattestor(k8s): node_name_env ${envName}: ${problem}`);
  }
  const host = config.kubelet_host ?? d.kubelet_host;
  const readOnly = config.kubelet_read_only_port !== undefined;
  const maxAttempts = config.max_poll_attempts ?? d.max_poll_attempts;
  const interval = config.poll_retry_interval ?? d.poll_retry_interval_ms;
  const kubelet: KubeletClient = createKubeletClient({
    host,
    scheme: readOnly ? "http" : "https",
    port: config.kubelet_read_only_port ?? config.kubelet_secure_port ?? d.kubelet_secure_port,
    tokenPath: config.token_path ?? d.token_path,
    caPath: config.kubelet_ca_path ?? d.kubelet_ca_path,
    skipVerification: config.skip_kubelet_verification ?? false,
    ...(nodeName === undefined ? {} : { serverName: nodeName, nodeName }),
    cacheTtlMs: config.pod_list_cache_ttl ?? d.pod_list_cache_ttl_ms,
  });

  return {
    name: K8S_WORKLOAD_ATTESTOR,
    async attest(caller: WorkloadCaller, signal?: AbortSignal): Promise<Selector[]> {
      const { pid } = caller;
      if (!Number.isSafeInteger(pid) || pid <= 0) throw pluginError(`invalid pid ${pid}`);
      let text: string;
      try {
        text = await readFile(path.join(procRoot, String(pid), "cgroup"), { encoding: "utf8", ...(signal === undefined ? {} : { signal }) });
      } catch (e) {
        throw pluginError(`cannot read the cgroups of pid ${pid}: ${(e as Error).message}`, e);
      }
      const ref = parseProcCgroup(text);
      if (ref === undefined) return [];
      let notRequestedBefore = -Infinity;
      for (let attempt = 1; ; attempt++) {
        const list = await kubelet.pods({ notRequestedBefore, ...(signal === undefined ? {} : { signal }) });
        // An answer no single pod and container can be read from fails: picking one could be picking another's identity.
        if (list.duplicateUids.has(ref.podUid)) throw pluginError(`the kubelet (${kubelet.url}) lists pod UID ${ref.podUid} more than once on this node; pid ${pid}'s pod cannot be told`);
        const pod = list.byUid.get(ref.podUid);
        if (pod !== undefined) {
          const problem = podShapeProblem(pod);
          if (problem !== undefined) throw pluginError(`the kubelet's entry for pod ${ref.podUid} is malformed: ${problem}`);
        }
        const found = pod === undefined ? [] : findContainerStatuses(pod, ref.containerId);
        if (found.length > 1) {
          throw pluginError(`the kubelet (${kubelet.url}) lists container ${ref.containerId} more than once in pod ${pod?.metadata?.namespace}/${pod?.metadata?.name} (${ref.podUid}); pid ${pid}'s container cannot be told`);
        }
        if (pod !== undefined && found[0] !== undefined) return podSelectors(pod, found[0].status);
        const ephemeral = pod === undefined ? undefined : findEphemeralContainerStatus(pod, ref.containerId);
        if (ephemeral !== undefined) {
          // Listed, so asking again would not change the answer: refuse now rather than at the attestation's timeout.
          throw pluginError(
            `container ${ref.containerId} of pid ${pid} is the ephemeral container ${ephemeral.name} of pod ${pod?.metadata?.namespace}/${pod?.metadata?.name} (${ref.podUid}); ephemeral containers get no pod identity`,
          );
        }
        const missing = pod === undefined ? `pod ${ref.podUid}` : `container ${ref.containerId} of pod ${pod.metadata?.namespace}/${pod.metadata?.name} (${ref.podUid})`;
        if (attempt >= maxAttempts) {
          throw pluginError(`${missing} of pid ${pid} is not in the kubelet's pod list (${kubelet.url}) after ${attempt} attempt${attempt === 1 ? "" : "s"}`);
        }
        deps.log?.debug({ pid, attempt, max_poll_attempts: maxAttempts }, `workloadattestor(k8s): ${missing} not listed by the kubelet yet; asking again`);
        await sleep(interval, signal);
        // The next answer must be newer than the one that lacked the pod.
        notRequestedBefore = list.requestedAt + 1e-3;
      }
    },
    close: () => kubelet.close(),
  };
}

/** The `k8s` WorkloadAttestor in the plugin catalog. */
export const k8sWorkloadAttestorPlugin: PluginDescriptor<"WorkloadAttestor", never, never, WorkloadAttestorDeps, K8sWorkloadAttestor> = {
  type: "WorkloadAttestor",
  name: K8S_WORKLOAD_ATTESTOR,
  agent: pluginHalf({
    description: "Selectors from the caller's Kubernetes pod and container (its cgroups, then the kubelet's pod list).",
    // Written `k8s:` (YAML null) or `k8s: {}` when every option keeps its default.
    configSchema: k8sWorkloadAttestorConfigSchema.nullable().transform((v) => v ?? {}),
    create: (config, deps: WorkloadAttestorDeps) => createK8sWorkloadAttestor(config, { log: deps.log }),
  }),
};
