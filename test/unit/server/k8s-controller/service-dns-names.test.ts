/**
 * `autoPopulateDNSNames` name derivation: which Services' EndpointSlices
 * select a pod (targetRef by UID or name, ready or not; an address only for
 * endpoints without a targetRef and pods off the host network; never across
 * namespaces), the four names per Service in spire-controller-manager's sorted
 * order, and where they go in a rendered entry (after the templates, once).
 */
import type { V1EndpointSlice, V1Node, V1Pod } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { compileRule, renderPodEntry, type RenderContext } from "../../../../server/k8s-controller/cluster-spiffe-id.js";
import { MAX_SERVICES_PER_POD, indexEndpointSlices, serviceDnsNames } from "../../../../server/k8s-controller/service-dns-names.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";

const POD: V1Pod = {
  metadata: { namespace: "web", name: "api-1", uid: "uid-api-1" },
  spec: { containers: [], nodeName: "worker-1", serviceAccountName: "api" },
  status: { phase: "Running", podIP: "10.244.0.9", podIPs: [{ ip: "10.244.0.9" }, { ip: "fd00::9" }] },
};

type Endpoint = NonNullable<V1EndpointSlice["endpoints"]>[number];
const slice = (service: string | undefined, endpoints: Endpoint[], namespace = "web"): V1EndpointSlice => ({
  addressType: "IPv4",
  metadata: { namespace, name: `${service ?? "none"}-abcde`, ...(service === undefined ? {} : { labels: { "kubernetes.io/service-name": service } }) },
  endpoints,
});
const byUid = (uid: string, ready = true): Endpoint => ({ addresses: ["10.244.9.9"], conditions: { ready }, targetRef: { kind: "Pod", namespace: "web", name: "whatever", uid } });

describe("indexEndpointSlices", () => {
  it("finds the Services whose slices list the pod by targetRef UID, ready or not, each once and sorted", () => {
    const index = indexEndpointSlices([
      slice("zeta", [byUid("uid-api-1", false)]),
      slice("api", [byUid("uid-other"), byUid("uid-api-1")]),
      // A Service split over two slices.
      slice("api", [byUid("uid-api-1")]),
      slice("other", [byUid("uid-other")]),
    ]);
    expect(index.servicesOf(POD)).toEqual(["api", "zeta"]);
  });

  it("matches a targetRef without UID by name, and an endpoint without targetRef by one of the pod's IPs", () => {
    const index = indexEndpointSlices([
      slice("by-name", [{ addresses: ["10.1.1.1"], targetRef: { kind: "Pod", name: "api-1" } }]),
      slice("by-ip", [{ addresses: ["fd00::9"] }]),
      slice("by-ip4", [{ addresses: ["10.244.0.9"], conditions: { ready: false } }]),
    ]);
    expect(index.servicesOf(POD)).toEqual(["by-ip", "by-ip4", "by-name"]);
  });

  it("ignores an IP listed with a targetRef to something else, a pod on the host network, another namespace, and slices of no Service", () => {
    const index = indexEndpointSlices([
      // The pod's IP, but the endpoint names another pod (the IP was reused): the reference decides.
      slice("reused-ip", [{ addresses: ["10.244.0.9"], targetRef: { kind: "Pod", name: "old", uid: "uid-old" } }]),
      slice("node-ref", [{ addresses: ["10.244.0.9"], targetRef: { kind: "Node", name: "api-1" } }]),
      slice("elsewhere", [byUid("uid-api-1"), { addresses: ["10.244.0.9"] }], "payments"),
      slice("cross-ref", [{ addresses: ["10.9.9.9"], targetRef: { kind: "Pod", namespace: "web", uid: "uid-api-1" } }], "payments"),
      slice(undefined, [byUid("uid-api-1")]),
    ]);
    expect(index.servicesOf(POD)).toEqual([]);
    const hostNet = indexEndpointSlices([slice("node-port", [{ addresses: ["10.244.0.9"] }])]);
    expect(hostNet.servicesOf(POD)).toEqual(["node-port"]);
    expect(hostNet.servicesOf({ ...POD, spec: { ...POD.spec, containers: [], hostNetwork: true } })).toEqual([]);
  });

  it("ignores a slice whose Service label is no Service name: a label value may hold dots, which would give the writer's pods any name, bare", () => {
    const index = indexEndpointSlices([
      slice("kubernetes.default.svc.cluster.local", [byUid("uid-api-1")]),
      slice("www.example.com", [{ addresses: ["10.244.0.9"] }]),
      slice("Api", [byUid("uid-api-1")]),
      slice("api_x", [byUid("uid-api-1")]),
      slice("1api", [byUid("uid-api-1")]),
      slice("api-", [byUid("uid-api-1")]),
      slice("a".repeat(64), [byUid("uid-api-1")]),
      slice("api", [byUid("uid-api-1")]),
      slice("a".repeat(63), [byUid("uid-api-1")]),
    ]);
    expect(index.servicesOf(POD)).toEqual(["a".repeat(63), "api"]);
  });

  it("skips what is not of the expected shape (a broken or hostile API server) instead of failing every pod's reconciliation", () => {
    const garbage = [
      null,
      "slice",
      { metadata: { namespace: "web", labels: { "kubernetes.io/service-name": 7 } }, endpoints: [byUid("uid-api-1")] },
      { metadata: { namespace: ["web"], labels: { "kubernetes.io/service-name": "ns-array" } }, endpoints: [byUid("uid-api-1")] },
      { metadata: { namespace: "web", labels: { "kubernetes.io/service-name": "eps-object" } }, endpoints: { 0: byUid("uid-api-1") } },
      slice("odd-endpoints", [null, 3, { targetRef: "Pod" }, { targetRef: { kind: "Pod", uid: 5, name: ["api-1"] } }, { addresses: "10.244.0.9" }, { addresses: [null, 9] }] as never),
      slice("good", [null, byUid("uid-api-1")] as never),
    ] as unknown as V1EndpointSlice[];
    const index = indexEndpointSlices(garbage);
    expect(index.servicesOf(POD)).toEqual(["good"]);
    const oddPod = { ...POD, status: { podIP: 7, podIPs: [null, { ip: ["10.244.0.9"] }] } } as unknown as V1Pod;
    expect(index.servicesOf(oddPod)).toEqual(["good"]);
    expect(index.servicesOf({ ...POD, status: { podIPs: { ip: "x" } } } as unknown as V1Pod)).toEqual(["good"]);
  });
});

describe("serviceDnsNames", () => {
  it("gives <svc>, <svc>.<ns>, <svc>.<ns>.svc and <svc>.<ns>.svc.<domain> per Service, all sorted together", () => {
    expect(serviceDnsNames(["api", "api-v2"], "web", "cluster.local")).toEqual([
      "api",
      "api-v2",
      "api-v2.web",
      "api-v2.web.svc",
      "api-v2.web.svc.cluster.local",
      "api.web",
      "api.web.svc",
      "api.web.svc.cluster.local",
    ]);
    expect(serviceDnsNames(["api"], "web", "")).toEqual(["api", "api.web", "api.web.svc"]);
    expect(serviceDnsNames([], "web", "cluster.local")).toEqual([]);
  });

  it(`refuses more than ${MAX_SERVICES_PER_POD} Services for one pod (each slice a tenant makes would add four SANs)`, () => {
    const services = Array.from({ length: MAX_SERVICES_PER_POD + 1 }, (_, i) => `svc-${i}`);
    expect(serviceDnsNames(services.slice(1), "web", "cluster.local")).toHaveLength(4 * MAX_SERVICES_PER_POD);
    const err = (() => {
      try {
        serviceDnsNames(services, "web", "cluster.local");
      } catch (e) {
        return e;
      }
    })();
    expect(isSigilError(err, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect((err as Error).message).toBe(`autoPopulateDNSNames: ${MAX_SERVICES_PER_POD + 1} Services route to the pod, more than the ${MAX_SERVICES_PER_POD} whose names an entry may carry`);
  });
});

describe("renderPodEntry with Service names", () => {
  const ctx: RenderContext = { trustDomain: parseTrustDomain("example.org"), clusterName: "prod", clusterDomain: "cluster.local", entryIdPrefix: "k8s.prod." };
  const node: V1Node = { metadata: { name: "worker-1", uid: "node-uid" } };

  it("puts them after the dnsNameTemplates names, dropping the ones a template already gave", () => {
    const rule = compileRule("r", { spiffeIDTemplate: "spiffe://example.org/x", dnsNameTemplates: ["{{ .PodMeta.Name }}.example.com", "api.{{ .PodMeta.Namespace }}.svc"], autoPopulateDNSNames: true });
    expect(rule.autoPopulateDNSNames).toBe(true);
    const entry = renderPodEntry(rule, ctx, POD, node, serviceDnsNames(["api"], "web", ctx.clusterDomain));
    expect(entry.dnsNames).toEqual(["api-1.example.com", "api.web.svc", "api", "api.web", "api.web.svc.cluster.local"]);
  });

  it("passes an invalid name on for the server's validation (reported as an entry failure), not dropped", () => {
    const rule = compileRule("r", { spiffeIDTemplate: "spiffe://example.org/x", autoPopulateDNSNames: true });
    expect(renderPodEntry(rule, ctx, POD, node, serviceDnsNames(["api"], "web", "bad_domain")).dnsNames).toContain("api.web.svc.bad_domain");
    expect(compileRule("r", { spiffeIDTemplate: "spiffe://example.org/x" }).autoPopulateDNSNames).toBe(false);
  });
});
