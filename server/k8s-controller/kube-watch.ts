/**
 * The controller's view of one cluster: pods, namespaces, nodes and
 * ClusterSPIFFEIDs (and, while a rule has `autoPopulateDNSNames`,
 * `discovery.k8s.io/v1` EndpointSlices), each kept by an informer of the real
 * `@kubernetes/client-node` (`ListWatch`: one list, then a watch stream that
 * resumes from the last resourceVersion), and the one write the controller
 * makes, a ClusterSPIFFEID's `status` (PUT on the status subresource).
 *
 * A 404 on the ClusterSPIFFEID list means no CRD only while no resource is
 * held: with resources held it is an error like any other (they are kept).
 *
 * `ListWatch` gives up after an error (it reports it and stops); this view
 * starts it again after a backoff (1 s doubling to 30 s), so an API server
 * that restarts or drops the stream is followed again without polling.
 * The library is loaded on first use (`plugins/kube-client.ts`, shared with
 * the Kubernetes plugins).
 */
import type { KubernetesObject, V1EndpointSlice, V1Namespace, V1Node, V1Pod } from "@kubernetes/client-node";
import type { Logger } from "../../common/log.js";
import { boundedCall, connectKube, httpStatusOf, type K8sModule } from "../../plugins/kube-client.js";
import { CLUSTER_SPIFFE_ID_GROUP, CLUSTER_SPIFFE_ID_PLURAL, CLUSTER_SPIFFE_ID_VERSION, type ClusterSpiffeIdObject, type ClusterSpiffeIdStats } from "./cluster-spiffe-id.js";

/** Longest a list or status call may take. */
const CALL_TIMEOUT_MS = 30_000;
const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;
/** Longest a watch stream is kept: the `timeoutSeconds` asked of the API server, then ended here after the grace. */
const WATCH_TIMEOUT_MS = 300_000;
const WATCH_GRACE_MS = 30_000;

/** Options of {@link startKubeWatch}. */
export interface KubeWatchOptions {
  /** A kubeconfig file (its current context); without one, the pod's in-cluster config. */
  readonly kubeConfigFile?: string | undefined;
  /** Called after every change to any cache (and after each one's first list). */
  readonly onChange: () => void;
  readonly log: Logger;
  /** Longest a watch stream is kept (default 5 min; tests shorten it); see {@link startKubeWatch}. */
  readonly watchTimeoutMs?: number;
}

/** What the controller reads and writes. */
export interface KubeWatch {
  /** True once all four resources have been listed at least once. */
  readonly synced: boolean;
  /**
   * True while the ClusterSPIFFEID list answers 404 and no resource is held
   * (the CRD is not installed, or not served yet).
   */
  readonly crdMissing?: boolean;
  pods(): V1Pod[];
  namespace(name: string): V1Namespace | undefined;
  namespaces(): V1Namespace[];
  node(name: string): V1Node | undefined;
  clusterSpiffeIds(): ClusterSpiffeIdObject[];
  /**
   * Starts (true) or stops (false) following EndpointSlices of every
   * namespace; calling it again with the same value does nothing. They are
   * followed only while some rule has `autoPopulateDNSNames`, so a cluster
   * without one pays for no EndpointSlice list or watch. Stopping forgets them.
   */
  followEndpointSlices(on: boolean): void;
  /** The EndpointSlices held: undefined unless followed and listed at least once. */
  endpointSlices(): V1EndpointSlice[] | undefined;
  /**
   * Replaces a ClusterSPIFFEID's `status` (the object's resourceVersion makes
   * it conditional; a conflict is left for the next reconciliation).
   */
  putStatus(obj: ClusterSpiffeIdObject, stats: ClusterSpiffeIdStats): Promise<void>;
  /** Stops every informer and pending restart. */
  stop(): Promise<void>;
}

/**
 * Reads the kubeconfig and starts the four informers; resolves without
 * waiting for their lists (see {@link KubeWatch.synced}).
 *
 * @throws SigilError `ERR_FAILED_PRECONDITION` when the kubeconfig cannot be loaded.
 */
export async function startKubeWatch(opts: KubeWatchOptions): Promise<KubeWatch> {
  const { k8s, config: kc } = await connectKube(opts.kubeConfigFile, "k8s controller");

  let stopped = false;
  const live = new Set<AbortController>();
  // Every request gets an agent of its own from the library; stop() destroys them, which ends a
  // watch whose response headers have not arrived yet (its AbortController is not handed out before).
  const agents = new Set<{ destroy(): void; sockets?: object; requests?: object }>();
  const created = kc as unknown as { createAgent(...args: unknown[]): { destroy(): void; sockets?: object; requests?: object } };
  const createAgent = created.createAgent.bind(kc);
  created.createAgent = (...args: unknown[]) => {
    for (const a of agents) if (Object.keys(a.sockets ?? {}).length === 0 && Object.keys(a.requests ?? {}).length === 0) agents.delete(a);
    const agent = createAgent(...args);
    agents.add(agent);
    return agent;
  };
  // Watch streams started after stop() (a list in flight when it was called) are aborted at once.
  // Each watch asks the API server to end it after timeoutSeconds (as client-go does), and is
  // ended here shortly after that if it is still open: a stream a proxy or a broken API server
  // keeps open with nothing on it would otherwise leave the view stale for good (new pods
  // unregistered, deleted pods' entries kept). Either way it resumes from its resourceVersion.
  const watchTimeoutMs = opts.watchTimeoutMs ?? WATCH_TIMEOUT_MS;
  class StoppableWatch extends k8s.Watch {
    override async watch(path: string, query: Record<string, string | number | boolean | undefined>, cb: (phase: string, obj: unknown, watchObj?: unknown) => void, done: (err: unknown) => void): Promise<AbortController> {
      if (stopped) return new AbortController();
      let expired = false;
      let guard: NodeJS.Timeout | undefined;
      const ended = (err: unknown): void => {
        if (guard) clearTimeout(guard);
        // Ended here for running past its time: a normal end, not an error to back off from.
        done(expired ? null : err);
      };
      const c = await super.watch(path, { ...query, timeoutSeconds: Math.max(1, Math.round(watchTimeoutMs / 1000)) }, cb, ended);
      if (stopped) c.abort();
      else {
        live.add(c);
        guard = setTimeout(() => {
          expired = true;
          c.abort();
        }, watchTimeoutMs + Math.min(WATCH_GRACE_MS, watchTimeoutMs));
        guard.unref();
      }
      c.signal.addEventListener(
        "abort",
        () => {
          live.delete(c);
          if (!expired && guard) clearTimeout(guard);
        },
        { once: true },
      );
      return c;
    }
  }
  const watch = new StoppableWatch(kc);
  // Lists and status writes end at stop() as well as after their time limit.
  const stopping = new AbortController();
  const options = boundedCall(k8s, CALL_TIMEOUT_MS, stopping.signal);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const discovery = kc.makeApiClient(k8s.DiscoveryV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const crPath = `/apis/${CLUSTER_SPIFFE_ID_GROUP}/${CLUSTER_SPIFFE_ID_VERSION}/${CLUSTER_SPIFFE_ID_PLURAL}`;

  const timers = new Set<NodeJS.Timeout>();
  // Without the CRD (a 404 on its list), the controller still runs the default rule; the list is tried again with backoff.
  let crdMissing = false;
  type Followed = { informer: InstanceType<K8sModule["ListWatch"]>; synced: boolean; stopped: boolean };
  /** The four informers {@link KubeWatch.synced} waits for. */
  const informers: Followed[] = [];
  function follow<T extends KubernetesObject>(
    what: string,
    path: string,
    list: () => Promise<{ items: T[]; metadata?: { resourceVersion?: string } }>,
    relevant: (obj: T) => unknown,
  ): Followed {
    const state: Followed = { informer: undefined as unknown as InstanceType<K8sModule["ListWatch"]>, synced: false, stopped: false };
    let backoff = BACKOFF_MIN_MS;
    // What the controller reads of each object: a change elsewhere (pod conditions, node heartbeats) starts no reconciliation.
    const seen = new Map<string, string>();
    const key = (obj: T): string => `${obj.metadata?.namespace ?? ""}/${obj.metadata?.name ?? ""}`;
    const changed = (obj: T): void => {
      backoff = BACKOFF_MIN_MS;
      const k = key(obj);
      const fingerprint = JSON.stringify(relevant(obj));
      if (seen.get(k) === fingerprint) return;
      seen.set(k, fingerprint);
      opts.onChange();
    };
    const informer = new k8s.ListWatch<T>(
      path,
      watch,
      async () => {
        const l = await list();
        state.synced = true;
        backoff = BACKOFF_MIN_MS;
        // The library applies the list after this returns; the controller coalesces changes, so it reads the applied list.
        setImmediate(opts.onChange);
        return l as never;
      },
      false,
    );
    state.informer = informer as never;
    informer.on("add", changed);
    informer.on("update", changed);
    informer.on("delete", (obj: T) => {
      seen.delete(key(obj));
      opts.onChange();
    });
    informer.on("error", (err: unknown) => {
      if (stopped || state.stopped) return;
      if (what === "clusterspiffeids" && crdMissing) opts.log.debug({ resource: what, retry_ms: backoff }, "k8s controller: the ClusterSPIFFEID CRD is still not installed");
      else opts.log.warn({ err, resource: what, retry_ms: backoff }, `k8s controller: watching ${what} failed; starting again`);
      const t = setTimeout(() => {
        timers.delete(t);
        if (!stopped && !state.stopped) void informer.start();
      }, backoff);
      timers.add(t);
      backoff = Math.min(BACKOFF_MAX_MS, backoff * 2);
    });
    return state;
  }
  const required = <T extends KubernetesObject>(...args: Parameters<typeof follow<T>>): Followed["informer"] => {
    const state = follow<T>(...args);
    informers.push(state);
    return state.informer;
  };
  // What the controller reads of a slice: its Service and which pods or addresses it holds
  // (not their readiness, which changes often and does not change a name).
  // Not trusting its shape: a throw here would be inside the library's event dispatch.
  const sliceRelevant = (s: V1EndpointSlice): unknown => [
    s.metadata?.labels?.["kubernetes.io/service-name"],
    Array.isArray(s.endpoints) ? s.endpoints.map((e) => [e?.targetRef?.kind, e?.targetRef?.uid, e?.targetRef?.name, e?.targetRef?.namespace, e?.addresses]) : s.endpoints,
  ];
  let slices: Followed | undefined;

  const pods = required<V1Pod>(
    "pods",
    "/api/v1/pods",
    () => core.listPodForAllNamespaces({}, options),
    (p) => [p.metadata?.uid, p.metadata?.labels, p.metadata?.annotations, p.spec?.serviceAccountName, p.spec?.nodeName, p.status?.phase, p.status?.podIPs, p.spec?.hostNetwork],
  );
  const namespaces = required<V1Namespace>("namespaces", "/api/v1/namespaces", () => core.listNamespace({}, options), (n) => n.metadata?.labels);
  const nodes = required<V1Node>(
    "nodes",
    "/api/v1/nodes",
    () => core.listNode({}, options),
    (n) => [n.metadata?.uid, n.metadata?.labels, n.metadata?.annotations, n.spec?.providerID, n.spec?.podCIDR],
  );
  const crs = required<KubernetesObject>("clusterspiffeids", crPath, async () => {
    try {
      const list = (await custom.listClusterCustomObject({ group: CLUSTER_SPIFFE_ID_GROUP, version: CLUSTER_SPIFFE_ID_VERSION, plural: CLUSTER_SPIFFE_ID_PLURAL }, options)) as { items: KubernetesObject[] };
      crdMissing = false;
      return list;
    } catch (e) {
      if (httpStatusOf(k8s, e) !== 404) throw e;
      // Resources seen and not deleted by a watch event: a 404 now is an API server that cannot
      // serve them yet (warming up after a restart), not an uninstalled CRD, whose resources are
      // deleted, and seen deleted, first. An empty list would take every identity they give.
      if (crs.list().length > 0) throw e;
      if (!crdMissing) opts.log.warn({}, `k8s controller: ${crPath} is not served (the ClusterSPIFFEID CRD is not installed); only the default rule applies until it is`);
      crdMissing = true;
      return { items: [] };
    }
  }, (cr) => (cr as ClusterSpiffeIdObject).spec);
  for (const { informer } of informers) void informer.start();

  return {
    get synced() {
      return informers.every((i) => i.synced);
    },
    get crdMissing() {
      return crdMissing;
    },
    pods: () => pods.list() as V1Pod[],
    namespace: (name) => namespaces.get(name) as V1Namespace | undefined,
    namespaces: () => namespaces.list() as V1Namespace[],
    node: (name) => nodes.get(name) as V1Node | undefined,
    clusterSpiffeIds: () => crs.list() as ClusterSpiffeIdObject[],
    followEndpointSlices(on) {
      if (stopped || on === (slices !== undefined)) return;
      if (on) {
        slices = follow<V1EndpointSlice>("endpointslices", "/apis/discovery.k8s.io/v1/endpointslices", () => discovery.listEndpointSliceForAllNamespaces({}, options), sliceRelevant);
        void slices.informer.start();
        return;
      }
      const old = slices as Followed;
      old.stopped = true;
      void old.informer.stop();
      slices = undefined;
    },
    endpointSlices: () => (slices?.synced ? (slices.informer.list() as V1EndpointSlice[]) : undefined),
    async putStatus(obj, stats) {
      const name = obj.metadata?.name ?? "";
      const body = {
        ...obj,
        apiVersion: `${CLUSTER_SPIFFE_ID_GROUP}/${CLUSTER_SPIFFE_ID_VERSION}`,
        kind: "ClusterSPIFFEID",
        status: { ...(obj.metadata?.generation === undefined ? {} : { observedGeneration: obj.metadata.generation }), stats },
      };
      await custom.replaceClusterCustomObjectStatus({ group: CLUSTER_SPIFFE_ID_GROUP, version: CLUSTER_SPIFFE_ID_VERSION, plural: CLUSTER_SPIFFE_ID_PLURAL, name, body }, options);
    },
    async stop() {
      stopped = true;
      stopping.abort();
      for (const t of timers) clearTimeout(t);
      timers.clear();
      await Promise.all([...informers, ...(slices ? [slices] : [])].map((i) => i.informer.stop()));
      for (const c of live) c.abort();
      live.clear();
      for (const a of agents) a.destroy();
      agents.clear();
    },
  };
}
