/**
 * The controller's informers (real @kubernetes/client-node ListWatch) against
 * the wire-format fake API: one list per resource, then watch events; a
 * dropped stream resumes from the last resourceVersion without a list; a
 * too-old resourceVersion (410) lists again; a missing CRD leaves the view
 * usable; status writes are conditional; stop() ends every stream; changes
 * the controller does not read start nothing; a stream that hangs is ended
 * after its timeout; a CRD 404 on a relist keeps the resources held.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { startKubeWatch, type KubeWatch } from "../../../../server/k8s-controller/kube-watch.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { EXAMPLE_NODE, startFakeKubeApi, type FakeKubeApi, type FakePod } from "../../../support/kube-api.js";
import { requireTool } from "../../../support/tools.js";

const haveOpenssl = requireTool("openssl", ["version"], "the fake API server's certificate");
const log = createLogger({ level: "error", destination: { write: () => undefined } });

const pod = (i: number): FakePod => ({ namespace: "web", name: `web-${i}`, uid: `00000000-0000-4000-8000-00000000000${i}`, serviceAccountName: "web", nodeName: EXAMPLE_NODE.name, hostIP: "192.0.2.11" });

let api: FakeKubeApi;
let watch: KubeWatch | undefined;
let kubeconfig: string;
let changes = 0;
let dir = "";

async function until(what: string, check: () => boolean): Promise<void> {
  const end = Date.now() + 15_000;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const podNames = (): string[] => (watch as KubeWatch).pods().map((p) => p.metadata?.name ?? "").sort();

describe.skipIf(!haveOpenssl)("startKubeWatch", () => {
  beforeEach(async () => {
    api = await startFakeKubeApi();
    api.putNode(EXAMPLE_NODE);
    api.putNamespace({ name: "web", labels: { team: "web" } });
    api.putPod(pod(1));
    dir = mkdtempSync(join(tmpdir(), "sigil-kube-watch-"));
    kubeconfig = api.writeKubeconfig(dir);
    changes = 0;
  });

  afterEach(async () => {
    await watch?.stop();
    watch = undefined;
    await api.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const start = async (): Promise<KubeWatch> => {
    watch = await startKubeWatch({ kubeConfigFile: kubeconfig, onChange: () => changes++, log });
    await until("the first lists and four open watches", () => watch?.synced === true && api.openWatches() === 4);
    return watch;
  };

  it("lists each resource once, then follows watch events", async () => {
    const w = await start();
    expect(podNames()).toEqual(["web-1"]);
    expect(w.node(EXAMPLE_NODE.name)?.metadata?.uid).toBe(EXAMPLE_NODE.uid);
    expect(w.namespace("web")?.metadata?.labels?.team).toBe("web");
    api.putPod(pod(2));
    api.putNamespace({ name: "web", labels: { team: "other" } });
    api.putClusterSpiffeId({ metadata: { name: "r1" }, spec: { spiffeIDTemplate: "spiffe://example.org/a" } });
    await until("the watch events", () => podNames().length === 2 && w.namespace("web")?.metadata?.labels?.team === "other" && w.clusterSpiffeIds().length === 1);
    api.deletePod("web", "web-1");
    await until("the deletion", () => podNames().join() === "web-2");
    expect(changes).toBeGreaterThan(0);
    expect(api.listWatchRequests.filter((r) => !r.watch)).toHaveLength(4);
  });

  it("starts no reconciliation for a change the controller does not read (a pod's or node's status)", async () => {
    const w = await start();
    const before = changes;
    // Written again unchanged (a new resourceVersion, as a status update gives): ignored; then a new pod on the same stream.
    api.putPod(pod(1));
    api.putPod(pod(2));
    await until("the new pod", () => podNames().length === 2);
    expect(changes - before).toBe(1);
    const other = { name: "worker-2", uid: "22222222-0000-4000-8000-000000000000" };
    api.putNode(EXAMPLE_NODE);
    api.putNode(other);
    await until("the new node", () => w.node("worker-2") !== undefined);
    expect(changes - before).toBe(2);
  });

  it("resumes a dropped watch from its resourceVersion without listing, and lists again after 410 Gone", async () => {
    await start();
    const lists = (): number => api.listWatchRequests.filter((r) => !r.watch && r.path === "/api/v1/pods").length;
    api.dropWatches();
    api.putPod(pod(2));
    await until("the pod put while the stream was down", () => podNames().length === 2);
    expect(lists()).toBe(1);
    const resumed = api.listWatchRequests.filter((r) => r.watch && r.path === "/api/v1/pods").at(-1);
    expect(Number(resumed?.resourceVersion)).toBeGreaterThan(0);

    await until("the watches open again", () => api.openWatches() === 4);
    api.putPod(pod(3));
    api.deletePod("web", "web-1");
    api.compactWatchHistory();
    api.dropWatches();
    await until("a list after 410", () => lists() === 2 && podNames().join() === "web-2,web-3");
  });

  it("without the ClusterSPIFFEID CRD the view still syncs, with no resources", async () => {
    api.setCrdInstalled(false);
    watch = await startKubeWatch({ kubeConfigFile: kubeconfig, onChange: () => changes++, log });
    await until("synced", () => watch?.synced === true);
    expect(watch.clusterSpiffeIds()).toEqual([]);
    expect(podNames()).toEqual(["web-1"]);
  });

  it("gives up on a watch stream that stays open past its timeoutSeconds with nothing on it, and resumes from its resourceVersion", async () => {
    watch = await startKubeWatch({ kubeConfigFile: kubeconfig, onChange: () => changes++, log, watchTimeoutMs: 1_000 });
    await until("the first lists and four open watches", () => watch?.synced === true && api.openWatches() === 4);
    expect(api.listWatchRequests.filter((r) => r.watch).every((r) => r.timeoutSeconds === "1")).toBe(true);
    api.stallWatches();
    api.putPod(pod(2));
    await until("the pod put while the stream hung", () => podNames().length === 2);
    expect(api.listWatchRequests.filter((r) => !r.watch && r.path === "/api/v1/pods")).toHaveLength(1);
  });

  it("a CRD path answering 404 on a list after resources were seen (an API server warming up after a 410) keeps them until a list succeeds", async () => {
    const w = await start();
    api.putClusterSpiffeId({ metadata: { name: "r1" }, spec: { spiffeIDTemplate: "spiffe://example.org/a" } });
    await until("the resource", () => w.clusterSpiffeIds().length === 1);
    const crLists = (): number => api.listWatchRequests.filter((r) => !r.watch && r.path.endsWith("/clusterspiffeids")).length;
    const before = crLists();
    api.expireWatches();
    await new Promise((r) => setTimeout(r, 100));
    api.setCrdInstalled(false);
    api.dropWatches();
    // The relist is refused (404, not recorded); wait past the first backoff's retry too.
    await new Promise((r) => setTimeout(r, 1_500));
    expect(w.clusterSpiffeIds().map((c) => c.metadata?.name)).toEqual(["r1"]);
    api.setCrdInstalled(true);
    await until("a successful list", () => crLists() > before && api.openWatches() === 4);
    expect(w.clusterSpiffeIds().map((c) => c.metadata?.name)).toEqual(["r1"]);
  });

  it("writes status conditionally on the resourceVersion, and stop() ends every stream", async () => {
    const w = await start();
    api.putClusterSpiffeId({ metadata: { name: "r1" }, spec: { spiffeIDTemplate: "spiffe://example.org/a" } });
    await until("the resource", () => w.clusterSpiffeIds().length === 1);
    const seen = w.clusterSpiffeIds()[0] as NonNullable<ReturnType<KubeWatch["clusterSpiffeIds"]>[number]>;
    const stats = { namespacesSelected: 1, podsSelected: 1, entriesCreated: 1, entryRenderFailures: 0, entryFailures: 0 };
    await w.putStatus(seen, stats);
    expect(api.clusterSpiffeId("r1")?.status).toEqual({ observedGeneration: 1, stats });
    // The same (now stale) object again: 409 Conflict.
    await expect(w.putStatus(seen, { ...stats, podsSelected: 2 })).rejects.toMatchObject({ code: 409 });
    expect(api.clusterSpiffeId("r1")?.status).toEqual({ observedGeneration: 1, stats });
    await w.stop();
    watch = undefined;
    await until("no open watch", () => api.openWatches() === 0);
  });

  it("lists and watches EndpointSlices only while asked to; a readiness flip starts no reconciliation; stopping forgets them", async () => {
    const slicePath = "/apis/discovery.k8s.io/v1/endpointslices";
    const sliceRequests = () => api.listWatchRequests.filter((r) => r.path === slicePath);
    const w = await start();
    const member = { addresses: ["10.244.0.1"], pod: { name: "web-1", uid: pod(1).uid } };
    api.putEndpointSlice({ namespace: "web", name: "web-abc", service: "web", endpoints: [member] });
    expect(w.endpointSlices()).toBeUndefined();
    expect(sliceRequests()).toEqual([]);

    w.followEndpointSlices(true);
    w.followEndpointSlices(true);
    await until("the slices listed and watched", () => w.endpointSlices()?.length === 1 && api.openWatches() === 5);
    expect(sliceRequests().filter((r) => !r.watch)).toHaveLength(1);
    expect(w.synced).toBe(true);
    const slice = w.endpointSlices()?.[0];
    expect([slice?.metadata?.labels?.["kubernetes.io/service-name"], slice?.endpoints?.[0]?.targetRef?.uid]).toEqual(["web", pod(1).uid]);

    let before = changes;
    api.putEndpointSlice({ namespace: "web", name: "web-abc", service: "web", endpoints: [{ ...member, ready: false }] });
    api.putEndpointSlice({ namespace: "web", name: "web-abc", service: "web", endpoints: [] });
    await until("the emptied slice", () => w.endpointSlices()?.[0]?.endpoints?.length === 0);
    expect(changes - before).toBe(1);

    w.followEndpointSlices(false);
    expect(w.endpointSlices()).toBeUndefined();
    await until("the slice watch closed", () => api.openWatches() === 4);
    before = changes;
    api.putEndpointSlice({ namespace: "web", name: "web-abc", service: "web", endpoints: [member] });
    await new Promise((r) => setTimeout(r, 200));
    expect(changes).toBe(before);
  });

  it("EndpointSlices: a dropped watch resumes, and after 410 Gone they are listed again, dropping a slice deleted meanwhile", async () => {
    const slicePath = "/apis/discovery.k8s.io/v1/endpointslices";
    const lists = (): number => api.listWatchRequests.filter((r) => !r.watch && r.path === slicePath).length;
    const services = (): string => (watch?.endpointSlices() ?? []).map((s) => s.metadata?.labels?.["kubernetes.io/service-name"] ?? "").sort().join();
    const w = await start();
    api.putEndpointSlice({ namespace: "web", name: "a-1", service: "a", endpoints: [{ addresses: ["10.244.0.1"] }] });
    w.followEndpointSlices(true);
    await until("the slices listed and watched", () => services() === "a" && api.openWatches() === 5);
    expect(api.listWatchRequests.filter((r) => r.watch && r.path === slicePath).at(-1)?.timeoutSeconds).toBe("300");

    api.dropWatches();
    api.putEndpointSlice({ namespace: "web", name: "b-1", service: "b", endpoints: [{ addresses: ["10.244.0.2"] }] });
    await until("the slice put while the stream was down", () => services() === "a,b");
    expect(lists()).toBe(1);

    await until("the watches open again", () => api.openWatches() === 5);
    api.deleteEndpointSlice("web", "a-1");
    api.putEndpointSlice({ namespace: "web", name: "c-1", service: "c", endpoints: [{ addresses: ["10.244.0.3"] }] });
    api.compactWatchHistory();
    api.dropWatches();
    await until("a list after 410", () => lists() === 2 && services() === "b,c");
  });

  it("refuses a kubeconfig it cannot load", async () => {
    const err = await startKubeWatch({ kubeConfigFile: `${kubeconfig}.missing`, onChange: () => undefined, log }).catch((e: unknown) => e);
    expect(isSigilError(err, "ERR_FAILED_PRECONDITION")).toBe(true);
    expect((err as Error).message).toMatch(/^k8s controller: cannot load kubeconfig .*\.missing/);
  });
});
