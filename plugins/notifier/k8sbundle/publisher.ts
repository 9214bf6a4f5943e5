/**
 * The `k8sbundle` notifier: keeps the PEM of the trust domain's X.509
 * authorities in a Kubernetes ConfigMap (where agents and workloads read the
 * roots from on first contact), and optionally in the `caBundle` of labelled
 * webhook configurations and APIServices. SPIRE's plugin name and options.
 *
 * Every write is a read-modify-write carrying the `resourceVersion` read, so
 * nothing another writer changed in between is overwritten: a 409 Conflict
 * is read again and retried a few times at once. The ConfigMap must exist
 * (the Helm chart creates it, and the server needs no right to create
 * ConfigMaps): a missing one is logged and retried like any other failure.
 * Failures are logged, counted and retried with a growing delay until the
 * targets hold the latest bundle; they never reach the CA. A resync every
 * few minutes restores a target someone changed and fills webhook
 * configurations created since the last bundle change.
 */
import { setTimeout as delay } from "node:timers/promises";
import { z } from "zod";
import type { Counter, Gauge } from "prom-client";
import type { Logger } from "../../../common/log.js";
import { SigilError } from "../../../spiffe/errors.js";
import type { SpiffeBundle } from "../../../spiffe/bundle/spiffe-bundle.js";
import { encodePemCertificates } from "../../../spiffe/pem.js";
import type { BundleNotifier, NotifierDeps } from "../types.js";
import { createBundleTargetsApi, KubeCallError, type BundleTargetKind, type BundleTargetsApi, type BundleTargetsApiSource, type KubeObject } from "./kube-api.js";

/** The plugin's name under `plugins.Notifier`. */
export const K8SBUNDLE_NOTIFIER = "k8sbundle";

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;

/** A label key as Kubernetes allows it: `[prefix/]name`. */
const labelKey = z
  .string()
  .refine(
    (k) => {
      const slash = k.lastIndexOf("/");
      const prefix = slash < 0 ? undefined : k.slice(0, slash);
      const name = slash < 0 ? k : k.slice(slash + 1);
      return name.length <= 63 && LABEL_NAME.test(name) && (prefix === undefined || (prefix.length <= 253 && DNS_SUBDOMAIN.test(prefix)));
    },
    { error: "is not a Kubernetes label key ([prefix/]name, name at most 63 of A-Z a-z 0-9 - _ .)" },
  );

/** Configuration of the `k8sbundle` notifier (SPIRE's option names). */
export const k8sBundleConfigSchema = z.strictObject({
  namespace: z
    .string()
    .max(63, { error: "is longer than 63 characters" })
    .regex(DNS_LABEL, { error: "is not a Kubernetes namespace name (a-z 0-9 -)" })
    .default("sigil")
    .describe("Namespace of the ConfigMap."),
  config_map: z
    .string()
    .max(253, { error: "is longer than 253 characters" })
    .regex(DNS_SUBDOMAIN, { error: "is not a Kubernetes object name (a-z 0-9 - .)" })
    .default("sigil-bundle")
    .describe("Name of the ConfigMap that holds the bundle. It must exist (the Helm chart creates it); the server does not create it."),
  config_map_key: z
    .string()
    .max(253, { error: "is longer than 253 characters" })
    .regex(/^[-._a-zA-Z0-9]+$/, { error: "is not a ConfigMap key (A-Z a-z 0-9 - _ .)" })
    .refine((k) => k !== "." && k !== "..", { error: "is not a ConfigMap key" })
    .default("bundle.crt")
    .describe("Key of the ConfigMap that holds the PEM of the trust domain's X.509 authorities."),
  kube_config_file: z
    .string()
    .min(1, { error: "is empty (leave kube_config_file out for the in-cluster config)" })
    .optional()
    .describe("Kubeconfig file (its current context); without it, the server's in-cluster service account config."),
  webhook_label: labelKey
    .optional()
    .describe("Also write the bundle (base64 PEM) into `caBundle` of every webhook of the Mutating- and ValidatingWebhookConfigurations labelled `<webhook_label>=true`."),
  api_service_label: labelKey.optional().describe("Also write the bundle into `spec.caBundle` of every APIService labelled `<api_service_label>=true`."),
});

/** Parsed configuration. */
export type K8sBundleConfig = z.output<typeof k8sBundleConfigSchema>;

/** Conflicts retried at once (with a short delay each) before a write counts as failed. */
export const MAX_CONFLICT_ATTEMPTS = 5;
/** How often the targets are checked again without a bundle change. */
export const RESYNC_INTERVAL_MS = 5 * 60_000;

/** Delay before write attempt `attempt + 1` after a 409 Conflict: 50, 100, 200, 400 ms. */
export function conflictDelayMs(attempt: number): number {
  return 50 * 2 ** (attempt - 1);
}

/** Delay before publishing again after `failures` failed rounds in a row: 1 s, 2 s, 4 s … at most 60 s. */
export function retryDelayMs(failures: number): number {
  return Math.min(1000 * 2 ** Math.min(failures - 1, 16), 60_000);
}

/** Why a call failed, as the `reason` label of `sigil_k8sbundle_errors_total`. */
export type FailureReason = "conflict" | "not_found" | "unauthorized" | "forbidden" | "unavailable" | "rejected" | "config";

function reasonOf(e: unknown): FailureReason {
  if (!(e instanceof KubeCallError)) return "config";
  switch (e.status) {
    case 409:
      return "conflict";
    case 404:
      return "not_found";
    case 401:
      return "unauthorized";
    case 403:
      return "forbidden";
    case undefined:
      return "unavailable";
    default:
      return e.status >= 500 || e.status === 429 ? "unavailable" : "rejected";
  }
}

/** The remedy an operator reads after a failure, by reason. */
const REMEDY: Partial<Record<FailureReason, string>> = {
  not_found: "create it (the Helm chart does); the server does not create it",
  unauthorized: "the API server does not accept the server's credentials",
  forbidden: "the server's identity needs get and update on it (docs/kubernetes.md)",
};

/** What the notifier needs besides its config. */
export interface K8sBundleDeps extends NotifierDeps {
  /** The API access (tests); default {@link createBundleTargetsApi}. */
  readonly api?: (source: BundleTargetsApiSource) => BundleTargetsApi;
  /** Waits `ms` or until `signal` aborts (tests shorten it); default a timer. */
  readonly sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** The environment, to tell whether the server runs in a pod (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/** The metrics of the notifier. */
interface PublisherMetrics {
  readonly errors: Counter<"reason">;
  readonly published: Gauge;
}

/** One target's desired content: returns the object to write, or undefined when it already holds the bundle. */
type Change = (obj: KubeObject) => KubeObject | undefined;

/**
 * Creates the notifier. Checks what it can without the network: that it has
 * a kubeconfig, or runs in a pod.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the config key
 */
export function createK8sBundleNotifier(config: K8sBundleConfig, deps: K8sBundleDeps): BundleNotifier {
  const key = `plugins.Notifier.${K8SBUNDLE_NOTIFIER}`;
  const env = deps.env ?? process.env;
  if (config.kube_config_file === undefined && (!env.KUBERNETES_SERVICE_HOST || !env.KUBERNETES_SERVICE_PORT)) {
    throw new SigilError(
      "ERR_INVALID_ARGUMENT",
      `k8sbundle: ${key}: no kube_config_file is set and the server does not run in a Kubernetes pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set); set kube_config_file`,
    );
  }
  const log = deps.log;
  const metrics: PublisherMetrics = {
    errors: deps.metrics.counter({ name: "sigil_k8sbundle_errors_total", help: "Failed Kubernetes API calls of the k8sbundle notifier, by reason (a retried 409 Conflict counts too).", labelNames: ["reason"] }),
    published: deps.metrics.gauge({ name: "sigil_k8sbundle_published_timestamp_seconds", help: "When the k8sbundle notifier last found every target holding the current bundle, as a Unix timestamp." }),
  };
  const stop = new AbortController();
  const api = (deps.api ?? createBundleTargetsApi)({ kubeConfigFile: config.kube_config_file, signal: stop.signal });
  const sleep = deps.sleep ?? ((ms: number, signal: AbortSignal) => delay(ms, undefined, { signal }));
  const configMap = `${config.namespace}/${config.config_map}`;

  let wanted: string | undefined;
  let dirty = false;
  let running: Promise<void> | undefined;

  const failed = (e: unknown): FailureReason => {
    const reason = reasonOf(e);
    metrics.errors.inc({ reason });
    return reason;
  };

  /**
   * Read-modify-write of one object; 409 Conflict is read again and retried. Returns whether it wrote.
   * The write goes to `name` (in `namespace`) whatever identity the object read back claims, so
   * a broken or hostile API server cannot steer it at another object.
   */
  const update = async (kind: BundleTargetKind, name: string, namespace: string | undefined, change: Change, first?: KubeObject): Promise<boolean> => {
    let obj = first ?? (await api.get(kind, name, namespace));
    for (let attempt = 1; ; attempt++) {
      const changed = change(obj);
      if (changed === undefined) return false;
      const { namespace: _claimed, ...metadata } = changed.metadata ?? {};
      const next: KubeObject = { ...changed, metadata: { ...metadata, name, ...(namespace === undefined ? {} : { namespace }) } };
      try {
        await api.replace(kind, next);
        return true;
      } catch (e) {
        if (!(e instanceof KubeCallError) || e.status !== 409 || attempt >= MAX_CONFLICT_ATTEMPTS) throw e;
        failed(e);
        log.debug({ kind, name, attempt }, "k8sbundle: write conflict; reading again");
        await sleep(conflictDelayMs(attempt), stop.signal);
        obj = await api.get(kind, name, namespace);
      }
    }
  };

  /**
   * Updates every object of a kind labelled `<label>=true`; returns how many it wrote. The label
   * is checked again on every object before it is written (an API server that ignored the
   * selector, or an owner who removed the label before a conflict's re-read): an object that
   * has not opted in keeps its own caBundle.
   */
  const updateLabelled = async (kind: Exclude<BundleTargetKind, "ConfigMap">, label: string, change: Change): Promise<number> => {
    const optedIn: Change = (obj) => {
      const labels = obj.metadata?.labels as Record<string, unknown> | undefined;
      return labels?.[label] === "true" ? change(obj) : undefined;
    };
    let written = 0;
    for (const item of await api.list(kind, `${label}=true`)) {
      const name = item.metadata?.name;
      if (typeof name !== "string" || name === "") continue;
      if (await update(kind, name, undefined, optedIn, item)) written++;
    }
    return written;
  };

  /** Brings every target to `pem`; returns how many objects it wrote. */
  const publish = async (pem: string): Promise<number> => {
    const caBundle = Buffer.from(pem).toString("base64");
    let written = 0;
    const configMapChange: Change = (cm) => {
      const data = (cm.data ?? {}) as Record<string, string>;
      return data[config.config_map_key] === pem ? undefined : { ...cm, data: { ...data, [config.config_map_key]: pem } };
    };
    if (await update("ConfigMap", config.config_map, config.namespace, configMapChange)) written++;
    if (config.webhook_label !== undefined) {
      const webhooksChange: Change = (obj) => {
        const webhooks = (obj.webhooks ?? []) as Array<{ clientConfig?: { caBundle?: string } }>;
        if (webhooks.every((w) => w.clientConfig?.caBundle === caBundle)) return undefined;
        return { ...obj, webhooks: webhooks.map((w) => ({ ...w, clientConfig: { ...w.clientConfig, caBundle } })) };
      };
      written += await updateLabelled("MutatingWebhookConfiguration", config.webhook_label, webhooksChange);
      written += await updateLabelled("ValidatingWebhookConfiguration", config.webhook_label, webhooksChange);
    }
    if (config.api_service_label !== undefined) {
      const apiServiceChange: Change = (obj) => {
        const spec = (obj.spec ?? {}) as { caBundle?: string };
        return spec.caBundle === caBundle ? undefined : { ...obj, spec: { ...spec, caBundle } };
      };
      written += await updateLabelled("APIService", config.api_service_label, apiServiceChange);
    }
    return written;
  };

  /** Publishes until the targets hold the latest bundle, retrying failures with a growing delay. */
  const run = async (): Promise<void> => {
    let failures = 0;
    while (dirty && wanted !== undefined && !stop.signal.aborted) {
      dirty = false;
      const pem = wanted;
      try {
        const written = await publish(pem);
        failures = 0;
        metrics.published.setToCurrentTime();
        if (written > 0) log.info({ config_map: configMap, written, authorities: countCertificates(pem) }, "k8sbundle: bundle published");
      } catch (e) {
        if (stop.signal.aborted) return;
        failures++;
        dirty = true;
        const reason = failed(e);
        const retryMs = retryDelayMs(failures);
        const remedy = REMEDY[reason];
        log.error(
          { config_map: configMap, reason, failures, retry_in_ms: retryMs, err: e instanceof Error ? e.message : String(e) },
          `k8sbundle: publishing the bundle failed${remedy === undefined ? "" : `: ${remedy}`}; retrying`,
        );
        try {
          await sleep(retryMs, stop.signal);
        } catch {
          return;
        }
      }
    }
  };

  const kick = (): void => {
    dirty = true;
    running ??= run().finally(() => {
      running = undefined;
      // A bundle that arrived while the last round was finishing.
      if (dirty && !stop.signal.aborted) kick();
    });
  };

  const resync = setInterval(() => {
    if (running === undefined && wanted !== undefined) kick();
  }, RESYNC_INTERVAL_MS);
  resync.unref();

  return {
    name: K8SBUNDLE_NOTIFIER,
    bundleUpdated(bundle: SpiffeBundle): void {
      if (stop.signal.aborted) return;
      wanted = encodePemCertificates(bundle.x509Authorities);
      kick();
    },
    async close(): Promise<void> {
      clearInterval(resync);
      stop.abort();
      await running;
    },
  };
}

function countCertificates(pem: string): number {
  return pem.split("-----BEGIN CERTIFICATE-----").length - 1;
}
