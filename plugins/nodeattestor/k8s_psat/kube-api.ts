/**
 * The three Kubernetes API calls the `k8s_psat` server half makes, through the
 * real `@kubernetes/client-node`: a TokenReview, a pod by name, a node by
 * name. Failures become SigilErrors an operator can act on: the API server
 * unreachable (or answering 5xx) is `ERR_UNAVAILABLE`; the server's own
 * credentials refused (401/403: RBAC) is `ERR_FAILED_PRECONDITION`.
 *
 * The library is imported on first use, not at module load: it takes about a
 * second to load, and every process that loads the plugin catalog (agents,
 * CLIs) would pay for it whether or not a cluster is configured.
 */
import type { V1Node, V1Pod, V1TokenReviewStatus } from "@kubernetes/client-node";
import { SigilError } from "../../../spiffe/errors.js";

type K8sModule = typeof import("@kubernetes/client-node");

let k8sModule: Promise<K8sModule> | undefined;

function loadK8s(): Promise<K8sModule> {
  k8sModule ??= import("@kubernetes/client-node").catch((e: unknown) => {
    k8sModule = undefined;
    throw e;
  });
  return k8sModule;
}

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
    const k8s = await loadK8s();
    const kc = new k8s.KubeConfig();
    const from = source.kubeConfigFile === undefined ? "the in-cluster service account config" : `kubeconfig ${source.kubeConfigFile}`;
    try {
      if (source.kubeConfigFile === undefined) kc.loadFromCluster();
      else kc.loadFromFile(source.kubeConfigFile);
    } catch (e) {
      throw new SigilError("ERR_FAILED_PRECONDITION", `${prefix}: cannot load ${from}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    const server = kc.getCurrentCluster()?.server;
    if (server === undefined || server === "") throw new SigilError("ERR_FAILED_PRECONDITION", `${prefix}: ${from} names no current cluster with a server URL`);
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
  const options = (c: Clients) => ({
    middleware: [
      {
        pre: (ctx: InstanceType<K8sModule["RequestContext"]>) => {
          ctx.setSignal(AbortSignal.timeout(timeoutMs));
          return new c.k8s.Observable(Promise.resolve(ctx));
        },
        post: (res: InstanceType<K8sModule["ResponseContext"]>) => new c.k8s.Observable(Promise.resolve(res)),
      },
    ],
    middlewareMergeStrategy: "append" as const,
  });

  const failure = (c: Clients, what: string, e: unknown): SigilError => {
    if (e instanceof c.k8s.ApiException) {
      const code = (e as { code: number }).code;
      const detail = statusMessage((e as { body: unknown }).body);
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

  const isNotFound = (c: Clients, e: unknown): boolean => e instanceof c.k8s.ApiException && (e as { code: number }).code === 404;

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

/** `: <message>` of a Kubernetes Status body, or "" when there is none. */
function statusMessage(body: unknown): string {
  let doc = body;
  if (typeof body === "string" || Buffer.isBuffer(body)) {
    try {
      doc = JSON.parse(body.toString());
    } catch {
      return "";
    }
  }
  const message = (doc as { message?: unknown } | null)?.message;
  return typeof message === "string" && message !== "" ? `: ${message.slice(0, 200)}` : "";
}
