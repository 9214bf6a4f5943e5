/**
 * The registration controller end to end: a real `sigil-server` with
 * `k8s_controller` on, watching test/support/kube-api.ts (HTTPS, bearer
 * token, LIST + WATCH of pods, namespaces, nodes and ClusterSPIFFEIDs in the
 * Kubernetes wire format) through its real @kubernetes/client-node informers.
 * Entries are read back with the admin API (`sigil-server entry show`).
 * The last block runs the controller as its own process
 * (`sigil-server k8s-controller`), writing through the admin socket.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import type { Entry } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { EXAMPLE_AGENT_POD, EXAMPLE_NODE, startFakeKubeApi, type FakeKubeApi, type FakePod } from "../support/kube-api.js";
import { requireTool } from "../support/tools.js";
import { followJsonLog } from "./support/json-log.js";
import { launchServerProcess, SERVER_CLI, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";

const haveOpenssl = requireTool("openssl", ["version"], "the fake API server's certificate");

const TD = "example.org";
const AGENT_ID = `spiffe://${TD}/spire/agent/k8s_psat/prod/${EXAMPLE_NODE.uid}`;
const PREFIX = "k8s.prod.";

const pod = (name: string, namespace: string, sa: string, labels: Record<string, string>, uid: string): FakePod => ({
  namespace,
  name,
  uid,
  serviceAccountName: sa,
  nodeName: EXAMPLE_NODE.name,
  hostIP: "192.0.2.11",
  labels,
});
const API_POD = pod("api-7d9f8-abcde", "payments", "api", { app: "api" }, "a1a1a1a1-0000-4000-8000-000000000001");
const WEB_POD = pod("web-5c4b3-fghij", "web", "web", { app: "web" }, "b2b2b2b2-0000-4000-8000-000000000002");
const SYSTEM_POD = pod("coredns-1", "kube-system", "coredns", { k8s: "dns" }, "c3c3c3c3-0000-4000-8000-000000000003");
const PENDING_POD: FakePod = { ...pod("batch-1", "payments", "batch", { app: "batch" }, "d4d4d4d4-0000-4000-8000-000000000004"), nodeName: "" };

let api: FakeKubeApi;
let dir = "";
let configPath = "";
let srv: ServerProcess | undefined;
let operatorEntryId = "";

interface Listed {
  id: string;
  spiffe_id: string;
  parent_id: string;
  selectors: Array<{ type: string; value: string }>;
  x509_svid_ttl: number;
  dns_names: string[];
  hint: string;
  revision: string;
}

/** `sigil-server entry show --output json`. */
function cliEntries(): Listed[] {
  const r = (srv as ServerProcess).cli(["entry", "show", "--output", "json"]);
  expect(r.status, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { entries?: Listed[] }).entries ?? [];
}

/** The same through the admin socket, for polling (no process per read). */
async function entries(): Promise<Entry[]> {
  const c = createUnaryClient(EntryAdmin, `unix:${(srv as ServerProcess).socketPath}`, credentials.createInsecure());
  try {
    return (await c.listEntries({ pageSize: 1000 })).entries;
  } finally {
    c.close();
  }
}

const sel = (e: { selectors: ReadonlyArray<{ type: string; value: string }> }): string[] => e.selectors.map((s) => `${s.type}:${s.value}`).sort();
const owned = (list: Entry[]): Entry[] => list.filter((e) => e.id.startsWith(PREFIX));

/** Polls the server's entries until `check` holds (the controller works asynchronously from the watch). */
async function until(what: string, check: (list: Entry[]) => boolean, timeoutMs = 30_000): Promise<Entry[]> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const list = await entries();
    if (check(list)) return list;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}; entries: ${JSON.stringify(list.map((e) => [e.id, e.spiffeId, sel(e)]))}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function untilStatus(name: string, check: (stats: Record<string, number>) => boolean, timeoutMs = 30_000): Promise<Record<string, number>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const stats = ((api.clusterSpiffeId(name)?.status as { stats?: Record<string, number> } | undefined)?.stats ?? {}) as Record<string, number>;
    if (check(stats)) return stats;
    if (Date.now() > end) throw new Error(`timed out waiting for the status of ${name}: ${JSON.stringify(stats)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function startServer(): Promise<ServerProcess> {
  return launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"));
}

describe.skipIf(!haveOpenssl)("k8s registration controller in a real server", () => {
  beforeAll(async () => {
    api = await startFakeKubeApi();
    api.putNode(EXAMPLE_NODE);
    for (const [name, labels] of [["payments", { team: "pay" }], ["web", { team: "web" }], ["kube-system", {}], ["sigil", {}]] as const) api.putNamespace({ name, labels });
    api.putPod(EXAMPLE_AGENT_POD);
    api.putPod(SYSTEM_POD);
    dir = mkdtempSync(path.join(tmpdir(), "sigil-k8s-controller-it-"));
    const kubeconfig = api.writeKubeconfig(dir);
    configPath = path.join(dir, "server.yaml");
    writeFileSync(
      configPath,
      testServerConfigYaml(dir, {
        serverExtra: "  log_level: debug\n",
        extraYaml: `    k8s_psat:
      clusters:
        prod:
          service_account_allow_list: ["sigil:sigil-agent"]
          kube_config_file: ${JSON.stringify(kubeconfig)}
k8s_controller:
  enabled: true
  cluster: prod
  resync_interval: 1s
`,
      }),
    );
    srv = await startServer();
    // An operator's entry that looks like one of the controller's (same selectors as the api pod's default entry would have, but its own ID).
    const r = srv.cli(["entry", "create", "--parent-id", AGENT_ID, "--spiffe-id", `spiffe://${TD}/ns/payments/sa/api`, "--selector", "k8s:ns:payments", "--selector", "k8s:sa:api", "--output", "json"]);
    expect(r.status, r.stderr).toBe(0);
    operatorEntryId = (JSON.parse(r.stdout) as { entries: Array<{ id: string }> }).entries[0]?.id ?? "";
    expect(operatorEntryId).not.toBe("");
  }, 90_000);

  afterAll(async () => {
    await srv?.stop({ keepDir: true });
    await api?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("pods that appear get their default entry, parented to their node's psat agent before it attested; ignored namespaces and unscheduled pods get none", async () => {
    api.putPod(API_POD);
    api.putPod(WEB_POD);
    api.putPod(PENDING_POD);
    const list = await until("two pod entries", (l) => owned(l).length === 2);
    const byId = new Map(owned(list).map((e) => [e.spiffeId, e]));
    const apiEntry = byId.get(`spiffe://${TD}/ns/payments/sa/api`);
    expect(apiEntry?.parentId).toBe(AGENT_ID);
    expect(sel(apiEntry as Entry)).toEqual(["k8s:ns:payments", `k8s:pod-uid:${API_POD.uid}`]);
    expect(sel(byId.get(`spiffe://${TD}/ns/web/sa/web`) as Entry)).toEqual(["k8s:ns:web", `k8s:pod-uid:${WEB_POD.uid}`]);
    // Read the way an operator does.
    const cli = cliEntries();
    expect(cli.filter((e) => e.id.startsWith(PREFIX)).map((e) => e.spiffe_id).sort()).toEqual([`spiffe://${TD}/ns/payments/sa/api`, `spiffe://${TD}/ns/web/sa/web`]);
    expect(cli.find((e) => e.id === operatorEntryId)?.revision).toBe("0");
    // The watch is used, not polling: after the first lists, only watch requests.
    const lists = api.listWatchRequests.filter((r) => !r.watch);
    expect(lists.map((r) => r.path).sort()).toEqual(["/api/v1/namespaces", "/api/v1/nodes", "/api/v1/pods", "/apis/sigil.dev/v1alpha1/clusterspiffeids"]);
  }, 60_000);

  it("a ClusterSPIFFEID selects by namespace and pod labels and renders ID, selectors, DNS names, TTL and hint; relabelling and editing it update the entry in place", async () => {
    api.putClusterSpiffeId({
      metadata: { name: "payments-apps" },
      spec: {
        spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/app/{{ index .PodMeta.Labels "app" }}',
        namespaceSelector: { matchLabels: { team: "pay" } },
        podSelector: { matchExpressions: [{ key: "app", operator: "In", values: ["api", "billing"] }] },
        workloadSelectorTemplates: ["k8s:sa:{{ .PodSpec.ServiceAccountName }}"],
        dnsNameTemplates: ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}"],
        ttl: "30m",
        hint: "payments",
      },
    });
    let list = await until("the payments-apps entry", (l) => l.some((e) => e.spiffeId === `spiffe://${TD}/app/api`));
    const entry = list.find((e) => e.spiffeId === `spiffe://${TD}/app/api`) as Entry;
    expect(entry.id.startsWith(PREFIX)).toBe(true);
    expect(entry.parentId).toBe(AGENT_ID);
    expect(sel(entry)).toEqual(["k8s:ns:payments", `k8s:pod-uid:${API_POD.uid}`, "k8s:sa:api"]);
    expect(entry.dnsNames).toEqual([`${API_POD.name}.payments.svc.cluster.local`]);
    expect(entry.x509SvidTtl).toBe(1800);
    expect(entry.hint).toBe("payments");
    // The web pod's namespace does not match: it keeps only its default entry.
    expect(owned(list)).toHaveLength(3);
    expect(await untilStatus("payments-apps", (s) => s.entriesCreated === 1)).toEqual({ namespacesSelected: 1, podsSelected: 1, entriesCreated: 1, entryRenderFailures: 0, entryFailures: 0 });

    // Relabelled pod: same entry, new ID.
    api.putPod({ ...API_POD, labels: { app: "billing" } });
    list = await until("the relabelled entry", (l) => l.some((e) => e.spiffeId === `spiffe://${TD}/app/billing`));
    expect(list.find((e) => e.spiffeId === `spiffe://${TD}/app/billing`)?.id).toBe(entry.id);
    expect(list.some((e) => e.spiffeId === `spiffe://${TD}/app/api`)).toBe(false);

    // Edited resource: the entry follows.
    api.putClusterSpiffeId({
      metadata: { name: "payments-apps" },
      spec: {
        spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/team/pay/{{ index .PodMeta.Labels "app" }}',
        namespaceSelector: { matchLabels: { team: "pay" } },
        podSelector: { matchExpressions: [{ key: "app", operator: "Exists" }] },
      },
    });
    list = await until("the edited entry", (l) => l.some((e) => e.spiffeId === `spiffe://${TD}/team/pay/billing`));
    const edited = list.find((e) => e.spiffeId === `spiffe://${TD}/team/pay/billing`) as Entry;
    expect(edited.id).toBe(entry.id);
    expect(sel(edited)).toEqual(["k8s:ns:payments", `k8s:pod-uid:${API_POD.uid}`]);
    expect(edited.x509SvidTtl).toBe(0);
    expect(owned(list)).toHaveLength(3);
  }, 60_000);

  it("a template that renders an invalid SPIFFE ID, or uses syntax outside the subset, is counted in status and creates nothing; an invalid edit removes nothing", async () => {
    const before = owned(await entries()).map((e) => e.id).sort();
    // "missing" is no label of the pods: the ID ends with "/", which no SPIFFE ID may.
    api.putClusterSpiffeId({ metadata: { name: "broken-render" }, spec: { spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/x/{{ index .PodMeta.Labels "missing" }}', podSelector: { matchLabels: { app: "web" } } } });
    api.putClusterSpiffeId({ metadata: { name: "broken-syntax" }, spec: { spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/{{ .PodMeta.Name | upper }}" } });
    expect(await untilStatus("broken-render", (s) => s.podsSelected === 1)).toEqual({ namespacesSelected: 2, podsSelected: 1, entriesCreated: 0, entryRenderFailures: 1, entryFailures: 0 });
    // Every pod outside the ignored namespaces is selected and fails to render: api and web (the pending pod is not scheduled).
    expect(await untilStatus("broken-syntax", (s) => s.podsSelected === 2)).toEqual({ namespacesSelected: 2, podsSelected: 2, entriesCreated: 0, entryRenderFailures: 2, entryFailures: 0 });
    expect(owned(await entries()).map((e) => e.id).sort()).toEqual(before);
    api.deleteClusterSpiffeId("broken-render");
    api.deleteClusterSpiffeId("broken-syntax");

    // A working resource edited into an invalid one keeps its entries as they were until it is fixed.
    const kept = (await entries()).find((e) => e.spiffeId === `spiffe://${TD}/team/pay/billing`) as Entry;
    const validSpec = {
      spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/team/pay/{{ index .PodMeta.Labels "app" }}',
      namespaceSelector: { matchLabels: { team: "pay" } },
      podSelector: { matchExpressions: [{ key: "app", operator: "Exists" }] },
    };
    api.putClusterSpiffeId({ metadata: { name: "payments-apps" }, spec: { ...validSpec, spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/team/{{ .PodMeta.Labels }}" } });
    expect(await untilStatus("payments-apps", (s) => s.entryRenderFailures === 1)).toEqual({ namespacesSelected: 1, podsSelected: 1, entriesCreated: 1, entryRenderFailures: 1, entryFailures: 0 });
    const still = (await entries()).find((e) => e.id === kept.id);
    expect([still?.spiffeId, still?.revision]).toEqual([kept.spiffeId, kept.revision]);
    api.putClusterSpiffeId({ metadata: { name: "payments-apps" }, spec: validSpec });
    await untilStatus("payments-apps", (s) => s.entryRenderFailures === 0);
    expect(owned(await entries()).map((e) => e.id).sort()).toEqual(before);
  }, 60_000);

  it("a deleted pod's entries are removed; the operator's entry is never touched", async () => {
    api.deletePod(API_POD.namespace, API_POD.name);
    const list = await until("the api pod's entries gone", (l) => !owned(l).some((e) => sel(e).includes(`k8s:pod-uid:${API_POD.uid}`)));
    expect(owned(list).map((e) => e.spiffeId)).toEqual([`spiffe://${TD}/ns/web/sa/web`]);
    const mine = list.find((e) => e.id === operatorEntryId);
    expect(mine?.revision).toBe(0n);
    expect(sel(mine as Entry)).toEqual(["k8s:ns:payments", "k8s:sa:api"]);
    await untilStatus("payments-apps", (s) => s.podsSelected === 0 && s.entriesCreated === 0);
  }, 60_000);

  it("a restarted server neither duplicates nor deletes the controller's entries, and follows changes made while it was down", async () => {
    api.putPod(API_POD);
    const before = await until("the api pod's entries back", (l) => owned(l).length === 3);
    await (srv as ServerProcess).stop({ keepDir: true });
    srv = undefined;
    // While the server is down: one more pod.
    const late = pod("late-1", "web", "web", { app: "web" }, "e5e5e5e5-0000-4000-8000-000000000005");
    api.putPod(late);
    srv = await startServer();
    const after = await until("the late pod's entry", (l) => owned(l).some((e) => sel(e).includes(`k8s:pod-uid:${late.uid}`)));
    const kept = owned(after).filter((e) => !sel(e).includes(`k8s:pod-uid:${late.uid}`));
    // Same IDs, unchanged (revision), nothing twice.
    expect(kept.map((e) => [e.id, e.revision]).sort()).toEqual(owned(before).map((e) => [e.id, e.revision]).sort());
    expect(new Set(after.map((e) => `${e.spiffeId} ${sel(e).join(",")}`)).size).toBe(after.length);
    expect(after.find((e) => e.id === operatorEntryId)?.revision).toBe(0n);
  }, 90_000);
});

describe.skipIf(!haveOpenssl)("k8s registration controller as its own process", () => {
  let dir2 = "";
  let api2: FakeKubeApi;
  let server: ServerProcess | undefined;

  beforeAll(async () => {
    api2 = await startFakeKubeApi();
    api2.putNode(EXAMPLE_NODE);
    api2.putNamespace({ name: "payments", labels: { team: "pay" } });
    dir2 = mkdtempSync(path.join(tmpdir(), "sigil-k8s-controller-process-it-"));
    const kubeconfig = api2.writeKubeconfig(dir2);
    const config = path.join(dir2, "server.yaml");
    writeFileSync(
      config,
      testServerConfigYaml(dir2, {
        extraYaml: `    k8s_psat:
      clusters:
        prod:
          service_account_allow_list: ["sigil:sigil-agent"]
          kube_config_file: ${JSON.stringify(kubeconfig)}
k8s_controller:
  enabled: false
  cluster: prod
  resync_interval: 1s
`,
      }),
    );
    server = await launchServerProcess(dir2, config, path.join(dir2, "admin", "api.sock"));
  }, 90_000);

  afterAll(async () => {
    await server?.stop({ keepDir: true });
    await api2?.close();
    if (dir2) rmSync(dir2, { recursive: true, force: true });
  });

  it("registers pods through the admin socket, reports status, removes entries of deleted pods, and stops on SIGTERM", async () => {
    const s = server as ServerProcess;
    const child = spawn(process.execPath, [...SERVER_CLI, "k8s-controller", "--config", s.configPath], { cwd: path.resolve(import.meta.dirname, "../.."), stdio: ["ignore", "pipe", "pipe"] });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    try {
      const log = followJsonLog(child);
      await log.waitForLog((r) => r.msg === "k8s controller process started", 30_000, "controller start");
      api2.putPod(API_POD);
      api2.putClusterSpiffeId({ metadata: { name: "apps" }, spec: { spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/app/{{ index .PodMeta.Labels "app" }}' } });
      const listEntries = async (): Promise<Entry[]> => {
        const c = createUnaryClient(EntryAdmin, `unix:${s.socketPath}`, credentials.createInsecure());
        try {
          return (await c.listEntries({ pageSize: 1000 })).entries;
        } finally {
          c.close();
        }
      };
      const end = Date.now() + 30_000;
      let list = await listEntries();
      while (owned(list).length < 2 && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 200));
        list = await listEntries();
      }
      expect(owned(list).map((e) => e.spiffeId).sort()).toEqual([`spiffe://${TD}/app/api`, `spiffe://${TD}/ns/payments/sa/api`]);
      expect(owned(list).every((e) => e.parentId === AGENT_ID)).toBe(true);
      const statusEnd = Date.now() + 30_000;
      while ((api2.clusterSpiffeId("apps")?.status as { stats?: { entriesCreated?: number } } | undefined)?.stats?.entriesCreated !== 1 && Date.now() < statusEnd) await new Promise((r) => setTimeout(r, 100));
      expect((api2.clusterSpiffeId("apps")?.status as { stats?: unknown }).stats).toEqual({ namespacesSelected: 1, podsSelected: 1, entriesCreated: 1, entryRenderFailures: 0, entryFailures: 0 });

      api2.deletePod(API_POD.namespace, API_POD.name);
      const goneEnd = Date.now() + 30_000;
      while (owned(list).length > 0 && Date.now() < goneEnd) {
        await new Promise((r) => setTimeout(r, 200));
        list = await listEntries();
      }
      expect(owned(list)).toEqual([]);
    } finally {
      if (child.exitCode === null) child.kill("SIGTERM");
    }
    expect(await exited).toBe(0);
  }, 90_000);
});
