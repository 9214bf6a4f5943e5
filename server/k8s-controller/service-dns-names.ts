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
 * the names of `dnsNameTemplates`, without duplicates. They are not checked here:
 * the entry is validated as any other, so a name the server refuses is counted
 * in the resource's `entryFailures`, not dropped.
 */
import type { V1EndpointSlice, V1Pod } from "@kubernetes/client-node";

/** The label naming an EndpointSlice's Service. */
export const SERVICE_NAME_LABEL = "kubernetes.io/service-name";

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
    const service = slice.metadata?.labels?.[SERVICE_NAME_LABEL];
    const ns = slice.metadata?.namespace;
    if (!service || !ns) continue;
    for (const ep of slice.endpoints ?? []) {
      const ref = ep.targetRef;
      if (ref !== undefined && ref !== null) {
        if (ref.kind !== "Pod" || (ref.namespace !== undefined && ref.namespace !== ns)) continue;
        if (ref.uid) add(uidKey(ns, ref.uid), service);
        else if (ref.name) add(nameKey(ns, ref.name), service);
        continue;
      }
      for (const ip of ep.addresses ?? []) add(ipKey(ns, ip), service);
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
        for (const { ip } of pod.status?.podIPs ?? []) take(ipKey(ns, ip));
        if (pod.status?.podIP) take(ipKey(ns, pod.status.podIP));
      }
      return [...found].sort();
    },
  };
}

/**
 * The DNS names the Services give a pod of `namespace`: four per Service
 * (`<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.<clusterDomain>`,
 * the last only with a cluster domain), all sorted in byte order.
 */
export function serviceDnsNames(services: readonly string[], namespace: string, clusterDomain: string): string[] {
  const names: string[] = [];
  for (const svc of services) {
    names.push(svc, `${svc}.${namespace}`, `${svc}.${namespace}.svc`);
    if (clusterDomain !== "") names.push(`${svc}.${namespace}.svc.${clusterDomain}`);
  }
  // Code-unit order: byte order for the ASCII names Kubernetes allows, as Go's sort.Strings.
  return names.sort();
}
