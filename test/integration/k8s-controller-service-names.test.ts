/**
 * `autoPopulateDNSNames` end to end: a real `sigil-server` with
 * `k8s_controller` on, watching test/support/kube-api.ts. A ClusterSPIFFEID
 * without the field makes the controller touch no EndpointSlice; one with it
 * has the slices listed and watched, gives the pod a Service selects the
 * Service's four names after its template names, and takes them away when the
 * slice stops listing the pod; the other resource's entries never change.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import type { Entry } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { EXAMPLE_NODE, startFakeKubeApi, type FakeKubeApi, type FakePod } from "../support/kube-api.js";
import { requireTool } from "../support/tools.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";

const haveOpenssl = requireTool("openssl", ["version"], "the fake API server's certificate");

const TD = "example.org";
const SLICES = "/apis/discovery.k8s.io/v1/endpointslices";
const pod = (name: string, app: string, uid: string): FakePod => ({ namespace: "payments", name, uid, serviceAccountName: app, nodeName: EXAMPLE_NODE.name, hostIP: "192.0.2.11", labels: { app } });
const API_POD = pod("api-7d9f8-abcde", "api", "a1a1a1a1-0000-4000-8000-0000000000a1");
const WORKER_POD = pod("worker-5c4b3-fghij", "worker", "b2b2b2b2-0000-4000-8000-0000000000b2");
const SERVICE_NAMES = ["api", "api.payments", "api.payments.svc", "api.payments.svc.cluster.local"];

let api: FakeKubeApi;
let dir = "";
let srv: ServerProcess | undefined;

async function entries(): Promise<Entry[]> {
  const c = createUnaryClient(EntryAdmin, `unix:${(srv as ServerProcess).socketPath}`, credentials.createInsecure());
  try {
    return (await c.listEntries({ pageSize: 1000 })).entries;
  } finally {
    c.close();
  }
}

/** Polls the entries until `check` holds; returns the entries by SPIFFE ID. */
async function until(what: string, check: (byId: Map<string, Entry>) => boolean, timeoutMs = 30_000): Promise<Map<string, Entry>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const byId = new Map((await entries()).map((e) => [e.spiffeId, e]));
    if (check(byId)) return byId;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}; entries: ${JSON.stringify([...byId.values()].map((e) => [e.spiffeId, e.dnsNames]))}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const sliceOf = (pods: FakePod[]) => ({
  namespace: "payments",
  name: "api-x7k2p",
  service: "api",
  endpoints: pods.map((p, i) => ({ addresses: [`10.244.1.${i + 1}`], ready: i === 0, pod: { name: p.name, uid: p.uid } })),
});

describe.skipIf(!haveOpenssl)("k8s registration controller: autoPopulateDNSNames in a real server", () => {
  beforeAll(async () => {
    api = await startFakeKubeApi();
    api.putNode(EXAMPLE_NODE);
    api.putNamespace({ name: "payments", labels: { team: "pay" } });
    api.putPod(API_POD);
    api.putPod(WORKER_POD);
    // The api Service lists the api pod; the worker pod is in no Service.
    api.putEndpointSlice(sliceOf([API_POD]));
    api.putClusterSpiffeId({
      metadata: { name: "plain" },
      spec: { spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/plain/{{ .PodMeta.Name }}", dnsNameTemplates: ["{{ .PodMeta.Name }}.pods.example"] },
    });
    dir = mkdtempSync(path.join(tmpdir(), "sigil-k8s-svc-names-it-"));
    const kubeconfig = api.writeKubeconfig(dir);
    const configPath = path.join(dir, "server.yaml");
    writeFileSync(
      configPath,
      testServerConfigYaml(dir, {
        extraYaml: `    k8s_psat:
      clusters:
        prod:
          service_account_allow_list: ["sigil:sigil-agent"]
          kube_config_file: ${JSON.stringify(kubeconfig)}
k8s_controller:
  enabled: true
  cluster: prod
  default_cluster_spiffe_id: false
  resync_interval: 1s
`,
      }),
    );
    srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"));
  }, 90_000);

  afterAll(async () => {
    await srv?.stop({ keepDir: true });
    await api?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("a resource without autoPopulateDNSNames gets its template names only, and no EndpointSlice is requested", async () => {
    const byId = await until("the plain entries", (m) => m.has(`spiffe://${TD}/plain/${API_POD.name}`) && m.has(`spiffe://${TD}/plain/${WORKER_POD.name}`));
    expect(byId.get(`spiffe://${TD}/plain/${API_POD.name}`)?.dnsNames).toEqual([`${API_POD.name}.pods.example`]);
    // Two resyncs later still nothing asked of the EndpointSlice API.
    await new Promise((r) => setTimeout(r, 2_500));
    expect(api.listWatchRequests.filter((r) => r.path === SLICES)).toEqual([]);
  }, 60_000);

  it("with autoPopulateDNSNames the pod a Service selects gets the Service's names after its template names; the other pod and resource are unaffected", async () => {
    const plainBefore = new Map([...(await until("plain", () => true)).values()].filter((e) => e.spiffeId.includes("/plain/")).map((e) => [e.id, e.revision]));
    expect(plainBefore.size).toBe(2);
    api.putClusterSpiffeId({
      metadata: { name: "services" },
      spec: { spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/svc/{{ .PodMeta.Name }}", dnsNameTemplates: ["{{ .PodMeta.Name }}.pods.example"], autoPopulateDNSNames: true },
    });
    const byId = await until("the services entries", (m) => m.get(`spiffe://${TD}/svc/${API_POD.name}`)?.dnsNames.length === 5 && m.has(`spiffe://${TD}/svc/${WORKER_POD.name}`));
    expect(byId.get(`spiffe://${TD}/svc/${API_POD.name}`)?.dnsNames).toEqual([`${API_POD.name}.pods.example`, ...SERVICE_NAMES]);
    expect(byId.get(`spiffe://${TD}/svc/${WORKER_POD.name}`)?.dnsNames).toEqual([`${WORKER_POD.name}.pods.example`]);
    // Listed once, then watched.
    const requests = api.listWatchRequests.filter((r) => r.path === SLICES);
    expect(requests.filter((r) => !r.watch)).toHaveLength(1);
    expect(requests.some((r) => r.watch)).toBe(true);
    // The plain resource's entries were not rewritten.
    const plainAfter = new Map([...byId.values()].filter((e) => e.spiffeId.includes("/plain/")).map((e) => [e.id, e.revision]));
    expect(plainAfter).toEqual(plainBefore);
  }, 60_000);

  it("the worker pod joining the Service (not ready) gets the names; the api pod leaving it loses them, in the same entry", async () => {
    const before = await until("current", () => true);
    const apiEntry = before.get(`spiffe://${TD}/svc/${API_POD.name}`) as Entry;
    api.putEndpointSlice(sliceOf([API_POD, WORKER_POD]));
    await until("the worker's Service names", (m) => m.get(`spiffe://${TD}/svc/${WORKER_POD.name}`)?.dnsNames.length === 5);
    api.putEndpointSlice(sliceOf([WORKER_POD]));
    const after = await until("the api pod without Service names", (m) => m.get(`spiffe://${TD}/svc/${API_POD.name}`)?.dnsNames.length === 1);
    const updated = after.get(`spiffe://${TD}/svc/${API_POD.name}`) as Entry;
    expect(updated.id).toBe(apiEntry.id);
    expect(updated.dnsNames).toEqual([`${API_POD.name}.pods.example`]);
    expect(after.get(`spiffe://${TD}/svc/${WORKER_POD.name}`)?.dnsNames).toEqual([`${WORKER_POD.name}.pods.example`, ...SERVICE_NAMES]);
    expect(after.get(`spiffe://${TD}/plain/${API_POD.name}`)?.dnsNames).toEqual([`${API_POD.name}.pods.example`]);
    expect((api.clusterSpiffeId("services")?.status as { stats?: unknown } | undefined)?.stats).toMatchObject({ podsSelected: 2, entriesCreated: 2, entryFailures: 0 });
  }, 60_000);
});
