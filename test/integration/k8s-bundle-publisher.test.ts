/**
 * The `k8sbundle` notifier end to end: a real `sigil-server` process with a
 * one-minute CA, whose kubeconfig points at test/support/kube-api.ts (HTTPS,
 * bearer token, ConfigMaps with resourceVersion checks, reached through the
 * server's real @kubernetes/client-node). The ConfigMap the chart would have
 * created holds the server's roots once it has started; the CA's own
 * rotation (a prepared authority joins the bundle, then the expired one
 * leaves) updates it, and a write that loses a race with another writer
 * (HTTP 409) is read again and retried.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { decodePemCertificates } from "../../spiffe/pem.js";
import { startFakeKubeApi, type FakeKubeApi } from "../support/kube-api.js";
import { requireTool } from "../support/tools.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const haveOpenssl = requireTool("openssl", ["version"], "the fake API server's certificate");

const NS = "sigil";
const CM = "sigil-bundle";

let api: FakeKubeApi;
let dir = "";
let srv: ServerProcess | undefined;

/** The ConfigMap's bundle.crt, as certificate DERs in hex. */
function published(): string[] {
  const pem = (api.objects.get("configmaps", CM, NS)?.data as Record<string, string> | undefined)?.["bundle.crt"] ?? "";
  return decodePemCertificates(pem).map((d) => Buffer.from(d).toString("hex"));
}

/** What `sigil-server bundle show` says the roots are, in hex. */
function served(): string[] {
  const r = srv?.cli(["bundle", "show", "--output", "json"]);
  expect(r?.status, r?.stderr).toBe(0);
  return decodePemCertificates(rootsPemFromBundleJson(r?.stdout ?? "")).map((d) => Buffer.from(d).toString("hex"));
}

function configMapPuts(): number {
  return api.requests.filter((r) => r.method === "PUT" && r.path === `/api/v1/namespaces/${NS}/configmaps/${CM}`).length;
}

describe.skipIf(!haveOpenssl)("k8sbundle notifier with a real server process", () => {
  beforeAll(async () => {
    api = await startFakeKubeApi();
    // The Helm chart creates it empty; the server only updates it.
    api.objects.put("configmaps", { apiVersion: "v1", kind: "ConfigMap", metadata: { name: CM, namespace: NS }, data: {} });
    dir = mkdtempSync(path.join(tmpdir(), "sigil-k8sbundle-it-"));
    const kubeconfig = api.writeKubeconfig(dir);
    const serverDir = mkdtempSync(path.join(tmpdir(), "sigil-it-"));
    const configPath = path.join(serverDir, "server.yaml");
    writeFileSync(
      configPath,
      testServerConfigYaml(serverDir, {
        // The shortest CA lifetime: the next authority is prepared about 30 s after the start, the first expires at 60 s.
        serverExtra: "  log_level: debug\n  ca_ttl: 1m\n  default_x509_svid_ttl: 10s\n",
        extraYaml: `  Notifier:
    k8sbundle:
      namespace: ${NS}
      config_map: ${CM}
      kube_config_file: ${JSON.stringify(kubeconfig)}
`,
      }),
    );
    srv = await launchServerProcess(serverDir, configPath, path.join(serverDir, "admin", "api.sock"), { ownsDir: true });
  }, 60_000);

  afterAll(async () => {
    await srv?.stop();
    await api?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("after the start, the ConfigMap holds the server's roots", async () => {
    await vi.waitFor(() => expect(published()).toHaveLength(1), { timeout: 30_000, interval: 100 });
    expect(published()).toEqual(served());
    // Logged once the API's answer is read, which can be a moment after the fake API stored the write.
    await vi.waitFor(() => expect(srv?.logs.some((l) => l.msg === "k8sbundle: bundle published" && l.config_map === `${NS}/${CM}`)).toBe(true), { timeout: 10_000, interval: 50 });
  });

  it("a CA rotation updates it: the prepared authority joins (through two lost races, read again and retried), then the expired one leaves", async () => {
    const [first] = published();
    const putsBefore = configMapPuts();
    // Another writer gets in first twice when the rotation's bundle is written.
    api.objects.forceConflicts("configmaps", 2);

    await srv?.waitForLog((l) => l.msg === "ca: prepared authority" && l.kind === "x509", 60_000);
    await vi.waitFor(() => expect(published()).toHaveLength(2), { timeout: 30_000, interval: 100 });
    expect(published()).toEqual(served());
    expect(published()).toContain(first);
    expect(srv?.logs.filter((l) => l.msg === "k8sbundle: write conflict; reading again")).toHaveLength(2);
    expect(srv?.logs.some((l) => String(l.msg).startsWith("k8sbundle: publishing the bundle failed"))).toBe(false);
    // Two refused writes and the one that went through.
    expect(configMapPuts() - putsBefore).toBe(3);

    // The first authority expires at one minute; the bundle drops it, and so does the ConfigMap
    // (by then the next authority of this one-minute CA may have joined).
    await vi.waitFor(() => expect(published()).not.toContain(first), { timeout: 60_000, interval: 200 });
    await vi.waitFor(() => expect(published()).toEqual(served()), { timeout: 30_000, interval: 500 });
    expect(served()).not.toContain(first);
  }, 150_000);
});
