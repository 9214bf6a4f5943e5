/**
 * The `k8s-controller` service (in the server, or alone in the
 * `sigil-server k8s-controller` process): registers the pods of one
 * Kubernetes cluster automatically, from `ClusterSPIFFEID` rules (and, when
 * `default_cluster_spiffe_id` is on, a built-in rule giving every pod
 * `spiffe://<td>/ns/<namespace>/sa/<service account>`).
 *
 * Each reconciliation computes the entries the rules want (one per selected,
 * scheduled pod and rule; parent = the pod's node's `k8s_psat` agent ID),
 * lists the entries the controller owns, and creates, updates and deletes the
 * difference through the same entry validation as the admin API, then writes
 * each resource's counts to its `status`. It runs after a change seen on a
 * watch (coalesced), and every `resync_interval` to repair what others changed.
 *
 * Ownership: an entry is the controller's exactly when its ID is
 * `entry_id_prefix` followed by 32 hex digits, the digest of (rule, pod UID),
 * so a restarted controller finds its entries again instead of duplicating
 * them, and an entry made any other way is never read, changed or deleted
 * (generated IDs are base64url, which has no ".", and the default prefix
 * `k8s.<cluster>.` has one; another cluster's prefix extending this one,
 * `k8s.prod.eu.` beside `k8s.prod.`, makes longer IDs; an operator must not
 * choose such IDs by hand).
 *
 * Nothing is deleted before all four resources have been listed once, so a
 * controller that starts without the API deletes nothing; and the entries of
 * a resource that became invalid (a template outside the subset, a malformed
 * selector) are kept as they are until it is fixed or deleted.
 *
 * A resource with `autoPopulateDNSNames` adds the names of the Services whose
 * EndpointSlices list a pod (service-dns-names.ts). The slices are watched
 * only while such a resource exists, and its entries are kept as they are
 * until they have been listed.
 */
import type { Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import type { TrustDomain } from "../../spiffe/id.js";
import {
  DEFAULT_RULE_NAME,
  compileRule,
  defaultRule,
  entryIdFor,
  podIsLive,
  renderPodEntry,
  type ClusterSpiffeIdObject,
  type ClusterSpiffeIdStats,
  type RenderContext,
  type RenderedEntry,
  type Rule,
} from "./cluster-spiffe-id.js";
import { isEntryRefusal, type ControllerEntryStore, type StoredEntry } from "./entry-store.js";
import { compileLabelSelector } from "./label-selector.js";
import { startKubeWatch, type KubeWatch, type KubeWatchOptions } from "./kube-watch.js";
import { indexEndpointSlices, serviceDnsNames } from "./service-dns-names.js";

/** The `k8s_controller` config section, parsed. */
export interface K8sControllerSettings {
  /** The cluster's name: a `k8s_psat` cluster, part of every parent ID. */
  readonly cluster: string;
  readonly kubeConfigFile?: string | undefined;
  /** Only resources whose `spec.className` equals this ("" for none) are reconciled. */
  readonly className: string;
  readonly defaultClusterSpiffeId: boolean;
  readonly resyncIntervalMs: number;
  readonly ignoreNamespaces: readonly string[];
  readonly entryIdPrefix: string;
  readonly clusterDomain: string;
}

/** Dependencies of {@link K8sController}. */
export interface K8sControllerDeps {
  readonly settings: K8sControllerSettings;
  readonly trustDomain: TrustDomain;
  /** Where entries are read and written: the datastore inside the server, the admin API outside. */
  readonly entries: ControllerEntryStore;
  readonly log: Logger;
  /** Starts the cluster view; default {@link startKubeWatch}. */
  readonly kubeWatch?: (opts: KubeWatchOptions) => Promise<KubeWatch>;
}

/** What one reconciliation did, for logs and tests. */
export interface ReconcileResult {
  readonly created: number;
  readonly updated: number;
  readonly deleted: number;
  readonly failed: number;
}

/** Pause that lets a burst of watch events become one reconciliation (longer after a slow one; see #schedule). */
const COALESCE_MS = 50;

type MutableStats = { -readonly [K in keyof ClusterSpiffeIdStats]: ClusterSpiffeIdStats[K] };

const zeroStats = (): MutableStats => ({ namespacesSelected: 0, podsSelected: 0, entriesCreated: 0, entryRenderFailures: 0, entryFailures: 0 });

function sameEntry(e: StoredEntry, d: RenderedEntry): boolean {
  const keys = (s: readonly { type: string; value: string }[]): string => s.map((x) => `${x.type}:${x.value}`).sort().join("\n");
  return (
    e.spiffeId === d.spiffeId &&
    e.parentId === d.parentId &&
    keys(e.selectors) === keys(d.selectors) &&
    e.x509SvidTtl === d.x509SvidTtl &&
    e.jwtSvidTtl === d.jwtSvidTtl &&
    e.dnsNames.join("\n") === d.dnsNames.join("\n") &&
    [...e.federatesWith].sort().join("\n") === [...d.federatesWith].map((t) => t.replace(/^spiffe:\/\//, "")).sort().join("\n") &&
    e.admin === d.admin &&
    e.downstream === d.downstream &&
    e.hint === d.hint &&
    !e.expires
  );
}

function sameStats(a: Partial<ClusterSpiffeIdStats> | undefined, b: ClusterSpiffeIdStats): boolean {
  return a !== undefined && (Object.keys(b) as Array<keyof ClusterSpiffeIdStats>).every((k) => a[k] === b[k]);
}

/** The `k8s-controller` service; see the module comment. */
export class K8sController implements Service {
  readonly name = "k8s-controller";
  readonly #d: K8sControllerDeps;
  readonly #ctx: RenderContext;
  #watch: KubeWatch | undefined;
  #timer: NodeJS.Timeout | undefined;
  #resync: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #again = false;
  #stopped = false;
  /** How long the last reconciliation took (ms): the least pause before the next. */
  #lastMs = 0;
  /** Rule problems already logged (name + resourceVersion + message), so a bad resource is logged once. */
  readonly #logged = new Set<string>();
  /** Called after every reconciliation (tests, bench). */
  onReconciled: ((r: ReconcileResult) => void) | undefined;

  constructor(deps: K8sControllerDeps) {
    this.#d = deps;
    const s = deps.settings;
    this.#ctx = { trustDomain: deps.trustDomain, clusterName: s.cluster, clusterDomain: s.clusterDomain, entryIdPrefix: s.entryIdPrefix };
  }

  /** Starts watching; does not wait for the API server (it may be down; the watch keeps trying). */
  async start(): Promise<void> {
    const s = this.#d.settings;
    this.#watch = await (this.#d.kubeWatch ?? startKubeWatch)({ kubeConfigFile: s.kubeConfigFile, onChange: () => this.#schedule(), log: this.#d.log });
    this.#resync = setInterval(() => this.#schedule(), s.resyncIntervalMs);
    this.#resync.unref();
    this.#d.log.info({ cluster: s.cluster, entry_id_prefix: s.entryIdPrefix, default_cluster_spiffe_id: s.defaultClusterSpiffeId }, "k8s controller: watching the cluster");
  }

  /** Stops the watch and timers, then waits for a reconciliation under way. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#resync) clearInterval(this.#resync);
    await this.#watch?.stop();
    await this.#running;
    this.#d.entries.close?.();
  }

  // The pause before a reconciliation is at least as long as the last one took: a cluster
  // whose pods change all the time (a tenant's churn) gets the server's event loop, which it
  // shares with the agent API, at most half the time.
  #schedule(): void {
    if (this.#stopped || this.#timer) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#running = this.#run().finally(() => {
        this.#running = undefined;
        if (this.#again) {
          this.#again = false;
          this.#schedule();
        }
      });
    }, Math.max(COALESCE_MS, this.#lastMs));
  }

  async #run(): Promise<void> {
    const start = performance.now();
    try {
      const r = await this.reconcile();
      if (r) this.onReconciled?.(r);
    } catch (err) {
      this.#d.log.error({ err }, "k8s controller: reconciliation failed; trying again at the next change or resync");
    } finally {
      this.#lastMs = performance.now() - start;
    }
  }

  #logOnce(key: string, fields: Record<string, unknown>, msg: string): void {
    if (this.#logged.has(key)) return;
    if (this.#logged.size > 10_000) this.#logged.clear();
    this.#logged.add(key);
    this.#d.log.warn(fields, msg);
  }

  /**
   * One reconciliation; undefined when the cluster has not been listed yet.
   * Exposed for tests; the service runs it on changes and on the resync timer.
   */
  async reconcile(): Promise<ReconcileResult | undefined> {
    const w = this.#watch;
    if (!w?.synced) return undefined;
    const s = this.#d.settings;
    const ignored = new Set(s.ignoreNamespaces);
    const rules: Array<{ name: string; obj?: ClusterSpiffeIdObject; rule?: Rule; error?: string }> = [];
    if (s.defaultClusterSpiffeId) rules.push({ name: DEFAULT_RULE_NAME, rule: defaultRule() });
    for (const obj of w.clusterSpiffeIds()) {
      if ((obj.spec?.className ?? "") !== s.className) continue;
      const name = obj.metadata?.name ?? "";
      try {
        rules.push({ name, obj, rule: compileRule(name, obj.spec) });
      } catch (e) {
        const error = e instanceof Error ? e.message : String(e);
        this.#logOnce(`${name}\n${obj.metadata?.resourceVersion}\n${error}`, { cluster_spiffe_id: name, error }, "k8s controller: ClusterSPIFFEID is invalid; it registers nothing");
        rules.push({ name, obj, error });
      }
    }
    // EndpointSlices are followed only while a rule wants Service names. Until they are listed,
    // such a rule's entries stay as they are: rendered without the names, they would lose them
    // on every restart until the list arrives.
    const wantsServices = rules.some((r) => r.rule?.autoPopulateDNSNames === true);
    w.followEndpointSlices(wantsServices);
    const slices = wantsServices ? w.endpointSlices() : undefined;
    const services = slices === undefined ? undefined : indexEndpointSlices(slices);
    const pods = w.pods().filter((p) => podIsLive(p) && !ignored.has(p.metadata?.namespace ?? ""));
    const namespaces = w.namespaces().filter((n) => !ignored.has(n.metadata?.name ?? ""));
    const stats = new Map<string, MutableStats>();
    const desired = new Map<string, { entry: RenderedEntry; rule: string }>();
    // Entries of an invalid resource stay as they are (an edit with a typo must not take identities away).
    const kept = new Map<string, string>();
    for (const r of rules) {
      const st = zeroStats();
      stats.set(r.name, st);
      let nsMatch = r.rule?.namespaces;
      let podMatch = r.rule?.pods;
      if (r.rule === undefined) {
        // An invalid template: the pods the selectors pick each count as a render failure.
        try {
          nsMatch = compileLabelSelector(r.obj?.spec?.namespaceSelector, "spec.namespaceSelector");
          podMatch = compileLabelSelector(r.obj?.spec?.podSelector, "spec.podSelector");
        } catch {
          for (const pod of pods) kept.set(entryIdFor(this.#ctx.entryIdPrefix, r.name, pod.metadata?.uid ?? ""), r.name);
          continue;
        }
      }
      if (nsMatch === undefined || podMatch === undefined) continue;
      st.namespacesSelected = namespaces.filter((n) => nsMatch(n.metadata?.labels)).length;
      for (const pod of pods) {
        if (!nsMatch(w.namespace(pod.metadata?.namespace ?? "")?.metadata?.labels) || !podMatch(pod.metadata?.labels)) continue;
        const node = w.node(pod.spec?.nodeName ?? "");
        // Not seen yet (the node watch is behind): the next change or resync renders it.
        if (!node?.metadata?.uid) continue;
        st.podsSelected++;
        if (r.rule === undefined) {
          st.entryRenderFailures++;
          kept.set(entryIdFor(this.#ctx.entryIdPrefix, r.name, pod.metadata?.uid ?? ""), r.name);
          continue;
        }
        if (r.rule.autoPopulateDNSNames && services === undefined) {
          kept.set(entryIdFor(this.#ctx.entryIdPrefix, r.name, pod.metadata?.uid ?? ""), r.name);
          continue;
        }
        try {
          const serviceNames = services === undefined || !r.rule.autoPopulateDNSNames ? [] : serviceDnsNames(services.servicesOf(pod), pod.metadata?.namespace ?? "", this.#ctx.clusterDomain);
          const entry = renderPodEntry(r.rule, this.#ctx, pod, node, serviceNames);
          desired.set(entry.id, { entry, rule: r.name });
        } catch (e) {
          st.entryRenderFailures++;
          const error = e instanceof Error ? e.message : String(e);
          this.#logOnce(`${r.name}\n${pod.metadata?.uid}\n${error}`, { cluster_spiffe_id: r.name, pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`, error }, "k8s controller: cannot render the entry of a pod");
        }
      }
    }

    const store = this.#d.entries;
    const owned = await store.listOwned(this.#ctx.entryIdPrefix);
    const failed = (rule: string, err: unknown, what: string, id: string): void => {
      const st = stats.get(rule);
      if (st) st.entryFailures++;
      this.#logOnce(`${id}\n${what}\n${String(err)}`, { err, entry_id: id, cluster_spiffe_id: rule }, `k8s controller: cannot ${what} an entry`);
    };

    let created = 0;
    let updated = 0;
    let deleted = 0;
    const present = new Set<string>();
    const toCreate: Array<{ entry: RenderedEntry; rule: string }> = [];
    for (const [id, { entry, rule }] of desired) {
      const have = owned.get(id);
      if (have && sameEntry(have, entry)) {
        present.add(id);
        continue;
      }
      if (!have) {
        toCreate.push({ entry, rule });
        continue;
      }
      // An update the server refuses (what the rule and pod now render is invalid, or a duplicate)
      // deletes the entry below, as a fresh start would never create it: kept as it was, a pod
      // could pin what a rule edit takes away (admin, an ID, federation) by making its labels
      // render an invalid DNS name. One the server fails to answer keeps it for the next try.
      try {
        await store.update(entry);
        updated++;
        present.add(id);
      } catch (err) {
        failed(rule, err, "update", id);
        if (!isEntryRefusal(err)) present.add(id);
      }
    }
    const results = await store.create(toCreate.map((c) => c.entry));
    results.forEach((res, k) => {
      const c = toCreate[k] as { entry: RenderedEntry; rule: string };
      if (res.ok) {
        created++;
        present.add(c.entry.id);
      } else failed(c.rule, res.error, "create", c.entry.id);
    });
    for (const [id, rule] of kept) {
      const st = stats.get(rule);
      if (st && owned.has(id)) st.entriesCreated++;
    }
    // Without the CRD served, the resources' entries cannot be told from stale ones; those of
    // live pods are kept (an API server not yet serving the CRD must not take every identity
    // the resources give), those of pods gone and the default rule's are deleted as ever.
    const livePods = w.crdMissing === true ? new Set(pods.map((p) => p.metadata?.uid ?? "")) : undefined;
    const ruleOfLivePod = (e: StoredEntry): boolean => {
      const uid = e.selectors.find((x) => x.type === "k8s" && x.value.startsWith("pod-uid:"))?.value.slice("pod-uid:".length);
      return uid !== undefined && livePods?.has(uid) === true && e.id !== entryIdFor(this.#ctx.entryIdPrefix, DEFAULT_RULE_NAME, uid);
    };
    for (const [id, e] of owned) {
      if (present.has(id) || kept.has(id)) continue;
      if (livePods !== undefined && ruleOfLivePod(e)) continue;
      try {
        await store.delete(id);
        deleted++;
      } catch (err) {
        this.#logOnce(`${id}\ndelete\n${String(err)}`, { err, entry_id: id }, "k8s controller: cannot delete an entry");
      }
    }
    for (const [id, { rule }] of desired) {
      const st = stats.get(rule);
      if (st && present.has(id)) st.entriesCreated++;
    }

    let failures = 0;
    for (const st of stats.values()) failures += st.entryFailures;
    for (const r of rules) {
      const st = stats.get(r.name);
      if (r.obj === undefined || st === undefined) continue;
      if (sameStats(r.obj.status?.stats, st) && r.obj.status?.observedGeneration === r.obj.metadata?.generation) continue;
      try {
        await w.putStatus(r.obj, st);
      } catch (err) {
        // A conflict (the resource changed meanwhile) or a lost connection: the next reconciliation writes it.
        this.#d.log.debug({ err, cluster_spiffe_id: r.name }, "k8s controller: cannot update status");
      }
    }
    const result = { created, updated, deleted, failed: failures };
    if (created + updated + deleted > 0) this.#d.log.info({ ...result, entries: present.size }, "k8s controller: entries reconciled");
    return result;
  }
}

