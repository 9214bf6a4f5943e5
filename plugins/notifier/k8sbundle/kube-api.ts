/**
 * The Kubernetes API calls the `k8sbundle` notifier makes, through the real
 * `@kubernetes/client-node` (loaded on first use, see plugins/kube-client.ts):
 * read and replace one ConfigMap; list (by label selector), read and replace
 * webhook configurations and APIServices. Replacing sends the
 * `resourceVersion` that was read, so a write that lost a race with another
 * writer is refused with 409 Conflict instead of overwriting it. Failures
 * are {@link KubeCallError}s carrying the HTTP status.
 */
import { boundedCall, connectKube, httpStatusOf, kubeStatusMessage, type KubeConnection } from "../../kube-client.js";
import { SigilError } from "../../../spiffe/errors.js";

/** The writable object kinds, as the publisher names them. */
export type BundleTargetKind = "ConfigMap" | "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" | "APIService";

/** An object as read from the API: whatever fields it has, kept as they are when it is written back. */
export interface KubeObject {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string; [key: string]: unknown };
  [key: string]: unknown;
}

/** A failed call: `status` is the HTTP status, or undefined when the API server did not answer. */
export class KubeCallError extends SigilError {
  readonly status: number | undefined;

  constructor(status: number | undefined, message: string, cause: unknown) {
    super(status === 401 || status === 403 || status === 404 ? "ERR_FAILED_PRECONDITION" : "ERR_UNAVAILABLE", message, { cause });
    this.status = status;
  }
}

/** What the publisher asks the API server. */
export interface BundleTargetsApi {
  /** Reads one object (`namespace` only for ConfigMaps). */
  get(kind: BundleTargetKind, name: string, namespace?: string): Promise<KubeObject>;
  /** Replaces one object with `obj` (which carries the `resourceVersion` read). */
  replace(kind: BundleTargetKind, obj: KubeObject): Promise<void>;
  /** The cluster-scoped objects of a kind whose labels match `labelSelector`. */
  list(kind: Exclude<BundleTargetKind, "ConfigMap">, labelSelector: string): Promise<KubeObject[]>;
}

/** Where the API server and the server's credentials for it come from. */
export interface BundleTargetsApiSource {
  /** A kubeconfig file (its current context); without one, the pod's in-cluster config. */
  readonly kubeConfigFile?: string | undefined;
  /** Longest one call may take (default 10 s). */
  readonly timeoutMs?: number | undefined;
  /** Aborts calls under way (the notifier's close). */
  readonly signal?: AbortSignal | undefined;
}

const PREFIX = "k8sbundle";

/** A {@link BundleTargetsApi}; the kubeconfig is read on first use (and again after a failure to read it). */
export function createBundleTargetsApi(source: BundleTargetsApiSource): BundleTargetsApi {
  const timeoutMs = source.timeoutMs ?? 10_000;
  let connection: Promise<KubeConnection> | undefined;
  const connect = (): Promise<KubeConnection> => {
    connection ??= connectKube(source.kubeConfigFile, PREFIX).catch((e: unknown) => {
      connection = undefined;
      throw e;
    });
    return connection;
  };

  const call = async <T>(what: string, run: (c: KubeConnection, options: ReturnType<typeof boundedCall>) => Promise<T>): Promise<T> => {
    const c = await connect();
    try {
      return await run(c, boundedCall(c.k8s, timeoutMs, source.signal));
    } catch (e) {
      const status = httpStatusOf(c.k8s, e);
      if (status !== undefined) throw new KubeCallError(status, `${PREFIX}: the Kubernetes API at ${c.server} answered ${what} with HTTP ${status}${kubeStatusMessage(e)}`, e);
      const message = e instanceof Error ? (e.name === "AbortError" || e.name === "TimeoutError" ? `no answer within ${timeoutMs} ms` : e.message) : String(e);
      throw new KubeCallError(undefined, `${PREFIX}: the Kubernetes API at ${c.server} cannot be reached for ${what}: ${message}`, e);
    }
  };

  return {
    get(kind, name, namespace = "") {
      const what = `reading ${kind} ${kind === "ConfigMap" ? `${namespace}/` : ""}${name}`;
      return call(what, async (c, options) => {
        const cfg = c.config;
        switch (kind) {
          case "ConfigMap":
            return (await cfg.makeApiClient(c.k8s.CoreV1Api).readNamespacedConfigMap({ name, namespace }, options)) as KubeObject;
          case "MutatingWebhookConfiguration":
            return (await cfg.makeApiClient(c.k8s.AdmissionregistrationV1Api).readMutatingWebhookConfiguration({ name }, options)) as KubeObject;
          case "ValidatingWebhookConfiguration":
            return (await cfg.makeApiClient(c.k8s.AdmissionregistrationV1Api).readValidatingWebhookConfiguration({ name }, options)) as KubeObject;
          case "APIService":
            return (await cfg.makeApiClient(c.k8s.ApiregistrationV1Api).readAPIService({ name }, options)) as KubeObject;
        }
      });
    },
    async replace(kind, obj) {
      const name = obj.metadata?.name ?? "";
      const namespace = obj.metadata?.namespace ?? "";
      const what = `writing ${kind} ${kind === "ConfigMap" ? `${namespace}/` : ""}${name}`;
      await call(what, async (c, options) => {
        const cfg = c.config;
        const body = obj as never;
        switch (kind) {
          case "ConfigMap":
            return cfg.makeApiClient(c.k8s.CoreV1Api).replaceNamespacedConfigMap({ name, namespace, body }, options);
          case "MutatingWebhookConfiguration":
            return cfg.makeApiClient(c.k8s.AdmissionregistrationV1Api).replaceMutatingWebhookConfiguration({ name, body }, options);
          case "ValidatingWebhookConfiguration":
            return cfg.makeApiClient(c.k8s.AdmissionregistrationV1Api).replaceValidatingWebhookConfiguration({ name, body }, options);
          case "APIService":
            return cfg.makeApiClient(c.k8s.ApiregistrationV1Api).replaceAPIService({ name, body }, options);
        }
      });
    },
    list(kind, labelSelector) {
      return call(`listing ${kind}s labelled ${labelSelector}`, async (c, options) => {
        const cfg = c.config;
        let items: unknown[];
        switch (kind) {
          case "MutatingWebhookConfiguration":
            items = (await cfg.makeApiClient(c.k8s.AdmissionregistrationV1Api).listMutatingWebhookConfiguration({ labelSelector }, options)).items;
            break;
          case "ValidatingWebhookConfiguration":
            items = (await cfg.makeApiClient(c.k8s.AdmissionregistrationV1Api).listValidatingWebhookConfiguration({ labelSelector }, options)).items;
            break;
          case "APIService":
            items = (await cfg.makeApiClient(c.k8s.ApiregistrationV1Api).listAPIService({ labelSelector }, options)).items;
            break;
        }
        return items as KubeObject[];
      });
    },
  };
}
