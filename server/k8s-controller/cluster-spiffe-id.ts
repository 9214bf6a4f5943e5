/**
 * `ClusterSPIFFEID` (`sigil.dev/v1alpha1`, cluster-scoped; the manifest is
 * `charts/sigil/crds/clusterspiffeids.sigil.dev.yaml`): a rule giving the pods
 * it selects a SPIFFE ID. This module checks a resource's spec once
 * ({@link compileRule}) and renders the registration entry of one pod under
 * it ({@link renderPodEntry}). Field names are spire-controller-manager's.
 */
import { createHash } from "node:crypto";
import type { V1Namespace, V1Node, V1Pod } from "@kubernetes/client-node";
import { tryParseDuration } from "../../common/config/duration.js";
import { agentSpiffeId } from "../../common/reserved-ids.js";
import { parseSelector, type Selector } from "../../common/selector.js";
import { SigilError, isSigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, type TrustDomain } from "../../spiffe/id.js";
import { compileLabelSelector, type LabelMatcher, type LabelSelector } from "./label-selector.js";
import { compileTemplate, type Template, type TemplateData } from "./template.js";

/** API group, version and plural of the resource. */
export const CLUSTER_SPIFFE_ID_GROUP = "sigil.dev";
export const CLUSTER_SPIFFE_ID_VERSION = "v1alpha1";
export const CLUSTER_SPIFFE_ID_PLURAL = "clusterspiffeids";

/** The default rule's ID template: every pod gets its namespace and service account. */
export const DEFAULT_SPIFFE_ID_TEMPLATE = "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}";
/** Name of the built-in rule (no resource of this name is needed or read). */
export const DEFAULT_RULE_NAME = "(default)";

/** `spec` of a ClusterSPIFFEID as it arrives from the API. */
export interface ClusterSpiffeIdSpec {
  readonly className?: string;
  readonly spiffeIDTemplate?: string;
  readonly podSelector?: LabelSelector;
  readonly namespaceSelector?: LabelSelector;
  readonly workloadSelectorTemplates?: readonly string[];
  readonly dnsNameTemplates?: readonly string[];
  readonly autoPopulateDNSNames?: boolean;
  readonly ttl?: string;
  readonly jwtTtl?: string;
  readonly federatesWith?: readonly string[];
  readonly hint?: string;
  readonly admin?: boolean;
  readonly downstream?: boolean;
}

/** `status.stats` the controller writes (the names of the chart's CRD). */
export interface ClusterSpiffeIdStats {
  /** Namespaces the namespaceSelector matches (ignored namespaces excluded). */
  readonly namespacesSelected: number;
  /** Scheduled pods both selectors match. */
  readonly podsSelected: number;
  /** Entries of this resource in the server after the reconciliation. */
  readonly entriesCreated: number;
  /** Selected pods for which a template rendered something invalid (no entry made). */
  readonly entryRenderFailures: number;
  /** Entries the server refused to create, update or delete. */
  readonly entryFailures: number;
}

/** A ClusterSPIFFEID object (the parts the controller reads). */
export interface ClusterSpiffeIdObject {
  readonly apiVersion?: string;
  readonly kind?: string;
  readonly metadata?: { readonly name?: string; readonly resourceVersion?: string; readonly generation?: number };
  readonly spec?: ClusterSpiffeIdSpec;
  readonly status?: { readonly observedGeneration?: number; readonly stats?: Partial<ClusterSpiffeIdStats> };
}

/** A checked rule. */
export interface Rule {
  readonly name: string;
  readonly spiffeId: Template;
  readonly pods: LabelMatcher;
  readonly namespaces: LabelMatcher;
  readonly workloadSelectors: readonly Template[];
  readonly dnsNames: readonly Template[];
  /** Whether the names of the Services routing to a pod are added to its DNS names (service-dns-names.ts). */
  readonly autoPopulateDNSNames: boolean;
  /** Seconds; 0 for the server default. */
  readonly x509SvidTtl: number;
  readonly jwtSvidTtl: number;
  readonly federatesWith: readonly string[];
  readonly hint: string;
  readonly admin: boolean;
  readonly downstream: boolean;
}

function ttlSeconds(v: string | undefined, field: string): number {
  if (v === undefined || v === "") return 0;
  const ms = typeof v === "string" ? tryParseDuration(v) : undefined;
  if (ms === undefined || ms < 0) throw new SigilError("ERR_INVALID_ARGUMENT", `spec.${field}: ${JSON.stringify(v)} is not a duration (1h, 90s)`);
  return Math.ceil(ms / 1000);
}

function stringList(v: unknown, field: string): readonly string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.some((s) => typeof s !== "string")) throw new SigilError("ERR_INVALID_ARGUMENT", `spec.${field}: must be a list of strings`);
  return v as string[];
}

function at<T>(field: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (isSigilError(e)) throw new SigilError("ERR_INVALID_ARGUMENT", `spec.${field}: ${e.message}`, { cause: e });
    throw e;
  }
}

/**
 * Checks a resource's spec: templates compile, selectors are well formed,
 * durations parse.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the field.
 */
export function compileRule(name: string, spec: ClusterSpiffeIdSpec | undefined): Rule {
  if (spec === undefined || typeof spec !== "object") throw new SigilError("ERR_INVALID_ARGUMENT", "spec: is missing");
  if (typeof spec.spiffeIDTemplate !== "string" || spec.spiffeIDTemplate === "") throw new SigilError("ERR_INVALID_ARGUMENT", "spec.spiffeIDTemplate: is required");
  const spiffeIDTemplate = spec.spiffeIDTemplate;
  return {
    name,
    spiffeId: at("spiffeIDTemplate", () => compileTemplate(spiffeIDTemplate)),
    pods: compileLabelSelector(spec.podSelector, "spec.podSelector"),
    namespaces: compileLabelSelector(spec.namespaceSelector, "spec.namespaceSelector"),
    workloadSelectors: stringList(spec.workloadSelectorTemplates, "workloadSelectorTemplates").map((t, i) => at(`workloadSelectorTemplates[${i}]`, () => compileTemplate(t))),
    dnsNames: stringList(spec.dnsNameTemplates, "dnsNameTemplates").map((t, i) => at(`dnsNameTemplates[${i}]`, () => compileTemplate(t))),
    autoPopulateDNSNames: spec.autoPopulateDNSNames === true,
    x509SvidTtl: ttlSeconds(spec.ttl, "ttl"),
    jwtSvidTtl: ttlSeconds(spec.jwtTtl, "jwtTtl"),
    federatesWith: stringList(spec.federatesWith, "federatesWith"),
    hint: typeof spec.hint === "string" ? spec.hint : "",
    admin: spec.admin === true,
    downstream: spec.downstream === true,
  };
}

/** The built-in rule `default_cluster_spiffe_id` turns on. */
export function defaultRule(): Rule {
  return compileRule(DEFAULT_RULE_NAME, { spiffeIDTemplate: DEFAULT_SPIFFE_ID_TEMPLATE });
}

/** A rendered value in a message: pods' annotations can be 256 KiB, and the message is logged and remembered per pod. */
function quoted(s: string): string {
  return JSON.stringify(s.length > 200 ? `${s.slice(0, 197)}...` : s);
}

/** Where the rendered entry lives, besides the pod and its node. */
export interface RenderContext {
  readonly trustDomain: TrustDomain;
  readonly clusterName: string;
  readonly clusterDomain: string;
  /** Prefix of every entry ID the controller makes (its ownership mark). */
  readonly entryIdPrefix: string;
}

/** One pod's entry, ready for entry validation. */
export interface RenderedEntry {
  readonly id: string;
  readonly spiffeId: string;
  readonly parentId: string;
  readonly selectors: readonly Selector[];
  readonly dnsNames: readonly string[];
  readonly x509SvidTtl: number;
  readonly jwtSvidTtl: number;
  readonly federatesWith: readonly string[];
  readonly hint: string;
  readonly admin: boolean;
  readonly downstream: boolean;
}

/**
 * The entry ID of a pod under a rule: the prefix and a digest of both, so
 * the same pod and rule always give the same ID (a restarted controller
 * finds its entries), and the ID changes with neither the template nor the
 * pod's labels (a changed rule updates the entry in place).
 */
export function entryIdFor(prefix: string, ruleName: string, podUid: string): string {
  return prefix + createHash("sha256").update(`${ruleName}\n${podUid}`).digest("hex").slice(0, 32);
}

const DIGEST_RE = /^[0-9a-f]{32}$/;

/**
 * Whether an entry ID is one {@link entryIdFor} makes with this prefix: the
 * prefix and exactly its 32-hex digest. Starting with the prefix is not
 * enough: another cluster's default prefix can extend this one (`k8s.prod.`
 * and `k8s.prod.eu.`), and an operator's ID can start with it by accident.
 */
export function isOwnedEntryId(prefix: string, id: string): boolean {
  return id.length === prefix.length + 32 && id.startsWith(prefix) && DIGEST_RE.test(id.slice(prefix.length));
}

/** The template data of a pod on a node. */
export function templateData(ctx: RenderContext, pod: V1Pod, node: V1Node): TemplateData {
  return {
    TrustDomain: ctx.trustDomain.name,
    ClusterName: ctx.clusterName,
    ClusterDomain: ctx.clusterDomain,
    PodMeta: {
      Name: pod.metadata?.name ?? "",
      Namespace: pod.metadata?.namespace ?? "",
      UID: pod.metadata?.uid ?? "",
      Labels: pod.metadata?.labels ?? {},
      Annotations: pod.metadata?.annotations ?? {},
    },
    PodSpec: { ServiceAccountName: pod.spec?.serviceAccountName ?? "default", NodeName: pod.spec?.nodeName ?? "" },
    NodeMeta: { Name: node.metadata?.name ?? "", UID: node.metadata?.uid ?? "", Labels: node.metadata?.labels ?? {}, Annotations: node.metadata?.annotations ?? {} },
    NodeSpec: { ProviderID: node.spec?.providerID ?? "", PodCIDR: node.spec?.podCIDR ?? "" },
  };
}

/**
 * Renders a pod's entry under a rule: the ID template, parent
 * `spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node UID>`, selectors
 * `k8s:ns`, `k8s:pod-uid` and the rendered selector templates, DNS names:
 * the rendered templates, then `serviceNames` (the rule's
 * `autoPopulateDNSNames` names, see service-dns-names.ts), each once.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when something renders invalid
 * (a render failure: counted in status, no entry).
 */
export function renderPodEntry(rule: Rule, ctx: RenderContext, pod: V1Pod, node: V1Node, serviceNames: readonly string[] = []): RenderedEntry {
  const data = templateData(ctx, pod, node);
  const rendered = rule.spiffeId.render(data);
  let spiffeId: string;
  try {
    const id = parseSpiffeId(rendered);
    if (!id.memberOf(ctx.trustDomain)) throw new SigilError("ERR_INVALID_ARGUMENT", `it is not in trust domain ${ctx.trustDomain.name}`);
    spiffeId = id.toString();
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `spiffeIDTemplate rendered ${quoted(rendered)}, not a SPIFFE ID of this trust domain: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  const selectors = [parseSelector(`k8s:ns:${data.PodMeta.Namespace}`), parseSelector(`k8s:pod-uid:${data.PodMeta.UID}`)];
  rule.workloadSelectors.forEach((t, i) => {
    const s = t.render(data);
    try {
      selectors.push(parseSelector(s));
    } catch (e) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `workloadSelectorTemplates[${i}] rendered ${quoted(s)}, not a selector: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
  });
  const dnsNames: string[] = [];
  for (const d of [...rule.dnsNames.map((t) => t.render(data)), ...serviceNames]) {
    if (!dnsNames.includes(d)) dnsNames.push(d);
  }
  return {
    id: entryIdFor(ctx.entryIdPrefix, rule.name, data.PodMeta.UID),
    spiffeId,
    parentId: agentSpiffeId(ctx.trustDomain, `k8s_psat/${ctx.clusterName}/${data.NodeMeta.UID}`).toString(),
    selectors,
    dnsNames,
    x509SvidTtl: rule.x509SvidTtl,
    jwtSvidTtl: rule.jwtSvidTtl,
    federatesWith: rule.federatesWith,
    hint: rule.hint,
    admin: rule.admin,
    downstream: rule.downstream,
  };
}

/** Whether a pod gets entries: scheduled on a node and not finished. */
export function podIsLive(pod: V1Pod): boolean {
  const phase = pod.status?.phase;
  return !!pod.spec?.nodeName && !!pod.metadata?.uid && phase !== "Succeeded" && phase !== "Failed";
}

/** Whether a rule's namespace selector matches a namespace. */
export function namespaceSelected(rule: Rule, ns: V1Namespace | undefined): boolean {
  return rule.namespaces(ns?.metadata?.labels);
}
