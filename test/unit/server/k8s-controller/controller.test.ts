/**
 * The controller's reconciliation on a real SQLite datastore with a cluster
 * view given by the test: nothing happens before the view is synced, entries
 * of others are never touched (even one with the same selectors), className
 * and ignored namespaces filter, refused entries are counted in status, and a
 * second reconciliation of an unchanged cluster writes nothing.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { V1EndpointSlice, V1Namespace, V1Node, V1Pod } from "@kubernetes/client-node";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { systemClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import { parseSelector } from "../../../../common/selector.js";
import { createParentResolver } from "../../../../server/api/parent-resolver.js";
import { createSqliteDatastore, type Datastore } from "../../../../server/datastore/index.js";
import { entryIdFor, type ClusterSpiffeIdObject, type ClusterSpiffeIdStats } from "../../../../server/k8s-controller/cluster-spiffe-id.js";
import { K8sController, type K8sControllerSettings } from "../../../../server/k8s-controller/controller.js";
import { datastoreEntryStore } from "../../../../server/k8s-controller/entry-store.js";
import type { KubeWatch } from "../../../../server/k8s-controller/kube-watch.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";

const TD = parseTrustDomain("example.org");
const NODE: V1Node = { metadata: { name: "worker-1", uid: "node-uid-1" } };
const AGENT = "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-1";
const log = createLogger({ level: "error", destination: { write: () => undefined } });
const settings: K8sControllerSettings = {
  cluster: "prod",
  className: "",
  defaultClusterSpiffeId: true,
  resyncIntervalMs: 3_600_000,
  ignoreNamespaces: ["kube-system"],
  entryIdPrefix: "k8s.prod.",
  clusterDomain: "cluster.local",
};

const pod = (ns: string, name: string, uid: string, labels: Record<string, string> = {}): V1Pod => ({
  metadata: { namespace: ns, name, uid, labels },
  spec: { containers: [], serviceAccountName: "sa", nodeName: NODE.metadata?.name ?? "" },
  status: { phase: "Running" },
});

/** A cluster view the test edits directly. */
class View implements KubeWatch {
  synced = true;
  crdMissing = false;
  podList: V1Pod[] = [];
  nsList: V1Namespace[] = [{ metadata: { name: "web" } }, { metadata: { name: "kube-system" } }];
  crs: ClusterSpiffeIdObject[] = [];
  statuses = new Map<string, ClusterSpiffeIdStats>();
  pods = () => this.podList;
  namespace = (name: string) => this.nsList.find((n) => n.metadata?.name === name);
  namespaces = () => this.nsList;
  node = (name: string) => (name === NODE.metadata?.name ? NODE : undefined);
  clusterSpiffeIds = () => this.crs;
  /** EndpointSlices; `undefined` imitates a list not answered yet. */
  slices: V1EndpointSlice[] | undefined = [];
  slicesFollowed = false;
  followEndpointSlices = (on: boolean) => void (this.slicesFollowed = on);
  endpointSlices = () => (this.slicesFollowed ? this.slices : undefined);
  putStatus = async (obj: ClusterSpiffeIdObject, stats: ClusterSpiffeIdStats) => void this.statuses.set(obj.metadata?.name ?? "", stats);
  stop = async () => undefined;
}

let dir: string;
let ds: Datastore;
let view: View;
let controller: K8sController;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "sigil-k8s-controller-"));
  ds = await createSqliteDatastore({ path: join(dir, "ds.sqlite3"), clock: systemClock });
  view = new View();
  const parents = createParentResolver({ datastore: ds, now: () => new Date(), issuesAgentId: (id) => id === AGENT });
  controller = new K8sController({
    settings,
    trustDomain: TD,
    entries: datastoreEntryStore({ datastore: () => ds, trustDomain: TD, serverId: "spiffe://example.org/spire/server", parents: () => parents }),
    log,
    kubeWatch: async () => view,
  });
  await controller.start();
});

afterEach(async () => {
  await controller.stop();
  await ds.close();
  rmSync(dir, { recursive: true, force: true });
});

const ids = async (): Promise<string[]> => (await ds.listEntries({})).items.map((e) => e.spiffeId).sort();

describe("K8sController.reconcile", () => {
  it("does nothing before the cluster is listed, so a controller started without the API deletes nothing", async () => {
    await ds.createEntry({ id: entryIdFor("k8s.prod.", "gone", "uid-gone"), spiffeId: "spiffe://example.org/ns/web/sa/gone", parentId: AGENT, selectors: [parseSelector("k8s:ns:web")] });
    view.synced = false;
    expect(await controller.reconcile()).toBeUndefined();
    expect(await ids()).toEqual(["spiffe://example.org/ns/web/sa/gone"]);
    view.synced = true;
    expect(await controller.reconcile()).toEqual({ created: 0, updated: 0, deleted: 1, failed: 0 });
    expect(await ids()).toEqual([]);
  });

  it("never reads, changes or deletes an entry without the prefix, even one identical to its own", async () => {
    const p = pod("web", "a", "uid-a");
    const theirs = await ds.createEntry({ spiffeId: "spiffe://example.org/ns/web/sa/sa", parentId: AGENT, selectors: [parseSelector("k8s:ns:web"), parseSelector("k8s:pod-uid:uid-a")] });
    const alias = await ds.createEntry({ id: "k8s-prod-lookalike", spiffeId: "spiffe://example.org/x", parentId: AGENT, selectors: [parseSelector("k8s:ns:web")] });
    view.podList = [p];
    // Identical to the operator's: the datastore refuses the duplicate, and the failure is the controller's.
    expect(await controller.reconcile()).toMatchObject({ created: 0, deleted: 0 });
    view.podList = [];
    await controller.reconcile();
    expect((await ds.getEntry(theirs.id))?.revision).toBe(0);
    expect((await ds.getEntry(alias.id))?.revision).toBe(0);
  });

  it("owns only its prefix followed by its own digest: never another cluster's whose prefix extends it, nor an operator's ID that merely starts with it", async () => {
    // Cluster "prod.eu" (a valid k8s_psat cluster name) has the default prefix "k8s.prod.eu.", which starts with "k8s.prod.".
    const otherCluster = await ds.createEntry({
      id: entryIdFor("k8s.prod.eu.", "(default)", "uid-eu"),
      spiffeId: "spiffe://example.org/ns/web/sa/eu",
      parentId: AGENT,
      selectors: [parseSelector("k8s:ns:web"), parseSelector("k8s:pod-uid:uid-eu")],
    });
    const handMade = await ds.createEntry({ id: "k8s.prod.web-frontend", spiffeId: "spiffe://example.org/hand/made", parentId: AGENT, selectors: [parseSelector("k8s:ns:web")] });
    view.podList = [pod("web", "a", "uid-a")];
    expect(await controller.reconcile()).toEqual({ created: 1, updated: 0, deleted: 0, failed: 0 });
    view.podList = [];
    expect(await controller.reconcile()).toEqual({ created: 0, updated: 0, deleted: 1, failed: 0 });
    expect((await ds.getEntry(otherCluster.id))?.revision).toBe(0);
    expect((await ds.getEntry(handMade.id))?.revision).toBe(0);
  });

  it("reconciles only its className, skips ignored namespaces, and writes nothing when nothing changed", async () => {
    view.podList = [pod("web", "a", "uid-a", { app: "a" }), pod("kube-system", "dns", "uid-dns", { app: "dns" })];
    view.crs = [
      { metadata: { name: "mine", resourceVersion: "1", generation: 1 }, spec: { spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/app/{{ index .PodMeta.Labels "app" }}' } },
      { metadata: { name: "other-class", resourceVersion: "1", generation: 1 }, spec: { className: "other", spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/other" } },
    ];
    expect(await controller.reconcile()).toEqual({ created: 2, updated: 0, deleted: 0, failed: 0 });
    expect(await ids()).toEqual(["spiffe://example.org/app/a", "spiffe://example.org/ns/web/sa/sa"]);
    expect(view.statuses.get("mine")).toEqual({ namespacesSelected: 1, podsSelected: 1, entriesCreated: 1, entryRenderFailures: 0, entryFailures: 0 });
    expect(view.statuses.has("other-class")).toBe(false);
    expect(await controller.reconcile()).toEqual({ created: 0, updated: 0, deleted: 0, failed: 0 });
  });

  it("counts entries the server refuses in entryFailures (a federated trust domain without a bundle) and creates the rest", async () => {
    view.podList = [pod("web", "a", "uid-a")];
    view.crs = [{ metadata: { name: "fed", resourceVersion: "1" }, spec: { spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/fed/{{ .PodMeta.Name }}", federatesWith: ["partner.example"] } }];
    expect(await controller.reconcile()).toEqual({ created: 1, updated: 0, deleted: 0, failed: 1 });
    expect(view.statuses.get("fed")).toEqual({ namespacesSelected: 1, podsSelected: 1, entriesCreated: 0, entryRenderFailures: 0, entryFailures: 1 });
    expect(await ids()).toEqual(["spiffe://example.org/ns/web/sa/sa"]);
  });

  it("an annotation steering the ID into /spire (an agent's, the server's, /spire itself) is refused like an operator's entry", async () => {
    const annotated = (uid: string, path: string): V1Pod => ({ ...pod("web", uid, uid), metadata: { namespace: "web", name: uid, uid, annotations: { path } } });
    view.podList = [annotated("uid-1", "spire/agent/k8s_psat/prod/node-uid-1"), annotated("uid-2", "spire/server"), annotated("uid-3", "spire"), annotated("uid-4", "ok/two")];
    view.crs = [{ metadata: { name: "free", resourceVersion: "1" }, spec: { spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/{{ index .PodMeta.Annotations "path" }}' } }];
    await controller.reconcile();
    expect((await ids()).filter((id) => !id.includes("/ns/"))).toEqual(["spiffe://example.org/ok/two"]);
    expect(view.statuses.get("free")).toMatchObject({ podsSelected: 4, entriesCreated: 1, entryFailures: 3 });
  });

  it("an entry whose update the server refuses is deleted, not frozen: a tenant cannot pin a privilege the rule later drops", async () => {
    const rule = (admin: boolean): ClusterSpiffeIdObject => ({
      metadata: { name: "ops", resourceVersion: admin ? "1" : "2" },
      spec: { spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/ops/{{ .PodMeta.Name }}", dnsNameTemplates: ['{{ index .PodMeta.Labels "app" }}.web.svc'], admin },
    });
    const opsEntries = async () => (await ds.listEntries({})).items.filter((e) => e.spiffeId.includes("/ops/"));
    view.podList = [pod("web", "a", "uid-a", { app: "api" })];
    view.crs = [rule(true)];
    await controller.reconcile();
    expect((await opsEntries()).map((e) => [e.admin, e.dnsNames])).toEqual([[true, ["api.web.svc"]]]);
    // A valid label value, but "a_b.web.svc" is no DNS name: the update is refused.
    view.podList = [pod("web", "a", "uid-a", { app: "a_b" })];
    expect(await controller.reconcile()).toMatchObject({ failed: 1 });
    view.crs = [rule(false)];
    await controller.reconcile();
    expect(await opsEntries()).toEqual([]);
    expect(view.statuses.get("ops")).toMatchObject({ podsSelected: 1, entriesCreated: 0, entryFailures: 1 });
    // Fixed: created again, as the rule now says.
    view.podList = [pod("web", "a", "uid-a", { app: "api" })];
    await controller.reconcile();
    expect((await opsEntries()).map((e) => e.admin)).toEqual([false]);
  });

  it("while the ClusterSPIFFEID CRD answers 404, keeps the resources' entries of live pods (a warming API server), and still deletes those of pods gone", async () => {
    view.podList = [pod("web", "a", "uid-a"), pod("web", "b", "uid-b")];
    view.crs = [{ metadata: { name: "apps", resourceVersion: "1" }, spec: { spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/app/{{ .PodMeta.Name }}" } }];
    await controller.reconcile();
    expect(await ids()).toEqual(["spiffe://example.org/app/a", "spiffe://example.org/app/b", "spiffe://example.org/ns/web/sa/sa", "spiffe://example.org/ns/web/sa/sa"]);
    view.crs = [];
    view.crdMissing = true;
    view.podList = [pod("web", "a", "uid-a")];
    expect(await controller.reconcile()).toEqual({ created: 0, updated: 0, deleted: 2, failed: 0 });
    expect(await ids()).toEqual(["spiffe://example.org/app/a", "spiffe://example.org/ns/web/sa/sa"]);
    // Served again, without the resource: its entries go.
    view.crdMissing = false;
    expect(await controller.reconcile()).toEqual({ created: 0, updated: 0, deleted: 1, failed: 0 });
    expect(await ids()).toEqual(["spiffe://example.org/ns/web/sa/sa"]);
  });

  it("autoPopulateDNSNames: follows EndpointSlices only while a rule asks, keeps the rule's entries until they are listed, then adds and removes Service names", async () => {
    const svcSlice = (service: string, uids: string[]): V1EndpointSlice => ({
      addressType: "IPv4",
      metadata: { namespace: "web", name: `${service}-x1`, labels: { "kubernetes.io/service-name": service } },
      endpoints: uids.map((uid, i) => ({ addresses: [`10.0.0.${i + 1}`], conditions: { ready: i === 0 }, targetRef: { kind: "Pod", namespace: "web", name: uid, uid } })),
    });
    const rule = (auto: boolean, rv: string): ClusterSpiffeIdObject => ({
      metadata: { name: "svc", resourceVersion: rv },
      spec: { spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/svc/{{ .PodMeta.Name }}", dnsNameTemplates: ["{{ .PodMeta.Name }}.pods.example"], autoPopulateDNSNames: auto },
    });
    const dns = async (): Promise<Record<string, readonly string[]>> =>
      Object.fromEntries((await ds.listEntries({})).items.filter((e) => e.spiffeId.includes("/svc/")).map((e) => [e.spiffeId.slice("spiffe://example.org/svc/".length), e.dnsNames]));
    view.podList = [pod("web", "a", "uid-a"), pod("web", "b", "uid-b")];
    view.slices = [svcSlice("api", ["uid-a", "uid-b"]), svcSlice("admin", ["uid-b"])];

    // Without the field nothing is followed and the names are the templates'.
    view.crs = [rule(false, "1")];
    await controller.reconcile();
    expect(view.slicesFollowed).toBe(false);
    expect(await dns()).toEqual({ a: ["a.pods.example"], b: ["b.pods.example"] });

    // Asked for, but the slices are not listed yet: the entries stay as they are.
    view.crs = [rule(true, "2")];
    const listed = view.slices;
    view.slices = undefined;
    expect(await controller.reconcile()).toEqual({ created: 0, updated: 0, deleted: 0, failed: 0 });
    expect(view.slicesFollowed).toBe(true);
    expect(view.statuses.get("svc")).toMatchObject({ podsSelected: 2, entriesCreated: 2 });
    view.slices = listed;
    expect(await controller.reconcile()).toMatchObject({ updated: 2 });
    expect(await dns()).toEqual({
      a: ["a.pods.example", "api", "api.web", "api.web.svc", "api.web.svc.cluster.local"],
      b: ["b.pods.example", "admin", "admin.web", "admin.web.svc", "admin.web.svc.cluster.local", "api", "api.web", "api.web.svc", "api.web.svc.cluster.local"],
    });
    // The default rule is not affected.
    expect((await ds.listEntries({})).items.filter((e) => e.spiffeId.includes("/ns/")).map((e) => e.dnsNames)).toEqual([[], []]);

    // b leaves the api Service: only its entry changes.
    view.slices = [svcSlice("api", ["uid-a"]), svcSlice("admin", ["uid-b"])];
    expect(await controller.reconcile()).toEqual({ created: 0, updated: 1, deleted: 0, failed: 0 });
    expect((await dns()).b).toEqual(["b.pods.example", "admin", "admin.web", "admin.web.svc", "admin.web.svc.cluster.local"]);

    // Hand-written slices whose Service label is no Service name (a label value may hold dots) give nothing:
    // neither a name outside the namespace's forms nor a refused entry.
    view.slices = [svcSlice("api", ["uid-a"]), svcSlice("admin_x", ["uid-b"]), svcSlice("kubernetes.default.svc", ["uid-b"]), svcSlice("admin", ["uid-b"])];
    expect(await controller.reconcile()).toEqual({ created: 0, updated: 0, deleted: 0, failed: 0 });
    expect(view.statuses.get("svc")).toMatchObject({ podsSelected: 2, entriesCreated: 2, entryFailures: 0 });
    expect((await dns()).b).toEqual(["b.pods.example", "admin", "admin.web", "admin.web.svc", "admin.web.svc.cluster.local"]);

    // Too many Services for one pod: a render failure for that pod alone, named in status.
    view.slices = [svcSlice("api", ["uid-a"]), ...Array.from({ length: 65 }, (_, i) => svcSlice(`s${i}`, ["uid-b"]))];
    await controller.reconcile();
    expect(view.statuses.get("svc")).toMatchObject({ podsSelected: 2, entriesCreated: 1, entryRenderFailures: 1, entryFailures: 0 });
    expect(Object.keys(await dns())).toEqual(["a"]);

    // The field turned off: the slices are no longer followed and the names go.
    view.crs = [rule(false, "3")];
    await controller.reconcile();
    expect(view.slicesFollowed).toBe(false);
    expect(await dns()).toEqual({ a: ["a.pods.example"], b: ["b.pods.example"] });
  });

  it("updates an owned entry someone edited back to what the rule says", async () => {
    view.podList = [pod("web", "a", "uid-a")];
    await controller.reconcile();
    const [entry] = (await ds.listEntries({})).items;
    await ds.updateEntry(entry?.id ?? "", { hint: "edited" });
    expect(await controller.reconcile()).toEqual({ created: 0, updated: 1, deleted: 0, failed: 0 });
    expect((await ds.getEntry(entry?.id ?? ""))?.hint).toBe("");
  });
});

describe("K8sController pacing", () => {
  it("pauses after each reconciliation at least as long as it took, so a stream of pod changes cannot keep the server busy", async () => {
    let onChange: (() => void) | undefined;
    const runs: Array<{ start: number; end: number }> = [];
    const inner = datastoreEntryStore({ datastore: () => ds, trustDomain: TD, serverId: "spiffe://example.org/spire/server", parents: () => createParentResolver({ datastore: ds, now: () => new Date() }) });
    const slow = new K8sController({
      settings,
      trustDomain: TD,
      entries: {
        ...inner,
        async listOwned(prefix) {
          runs.push({ start: Date.now(), end: 0 });
          // A large cluster's reconciliation.
          await new Promise((r) => setTimeout(r, 150));
          return inner.listOwned(prefix);
        },
      },
      log,
      kubeWatch: async (opts) => ((onChange = opts.onChange), view),
    });
    slow.onReconciled = () => void ((runs.at(-1) as { end: number }).end = Date.now());
    await slow.start();
    const churn = setInterval(() => onChange?.(), 5);
    await new Promise((r) => setTimeout(r, 1_500));
    clearInterval(churn);
    await slow.stop();
    const done = runs.filter((r) => r.end > 0);
    expect(done.length).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < done.length; i++) {
      const prev = done[i - 1] as { start: number; end: number };
      expect((done[i] as { start: number }).start - prev.end).toBeGreaterThanOrEqual(0.9 * (prev.end - prev.start));
    }
  });
});
