/**
 * The three Kubernetes API calls the `k8s_psat` server half makes, through the
 * real `@kubernetes/client-node`: a TokenReview, a pod by name, a node by
 * name. Failures become SigilErrors an operator can act on: the API server
 * unreachable (or answering 5xx) is `ERR_UNAVAILABLE`; the server's own
 * credentials refused (401/403: RBAC) is `ERR_FAILED_PRECONDITION`.
 *
 * The library is imported on first use, not at module load (see
 * plugins/kube-client.ts, which the `k8sbundle` notifier shares).
 */
import type { V1Node, V1Pod, V1TokenReviewStatus } from "@kubernetes/client-node";
import { SigilError } from "../../../spiffe/errors.js";
import { boundedCall, connectKube, httpStatusOf, kubeStatusMessage, type K8sModule } from "../../kube-client.js";

/** Where a cluster's API server and the server's credentials for it come from. */
export interface KubeApiSource {
  /** The cluster's name in Sigil's config, for messages. */
  readonly cluster: string;
  /** A kubeconfig file (its current context); without one, the pod's in-cluster config. */
  readonly kubeConfigFile?: string | undefined;
  /** Longest one API call may take (default 10 s). */
  readonly timeoutMs?: number | undefined;
}

/** What the server half asks one cluster's API server. */
export interface KubeApi {
  /**
   * Runs a TokenReview (authentication.k8s.io/v1) for `token` with `audiences`.
   *
   * @throws SigilError `ERR_UNAVAILABLE` / `ERR_FAILED_PRECONDITION` (see the module comment)
   */
  reviewToken(token: string, audiences: readonly string[]): Promise<V1TokenReviewStatus>;
  /** The pod, or undefined when the API says it does not exist (404). */
  getPod(namespace: string, name: string): Promise<V1Pod | undefined>;
  /** The node, or undefined when the API says it does not exist (404). */
  getNode(name: string): Promise<V1Node | undefined>;
}

/** Default {@link KubeApiSource.timeoutMs}. */
export const DEFAULT_KUBE_API_TIMEOUT_MS = 10_000;

interface Clients {
  readonly k8s: K8sModule;
  readonly server: string;
  readonly auth: InstanceType<K8sModule["AuthenticationV1Api"]>;
  readonly core: InstanceType<K8sModule["CoreV1Api"]>;
}

/** A {@link KubeApi} for one cluster; the kubeconfig is read on first use (and again after a failure to read it). */
export function createKubeApi(source: KubeApiSource): KubeApi {
  const prefix = `k8s_psat: cluster ${JSON.stringify(source.cluster)}`;
  const timeoutMs = source.timeoutMs ?? DEFAULT_KUBE_API_TIMEOUT_MS;
  let clients: Promise<Clients> | undefined;

  const connect = async (): Promise<Clients> => {
    const { k8s, config: kc, server } = await connectKube(source.kubeConfigFile, prefix);
    return { k8s, server, auth: kc.makeApiClient(k8s.AuthenticationV1Api), core: kc.makeApiClient(k8s.CoreV1Api) };
  };
  const clientsFor = (): Promise<Clients> => {
    clients ??= connect().catch((e: unknown) => {
      clients = undefined;
      throw e;
    });
    return clients;
  };

  // Every call is bounded: an API server that accepts and never answers must not hold attestations forever.
  const options = (c: Clients) => boundedCall(c.k8s, timeoutMs);

  const failure = (c: Clients, what: string, e: unknown): SigilError => {
    const code = httpStatusOf(c.k8s, e);
    if (code !== undefined) {
      const detail = kubeStatusMessage(e);
      if (code === 401 || code === 403) {
        return new SigilError(
          "ERR_FAILED_PRECONDITION",
          `${prefix}: the Kubernetes API at ${c.server} refused the server's own credentials for ${what} (HTTP ${code}${detail}); the server needs create on tokenreviews and get on pods and nodes (docs/kubernetes.md)`,
          { cause: e },
        );
      }
      return new SigilError("ERR_UNAVAILABLE", `${prefix}: the Kubernetes API at ${c.server} answered ${what} with HTTP ${code}${detail}`, { cause: e });
    }
    const message = e instanceof Error ? (e.name === "AbortError" ? `no answer within ${timeoutMs} ms` : e.message) : String(e);
    return new SigilError("ERR_UNAVAILABLE", `${prefix}: the Kubernetes API at ${c.server} cannot be reached for ${what}: ${message}`, { cause: e });
  };

  const isNotFound = (c: Clients, e: unknown): boolean => httpStatusOf(c.k8s, e) === 404;

  return {
    async reviewToken(token, audiences) {
      const c = await clientsFor();
      try {
        const review = await c.auth.createTokenReview(
          { body: { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token, audiences: [...audiences] } } },
          options(c),
        );
        return review.status ?? {};
      } catch (e) {
        throw failure(c, "a TokenReview", e);
      }
    },
    async getPod(namespace, name) {
      const c = await clientsFor();
      try {
        return await c.core.readNamespacedPod({ namespace, name }, options(c));
      } catch (e) {
        if (isNotFound(c, e)) return undefined;
        throw failure(c, `reading pod ${namespace}/${name}`, e);
      }
    },
    async getNode(name) {
      const c = await clientsFor();
      try {
        return await c.core.readNode({ name }, options(c));
      } catch (e) {
        if (isNotFound(c, e)) return undefined;
        throw failure(c, `reading node ${name}`, e);
      }
    },
  };
}
