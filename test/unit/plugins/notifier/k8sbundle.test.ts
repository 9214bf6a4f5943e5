/**
 * The `k8sbundle` notifier against a local Kubernetes API server
 * (test/support/kube-api.ts, HTTPS and a bearer token) through the real
 * @kubernetes/client-node: the ConfigMap key holds the PEM of the bundle's
 * X.509 authorities, conflicts are read again and retried, a missing or
 * forbidden ConfigMap is logged, counted and retried until it works, labelled
 * webhook configurations and APIServices get the caBundle, and config errors
 * name their key paths.
 */
import { X509Certificate } from "node:crypto";
import { setTimeout as delay } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import {
  conflictDelayMs,
  createK8sBundleNotifier,
  k8sBundleConfigSchema,
  MAX_CONFLICT_ATTEMPTS,
  retryDelayMs,
  type K8sBundleConfig,
} from "../../../../plugins/notifier/k8sbundle/publisher.js";
import { createBundleTargetsApi } from "../../../../plugins/notifier/k8sbundle/kube-api.js";
import type { BundleNotifier } from "../../../../plugins/notifier/types.js";
import { parseServerConfig } from "../../../../server/config/load.js";
import type { SpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { decodePemCertificates } from "../../../../spiffe/pem.js";
import { generateSigner } from "../../../../spiffe/signer.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";
import { startFakeKubeApi, type FakeKubeApi, type WritableObject } from "../../../support/kube-api.js";
import { testTempDir } from "../../../support/temp-dir.js";
import { requireTool } from "../../../support/tools.js";

const haveOpenssl = requireTool("openssl", ["version"], "the fake API server's certificate");
const td = parseTrustDomain("example.org");
const NS = "sigil";
const CM = "sigil-bundle";

let api: FakeKubeApi;

function rootCa(): Uint8Array {
  const now = Date.now();
  return createRootCa({ trustDomain: td, signer: generateSigner("ec-p256"), notBefore: new Date(now - 1000), notAfter: new Date(now + 3_600_000) });
}

function bundleOf(...roots: Uint8Array[]): SpiffeBundle {
  return { trustDomain: td, x509Authorities: roots, jwtAuthorities: new Map(), sequenceNumber: 1n };
}

/** The bundle ConfigMap as the chart creates it: present, with an unrelated key. */
function seedConfigMap(): void {
  api.objects.put("configmaps", { apiVersion: "v1", kind: "ConfigMap", metadata: { name: CM, namespace: NS, labels: { app: "sigil" } }, data: { "other.txt": "kept" } });
}

function webhookConfig(name: string, labels: Record<string, string>, entries: string[]): WritableObject {
  return {
    metadata: { name, labels },
    webhooks: entries.map((n) => ({ name: n, clientConfig: { service: { namespace: "app", name: "hook", port: 443 } }, admissionReviewVersions: ["v1"], sideEffects: "None" })),
  };
}

interface Harness {
  readonly notifier: BundleNotifier;
  readonly metrics: Metrics;
  readonly logs: Array<Record<string, unknown>>;
  /** Delays the notifier asked to wait, in order. */
  readonly waits: number[];
}

/** A notifier talking to the fake through a kubeconfig; waits are recorded and cut to 1 ms. */
function notifier(overrides: Partial<K8sBundleConfig> = {}): Harness {
  const logs: Array<Record<string, unknown>> = [];
  const waits: number[] = [];
  const metrics = new Metrics({ defaultMetrics: false });
  const config = k8sBundleConfigSchema.parse({ namespace: NS, config_map: CM, kube_config_file: api.writeKubeconfig(testTempDir("sigil-k8sbundle-")), ...overrides });
  const n = createK8sBundleNotifier(config, {
    log: createLogger({ level: "debug", format: "json", destination: { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) } }),
    metrics,
    sleep: (ms, signal) => {
      waits.push(ms);
      return delay(1, undefined, { signal });
    },
  });
  onTestFinished(() => n.close?.());
  return { notifier: n, metrics, logs, waits };
}

async function errorCount(metrics: Metrics, reason: string): Promise<number> {
  const m = metrics.registry.getSingleMetric("sigil_k8sbundle_errors_total");
  return (await m?.get())?.values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

async function publishedAt(metrics: Metrics): Promise<number> {
  return (await metrics.registry.getSingleMetric("sigil_k8sbundle_published_timestamp_seconds")?.get())?.values[0]?.value ?? 0;
}

function configMapPem(): string | undefined {
  return (api.objects.get("configmaps", CM, NS)?.data as Record<string, string> | undefined)?.["bundle.crt"];
}

function putsTo(resource: string): number {
  return api.requests.filter((r) => r.method === "PUT" && r.path.includes(`/${resource}/`)).length;
}

describe.skipIf(!haveOpenssl)("k8sbundle notifier", () => {
  beforeAll(async () => {
    api = await startFakeKubeApi();
  });
  afterAll(async () => {
    await api?.close();
  });

  it("writes the PEM of every X.509 authority to the ConfigMap key, keeps its other keys, and does not write an unchanged bundle again", async () => {
    seedConfigMap();
    const a = rootCa();
    const b = rootCa();
    const h = notifier();
    h.notifier.bundleUpdated(bundleOf(a));
    await vi.waitFor(() => expect(configMapPem()).toBeDefined(), { timeout: 15_000, interval: 20 });
    expect(decodePemCertificates(configMapPem() ?? "").map((d) => Buffer.from(d).toString("hex"))).toEqual([Buffer.from(a).toString("hex")]);
    expect(new X509Certificate(decodePemCertificates(configMapPem() ?? "")[0] ?? new Uint8Array()).ca).toBe(true);

    // A prepared authority joins the bundle: both roots, in bundle order.
    h.notifier.bundleUpdated(bundleOf(a, b));
    await vi.waitFor(() => expect(decodePemCertificates(configMapPem() ?? "")).toHaveLength(2), { timeout: 15_000, interval: 20 });
    // The old one expires and leaves.
    h.notifier.bundleUpdated(bundleOf(b));
    await vi.waitFor(() => expect(decodePemCertificates(configMapPem() ?? "").map((d) => Buffer.from(d).toString("hex"))).toEqual([Buffer.from(b).toString("hex")]), { timeout: 15_000, interval: 20 });
    const cm = api.objects.get("configmaps", CM, NS);
    expect(cm?.data).toMatchObject({ "other.txt": "kept" });
    expect(cm?.metadata.labels).toEqual({ app: "sigil" });

    // The same bundle again: read, found current, not written.
    const puts = putsTo("configmaps");
    const before = await publishedAt(h.metrics);
    await delay(5);
    h.notifier.bundleUpdated(bundleOf(b));
    await vi.waitFor(async () => expect(await publishedAt(h.metrics)).toBeGreaterThan(before), { timeout: 15_000, interval: 20 });
    expect(putsTo("configmaps")).toBe(puts);
    expect(h.logs.some((l) => l.msg === "k8sbundle: bundle published")).toBe(true);
    expect(await errorCount(h.metrics, "conflict")).toBe(0);
  });

  it("a 409 Conflict (another writer changed the ConfigMap) is read again and retried, and ends with the bundle", async () => {
    seedConfigMap();
    const root = rootCa();
    const h = notifier();
    api.objects.forceConflicts("configmaps", MAX_CONFLICT_ATTEMPTS - 1);
    h.notifier.bundleUpdated(bundleOf(root));
    await vi.waitFor(() => expect(decodePemCertificates(configMapPem() ?? "").map((d) => Buffer.from(d).toString("hex"))).toEqual([Buffer.from(root).toString("hex")]), { timeout: 15_000, interval: 20 });
    expect(await errorCount(h.metrics, "conflict")).toBe(MAX_CONFLICT_ATTEMPTS - 1);
    // Each retry read the ConfigMap again before writing, waiting a little longer each time.
    expect(h.waits.slice(0, MAX_CONFLICT_ATTEMPTS - 1)).toEqual([1, 2, 3, 4].map(conflictDelayMs));
    expect(h.logs.filter((l) => l.msg === "k8sbundle: write conflict; reading again")).toHaveLength(MAX_CONFLICT_ATTEMPTS - 1);
    expect(h.logs.some((l) => l.level === "error" || l.level === 50)).toBe(false);
    // The unrelated key another writer may have set survives.
    expect(api.objects.get("configmaps", CM, NS)?.data).toMatchObject({ "other.txt": "kept" });
  });

  it("more conflicts in a row than the immediate retries: a failed round, logged and retried later, still ends with the bundle", async () => {
    seedConfigMap();
    const root = rootCa();
    const h = notifier();
    api.objects.forceConflicts("configmaps", MAX_CONFLICT_ATTEMPTS + 1);
    h.notifier.bundleUpdated(bundleOf(root));
    await vi.waitFor(() => expect(decodePemCertificates(configMapPem() ?? "").map((d) => Buffer.from(d).toString("hex"))).toEqual([Buffer.from(root).toString("hex")]), { timeout: 15_000, interval: 20 });
    expect(await errorCount(h.metrics, "conflict")).toBe(MAX_CONFLICT_ATTEMPTS + 1);
    expect(h.logs.filter((l) => l.msg === "k8sbundle: publishing the bundle failed; retrying" && l.reason === "conflict")).toHaveLength(1);
  });

  it.each([
    ["missing (404)", "not_found", () => api.objects.delete("configmaps", CM, NS), () => seedConfigMap(), /create it \(the Helm chart does\); the server does not create it/, /HTTP 404: configmaps "sigil-bundle" not found/],
    [
      "forbidden (403)",
      "forbidden",
      () => {
        seedConfigMap();
        api.objects.forbidden.add("configmaps");
      },
      () => api.objects.forbidden.delete("configmaps"),
      /needs get and update on it/,
      /HTTP 403: configmaps "sigil-bundle" is forbidden/,
    ],
  ])("a ConfigMap %s is logged with the remedy, counted and retried with a growing delay until it works", async (_what, reason, breakIt, fixIt, remedy, detail) => {
    breakIt();
    const root = rootCa();
    const h = notifier();
    h.notifier.bundleUpdated(bundleOf(root));
    await vi.waitFor(async () => expect(await errorCount(h.metrics, reason)).toBeGreaterThanOrEqual(3), { timeout: 15_000, interval: 20 });
    expect(configMapPem()).toBeUndefined();
    const failure = h.logs.find((l) => l.reason === reason);
    expect(failure?.msg).toMatch(remedy);
    expect(String(failure?.err)).toMatch(detail);
    expect(String(failure?.config_map)).toBe(`${NS}/${CM}`);
    // Nothing secret in the log: not the API's bearer token.
    expect(JSON.stringify(h.logs)).not.toContain(api.bearerToken);
    expect(h.waits.slice(0, 3)).toEqual([1, 2, 3].map(retryDelayMs));
    fixIt();
    await vi.waitFor(() => expect(decodePemCertificates(configMapPem() ?? "")).toHaveLength(1), { timeout: 15_000, interval: 20 });
  });

  it("writes the caBundle into every webhook of the labelled webhook configurations and into labelled APIServices; others are left alone", async () => {
    seedConfigMap();
    api.objects.put("mutatingwebhookconfigurations", webhookConfig("inject", { "sigil.example/bundle": "true" }, ["a.example.com", "b.example.com"]));
    api.objects.put("validatingwebhookconfigurations", webhookConfig("validate", { "sigil.example/bundle": "true" }, ["v.example.com"]));
    api.objects.put("validatingwebhookconfigurations", webhookConfig("unrelated", { "sigil.example/bundle": "false" }, ["u.example.com"]));
    api.objects.put("apiservices", { metadata: { name: "v1.metrics.example.com", labels: { "sigil.example/bundle": "true" } }, spec: { group: "metrics.example.com", version: "v1", groupPriorityMinimum: 100, versionPriority: 10, service: { namespace: "app", name: "metrics" } } });
    api.objects.put("apiservices", { metadata: { name: "v1.other.example.com" }, spec: { group: "other.example.com", version: "v1", groupPriorityMinimum: 100, versionPriority: 10 } });
    api.objects.forceConflicts("validatingwebhookconfigurations", 1);
    const root = rootCa();
    const h = notifier({ webhook_label: "sigil.example/bundle", api_service_label: "sigil.example/bundle" });
    h.notifier.bundleUpdated(bundleOf(root));
    await vi.waitFor(() => expect(api.objects.get("apiservices", "v1.metrics.example.com")?.spec).toHaveProperty("caBundle"), { timeout: 15_000, interval: 20 });
    const caBundles = (name: string, resource: "mutatingwebhookconfigurations" | "validatingwebhookconfigurations"): unknown[] =>
      ((api.objects.get(resource, name)?.webhooks ?? []) as Array<{ clientConfig?: { caBundle?: string } }>).map((w) => w.clientConfig?.caBundle);
    const expected = Buffer.from(configMapPem() ?? "x").toString("base64");
    expect(decodePemCertificates(Buffer.from(expected, "base64").toString())).toHaveLength(1);
    expect(caBundles("inject", "mutatingwebhookconfigurations")).toEqual([expected, expected]);
    expect(caBundles("validate", "validatingwebhookconfigurations")).toEqual([expected]);
    expect(caBundles("unrelated", "validatingwebhookconfigurations")).toEqual([undefined]);
    expect((api.objects.get("apiservices", "v1.metrics.example.com")?.spec as { caBundle?: string; service?: unknown }).caBundle).toBe(expected);
    expect((api.objects.get("apiservices", "v1.metrics.example.com")?.spec as { service?: unknown }).service).toEqual({ namespace: "app", name: "metrics" });
    expect(api.objects.get("apiservices", "v1.other.example.com")?.spec).not.toHaveProperty("caBundle");
    // The other fields of each webhook are kept.
    expect((api.objects.get("mutatingwebhookconfigurations", "inject")?.webhooks as Array<{ clientConfig: { service: unknown }; sideEffects: string }>)[0]).toMatchObject({
      clientConfig: { service: { namespace: "app", name: "hook", port: 443 } },
      sideEffects: "None",
    });
    expect(await errorCount(h.metrics, "conflict")).toBe(1);
    for (const r of ["mutatingwebhookconfigurations", "validatingwebhookconfigurations", "apiservices"]) api.objects.delete(r as never, r === "apiservices" ? "v1.metrics.example.com" : r.startsWith("mut") ? "inject" : "validate");
  });

  it("writes only objects that carry the label when written: not what a selector-ignoring API lists, nor one unlabelled before a conflict's re-read", async () => {
    seedConfigMap();
    const LABEL = "sigil.example/bundle";
    api.objects.put("mutatingwebhookconfigurations", webhookConfig("opted-in", { [LABEL]: "true" }, ["a.example.com"]));
    api.objects.put("mutatingwebhookconfigurations", webhookConfig("someone-elses", {}, ["x.example.com"]));
    api.objects.put("validatingwebhookconfigurations", webhookConfig("unlabelled-meanwhile", { [LABEL]: "true" }, ["v.example.com"]));
    const metrics = new Metrics({ defaultMetrics: false });
    let unlabelled = false;
    const n = createK8sBundleNotifier(k8sBundleConfigSchema.parse({ namespace: NS, config_map: CM, webhook_label: LABEL, kube_config_file: api.writeKubeconfig(testTempDir("sigil-k8sbundle-")) }), {
      log: createLogger({ level: "error", format: "json", destination: { write: () => undefined } }),
      metrics,
      sleep: (_ms, signal) => delay(1, undefined, { signal }),
      api: (source) => {
        const real = createBundleTargetsApi(source);
        return {
          get: real.get,
          // An API server (or a proxy in front of it) that ignores labelSelector.
          list: (kind) => real.list(kind, ""),
          replace: async (kind, obj) => {
            if (obj.metadata?.name === "unlabelled-meanwhile" && !unlabelled) {
              // Its owner removes the label (and sets its own CA) between our read and our write.
              unlabelled = true;
              const current = api.objects.get("validatingwebhookconfigurations", "unlabelled-meanwhile");
              api.objects.put("validatingwebhookconfigurations", { ...webhookConfig("unlabelled-meanwhile", {}, ["v.example.com"]), metadata: { ...current?.metadata, name: "unlabelled-meanwhile", labels: {} } } as WritableObject);
            }
            return real.replace(kind, obj);
          },
        };
      },
    });
    onTestFinished(() => n.close?.());
    n.bundleUpdated(bundleOf(rootCa()));
    await vi.waitFor(async () => expect(await publishedAt(metrics)).toBeGreaterThan(0), { timeout: 15_000, interval: 20 });
    const caBundles = (resource: "mutatingwebhookconfigurations" | "validatingwebhookconfigurations", name: string): unknown[] =>
      ((api.objects.get(resource, name)?.webhooks ?? []) as Array<{ clientConfig?: { caBundle?: string } }>).map((w) => w.clientConfig?.caBundle);
    expect(caBundles("mutatingwebhookconfigurations", "opted-in")[0]).toEqual(expect.any(String));
    expect(caBundles("mutatingwebhookconfigurations", "someone-elses")).toEqual([undefined]);
    expect(unlabelled).toBe(true);
    expect(caBundles("validatingwebhookconfigurations", "unlabelled-meanwhile")).toEqual([undefined]);
    api.objects.delete("mutatingwebhookconfigurations", "opted-in");
    api.objects.delete("mutatingwebhookconfigurations", "someone-elses");
    api.objects.delete("validatingwebhookconfigurations", "unlabelled-meanwhile");
  });

  it("writes the configured ConfigMap only, whatever name or namespace the object read back claims", async () => {
    seedConfigMap();
    api.objects.put("configmaps", { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "coredns", namespace: "kube-system" }, data: { Corefile: "." } });
    const metrics = new Metrics({ defaultMetrics: false });
    const writes: string[] = [];
    const n = createK8sBundleNotifier(k8sBundleConfigSchema.parse({ namespace: NS, config_map: CM, kube_config_file: api.writeKubeconfig(testTempDir("sigil-k8sbundle-")) }), {
      log: createLogger({ level: "error", format: "json", destination: { write: () => undefined } }),
      metrics,
      sleep: (_ms, signal) => delay(1, undefined, { signal }),
      api: (source) => {
        const real = createBundleTargetsApi(source);
        return {
          list: real.list,
          // A broken or hostile API server answers with another object's identity.
          get: async (kind, name, namespace) => {
            const obj = await real.get(kind, name, namespace);
            return { ...obj, metadata: { ...obj.metadata, name: "coredns", namespace: "kube-system" } };
          },
          replace: (kind, obj) => {
            writes.push(`${obj.metadata?.namespace}/${obj.metadata?.name}`);
            return real.replace(kind, obj);
          },
        };
      },
    });
    onTestFinished(() => n.close?.());
    n.bundleUpdated(bundleOf(rootCa()));
    await vi.waitFor(() => expect(configMapPem()).toBeDefined(), { timeout: 15_000, interval: 20 });
    expect(writes.length).toBeGreaterThan(0);
    expect(new Set(writes)).toEqual(new Set([`${NS}/${CM}`]));
    expect(api.objects.get("configmaps", "coredns", "kube-system")?.data).toEqual({ Corefile: "." });
    api.objects.delete("configmaps", "coredns", "kube-system");
  });

  it("close() stops the retries: no call is made after it", async () => {
    api.objects.delete("configmaps", CM, NS);
    const metrics = new Metrics({ defaultMetrics: false });
    let closed = false;
    let callsAfterClose = 0;
    const n = createK8sBundleNotifier(k8sBundleConfigSchema.parse({ namespace: NS, config_map: CM, kube_config_file: api.writeKubeconfig(testTempDir("sigil-k8sbundle-")) }), {
      log: createLogger({ level: "error", format: "json", destination: { write: () => undefined } }),
      metrics,
      sleep: (_ms, signal) => delay(1, undefined, { signal }),
      api: (source) => {
        const real = createBundleTargetsApi(source);
        const counted = <A extends unknown[], R>(f: (...args: A) => Promise<R>) => (...args: A): Promise<R> => {
          if (closed) callsAfterClose++;
          return f(...args);
        };
        return { get: counted(real.get), replace: counted(real.replace), list: counted(real.list) };
      },
    });
    n.bundleUpdated(bundleOf(rootCa()));
    await vi.waitFor(async () => expect(await errorCount(metrics, "not_found")).toBeGreaterThanOrEqual(2), { timeout: 15_000, interval: 20 });
    await n.close?.();
    closed = true;
    n.bundleUpdated(bundleOf(rootCa()));
    await delay(50);
    expect(callsAfterClose).toBe(0);
  });

  it("the delays: conflicts 50 ms doubling; failed rounds 1 s doubling up to 60 s", () => {
    expect([1, 2, 3, 4].map(conflictDelayMs)).toEqual([50, 100, 200, 400]);
    expect([1, 2, 3, 6, 7, 8, 100].map(retryDelayMs)).toEqual([1000, 2000, 4000, 32_000, 60_000, 60_000, 60_000]);
  });
});

describe("k8sbundle config", () => {
  const server = (notifier: string): string => `server:
  trust_domain: example.org
plugins:
  DataStore: { sql: { database_type: sqlite3, connection_string: x.db } }
  KeyManager: { memory: {} }
  NodeAttestor: { join_token: {} }
${notifier}`;
  const errorOf = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      return (e as Error).message;
    }
    throw new Error("expected an error");
  };

  it("SPIRE's names with Sigil's defaults; the Notifier section is optional and may be empty", () => {
    const cfg = parseServerConfig(server("  Notifier:\n    k8sbundle: {}\n"));
    expect(cfg.plugins.Notifier?.k8sbundle).toEqual({ namespace: "sigil", config_map: "sigil-bundle", config_map_key: "bundle.crt" });
    expect(parseServerConfig(server("")).plugins.Notifier).toBeUndefined();
    expect(parseServerConfig(server("  Notifier: {}\n")).plugins.Notifier).toEqual({});
  });

  it.each([
    ["{ namespace: Sigil_NS }", "plugins.Notifier.k8sbundle.namespace: is not a Kubernetes namespace name"],
    ["{ config_map: 'a/b' }", "plugins.Notifier.k8sbundle.config_map: is not a Kubernetes object name"],
    ["{ config_map_key: 'bundle/crt' }", "plugins.Notifier.k8sbundle.config_map_key: is not a ConfigMap key"],
    ["{ kube_config_file: '' }", "plugins.Notifier.k8sbundle.kube_config_file: is empty"],
    ["{ webhook_label: '-x' }", "plugins.Notifier.k8sbundle.webhook_label: is not a Kubernetes label key"],
    ["{ api_service_label: 'a b' }", "plugins.Notifier.k8sbundle.api_service_label: is not a Kubernetes label key"],
    ["{ configmap: x }", "plugins.Notifier.k8sbundle.configmap: unknown key"],
  ])("%s is refused: %s", (yaml, message) => {
    expect(errorOf(() => parseServerConfig(server(`  Notifier:\n    k8sbundle: ${yaml}\n`)))).toContain(message);
  });

  it("outside a pod without kube_config_file, creating it is refused naming the key", () => {
    const metrics = new Metrics({ defaultMetrics: false });
    const log = createLogger({ level: "error", format: "json", destination: { write: () => undefined } });
    expect(errorOf(() => createK8sBundleNotifier(k8sBundleConfigSchema.parse({}), { log, metrics, env: {} }))).toMatch(
      /^k8sbundle: plugins\.Notifier\.k8sbundle: no kube_config_file is set and the server does not run in a Kubernetes pod/,
    );
  });
});
