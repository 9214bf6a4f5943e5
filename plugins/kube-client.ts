/**
 * What every plugin that talks to a Kubernetes API server through the real
 * `@kubernetes/client-node` needs: the library loaded on first use, a
 * kubeconfig (a file's current context, or the pod's in-cluster config), a
 * time limit on every call, and the API's `Status` message of a failure.
 *
 * The library is imported on first use, not at module load: it takes about a
 * second to load, and every process that loads the plugin catalog (agents,
 * CLIs, servers without a cluster) would pay for it whether or not a cluster
 * is configured.
 */
import type { KubeConfig } from "@kubernetes/client-node";
import { SigilError } from "../spiffe/errors.js";

/** The `@kubernetes/client-node` module. */
export type K8sModule = typeof import("@kubernetes/client-node");

let k8sModule: Promise<K8sModule> | undefined;

/** Loads `@kubernetes/client-node` once (again after a failed load). */
export function loadK8s(): Promise<K8sModule> {
  k8sModule ??= import("@kubernetes/client-node").catch((e: unknown) => {
    k8sModule = undefined;
    throw e;
  });
  return k8sModule;
}

/** A loaded kubeconfig and the API server it names. */
export interface KubeConnection {
  readonly k8s: K8sModule;
  readonly config: KubeConfig;
  /** The API server's URL, for messages. */
  readonly server: string;
}

/**
 * Loads `kubeConfigFile` (its current context), or the in-cluster service
 * account config without one.
 *
 * @throws SigilError `ERR_FAILED_PRECONDITION` starting with `prefix` when it cannot be read or names no server
 */
export async function connectKube(kubeConfigFile: string | undefined, prefix: string): Promise<KubeConnection> {
  const k8s = await loadK8s();
  const config = new k8s.KubeConfig();
  const from = kubeConfigFile === undefined ? "the in-cluster service account config" : `kubeconfig ${kubeConfigFile}`;
  try {
    if (kubeConfigFile === undefined) config.loadFromCluster();
    else config.loadFromFile(kubeConfigFile);
  } catch (e) {
    throw new SigilError("ERR_FAILED_PRECONDITION", `${prefix}: cannot load ${from}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  const server = config.getCurrentCluster()?.server;
  if (server === undefined || server === "") throw new SigilError("ERR_FAILED_PRECONDITION", `${prefix}: ${from} names no current cluster with a server URL`);
  return { k8s, config, server };
}

/**
 * Per-call options that bound a call to `timeoutMs` (an API server that
 * accepts and never answers must not hold its caller forever) and abort it
 * with `signal` too, when given.
 */
export function boundedCall(k8s: K8sModule, timeoutMs: number, signal?: AbortSignal) {
  return {
    middleware: [
      {
        pre: (ctx: InstanceType<K8sModule["RequestContext"]>) => {
          const timeout = AbortSignal.timeout(timeoutMs);
          ctx.setSignal(signal === undefined ? timeout : AbortSignal.any([timeout, signal]));
          return new k8s.Observable(Promise.resolve(ctx));
        },
        post: (res: InstanceType<K8sModule["ResponseContext"]>) => new k8s.Observable(Promise.resolve(res)),
      },
    ],
    middlewareMergeStrategy: "append" as const,
  };
}

/** The HTTP status of a failed call, or undefined when no answer came. */
export function httpStatusOf(k8s: K8sModule, e: unknown): number | undefined {
  return e instanceof k8s.ApiException ? (e as { code: number }).code : undefined;
}

/** `: <message>` of the `Status` body of a failed call, or "" when there is none. */
export function kubeStatusMessage(e: unknown): string {
  let doc = (e as { body?: unknown } | null)?.body;
  if (typeof doc === "string" || Buffer.isBuffer(doc)) {
    try {
      doc = JSON.parse(doc.toString());
    } catch {
      return "";
    }
  }
  const message = (doc as { message?: unknown } | null | undefined)?.message;
  return typeof message === "string" && message !== "" ? `: ${message.slice(0, 200)}` : "";
}
