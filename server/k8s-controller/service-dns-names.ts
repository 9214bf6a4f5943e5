/**
 * `autoPopulateDNSNames`: the DNS names a pod gets from the Services that
 * route to it, the names spire-controller-manager gives.
 *
 * A Service routes to a pod when one of its EndpointSlices (`discovery.k8s.io/v1`,
 * label `kubernetes.io/service-name`, in the pod's namespace) lists the pod,
 * ready or not: by `targetRef` (a Pod of the pod's UID, or of its name when the
 * reference carries no UID), or, for an endpoint without a `targetRef` (the
 * hand-written slices of a Service without a selector), by one of the pod's IPs,
 * unless the pod uses its node's network (every such pod on the node has that IP).
 *
 * Each Service gives `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc` and
 * `<svc>.<ns>.svc.<cluster domain>`; the names of all of a pod's Services are
 * sorted together (byte order, as spire-controller-manager sorts them) and follow
 * the names of `dnsNameTemplates`, without duplicates.
 *
 * Whoever may write EndpointSlices in a namespace chooses their label, so a
 * slice counts only when its `kubernetes.io/service-name` is a name a Service
 * can have (an RFC 1035 label): a label value may hold dots, and
 * `kubernetes.default.svc.cluster.local` as a "Service" would put that name,
 * bare, into the SVIDs of the writer's pods. Slices that are not objects of the
 * expected shape are skipped, never fail the reconciliation. A pod may have
 * the names of at most {@link MAX_SERVICES_PER_POD} Services: slices are cheap
 * to make, and each adds four names to the entry and its certificate.
 */
import { SigilError } from "../../spiffe/errors.js";
import type { V1EndpointSlice, V1Pod } from "@kubernetes/client-node";

/** The label naming an EndpointSlice's Service. */
export const SERVICE_NAME_LABEL = "kubernetes.io/service-name";

/** Most Services whose names one pod's entry gets (four names each); more is a render failure. */
export const MAX_SERVICES_PER_POD = 64;

// A Service's name, as the API server validates it (DNS-1035 label).
const SERVICE_NAME_RE = /^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$/;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null;
const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : []);

/** Which Services' EndpointSlices list which pods; see {@link indexEndpointSlices}. */
export interface ServiceIndex {
  /** Names of the Services (of the pod's namespace) whose slices list the pod, sorted, each once. */
  servicesOf(pod: V1Pod): string[];
}

// Keys are namespaced: a slice only ever names the pods of its own namespace.
const uidKey = (ns: string, uid: string): string => `uid\0${ns}\0${uid}`;
const nameKey = (ns: string, name: string): string => `name\0${ns}\0${name}`;
const ipKey = (ns: string, ip: string): string => `ip\0${ns}\0${ip}`;

/** Indexes EndpointSlices by the pods (UID, name or IP) their endpoints list, ready or not. */
export function indexEndpointSlices(slices: readonly V1EndpointSlice[]): ServiceIndex {
  const services = new Map<string, Set<string>>();
  const add = (key: string, service: string): void => {
    let set = services.get(key);
    if (set === undefined) services.set(key, (set = new Set()));
    set.add(service);
  };
  for (const slice of slices) {
    if (!isObject(slice)) continue;
    const service: unknown = slice.metadata?.labels?.[SERVICE_NAME_LABEL];
    const ns: unknown = slice.metadata?.namespace;
    if (typeof service !== "string" || !SERVICE_NAME_RE.test(service) || typeof ns !== "string" || ns === "") continue;
    for (const ep of Array.isArray(slice.endpoints) ? (slice.endpoints as unknown[]) : []) {
      if (!isObject(ep)) continue;
      const ref = ep.targetRef;
      if (ref !== undefined && ref !== null) {
        if (!isObject(ref) || ref.kind !== "Pod" || (ref.namespace !== undefined && ref.namespace !== ns)) continue;
        if (typeof ref.uid === "string" && ref.uid !== "") add(uidKey(ns, ref.uid), service);
        else if (typeof ref.name === "string" && ref.name !== "") add(nameKey(ns, ref.name), service);
        continue;
      }
      for (const ip of strings(ep.addresses)) add(ipKey(ns, ip), service);
    }
  }
  return {
    servicesOf(pod) {
      const ns = pod.metadata?.namespace ?? "";
      const found = new Set<string>();
      const take = (key: string): void => services.get(key)?.forEach((s) => found.add(s));
      if (pod.metadata?.uid) take(uidKey(ns, pod.metadata.uid));
      if (pod.metadata?.name) take(nameKey(ns, pod.metadata.name));
      if (pod.spec?.hostNetwork !== true) {
        const podIPs: unknown = pod.status?.podIPs;
        for (const p of Array.isArray(podIPs) ? (podIPs as unknown[]) : []) if (isObject(p) && typeof p.ip === "string") take(ipKey(ns, p.ip));
        if (typeof pod.status?.podIP === "string") take(ipKey(ns, pod.status.podIP));
      }
      return [...found].sort();
    },
  };
}

/**
 * The DNS names the Services give a pod of `namespace`: four per Service
 * (`<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.<clusterDomain>`,
 * the last only with a cluster domain), all sorted in byte order.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` for more than {@link MAX_SERVICES_PER_POD} Services (a render failure).
 */
export function serviceDnsNames(services: readonly string[], namespace: string, clusterDomain: string): string[] {
  if (services.length > MAX_SERVICES_PER_POD) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `autoPopulateDNSNames: ${services.length} Services route to the pod, more than the ${MAX_SERVICES_PER_POD} whose names an entry may carry`);
  }
  const names: string[] = [];
  for (const svc of services) {
    names.push(svc, `${svc}.${namespace}`, `${svc}.${namespace}.svc`);
    if (clusterDomain !== "") names.push(`${svc}.${namespace}.svc.${clusterDomain}`);
  }
  // Code-unit order: byte order for the ASCII names Kubernetes allows, as Go's sort.Strings.
  return names.sort();
}
