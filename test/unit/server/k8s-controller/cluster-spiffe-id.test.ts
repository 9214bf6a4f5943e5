/**
 * One pod's entry under a ClusterSPIFFEID rule: ID, parent (the node's
 * k8s_psat agent), selectors, DNS names, TTLs; a stable entry ID per rule and
 * pod; render failures for IDs outside the trust domain or malformed.
 */
import type { V1Node, V1Pod } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { compileRule, defaultRule, entryIdFor, podIsLive, renderPodEntry, type RenderContext } from "../../../../server/k8s-controller/cluster-spiffe-id.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";

const ctx: RenderContext = { trustDomain: parseTrustDomain("example.org"), clusterName: "prod", clusterDomain: "cluster.local", entryIdPrefix: "k8s.prod." };
const pod: V1Pod = {
  metadata: { name: "api-1", namespace: "payments", uid: "a1a1a1a1-0000-4000-8000-000000000001", labels: { app: "api" } },
  spec: { containers: [], serviceAccountName: "api", nodeName: "worker-1" },
  status: { phase: "Running" },
};
const node: V1Node = { metadata: { name: "worker-1", uid: "6a1e3c2b-9f0d-4e55-8d7e-0c1b2a3f4e5d" } };

describe("renderPodEntry", () => {
  it("the default rule: ns/sa ID, the node's psat agent as parent, k8s:ns and k8s:pod-uid selectors", () => {
    const e = renderPodEntry(defaultRule(), ctx, pod, node);
    expect(e).toMatchObject({
      spiffeId: "spiffe://example.org/ns/payments/sa/api",
      parentId: "spiffe://example.org/spire/agent/k8s_psat/prod/6a1e3c2b-9f0d-4e55-8d7e-0c1b2a3f4e5d",
      dnsNames: [],
      x509SvidTtl: 0,
      jwtSvidTtl: 0,
    });
    expect(e.selectors.map((s) => `${s.type}:${s.value}`)).toEqual(["k8s:ns:payments", `k8s:pod-uid:${pod.metadata?.uid}`]);
    expect(e.id).toBe(entryIdFor("k8s.prod.", "(default)", pod.metadata?.uid as string));
    expect(e.id).toMatch(/^k8s\.prod\.[0-9a-f]{32}$/);
  });

  it("every spec field: selector and DNS templates, TTLs, federation, hint, admin, downstream", () => {
    const rule = compileRule("apps", {
      spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/app/{{ index .PodMeta.Labels "app" }}',
      workloadSelectorTemplates: ["k8s:sa:{{ .PodSpec.ServiceAccountName }}", "k8s:container-name:app"],
      dnsNameTemplates: ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}", "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}"],
      ttl: "1h30m",
      jwtTtl: "5m",
      federatesWith: ["partner.example"],
      hint: "apps",
      admin: true,
      downstream: true,
    });
    const e = renderPodEntry(rule, ctx, pod, node);
    expect(e.spiffeId).toBe("spiffe://example.org/app/api");
    expect(e.selectors.map((s) => `${s.type}:${s.value}`)).toEqual(["k8s:ns:payments", `k8s:pod-uid:${pod.metadata?.uid}`, "k8s:sa:api", "k8s:container-name:app"]);
    expect(e.dnsNames).toEqual(["api-1.payments.svc.cluster.local"]);
    expect([e.x509SvidTtl, e.jwtSvidTtl, e.federatesWith, e.hint, e.admin, e.downstream]).toEqual([5400, 300, ["partner.example"], "apps", true, true]);
    // Another rule, same pod: another entry; the same rule after a template change: the same one.
    expect(e.id).not.toBe(renderPodEntry(defaultRule(), ctx, pod, node).id);
    expect(renderPodEntry(compileRule("apps", { spiffeIDTemplate: "spiffe://example.org/other" }), ctx, pod, node).id).toBe(e.id);
  });

  it.each([
    ['spiffe://{{ .TrustDomain }}/x/{{ index .PodMeta.Labels "missing" }}', /rendered "spiffe:\/\/example\.org\/x\/", not a SPIFFE ID of this trust domain/],
    ["spiffe://other.org/{{ .PodMeta.Name }}", /not in trust domain example\.org/],
    ["{{ .PodMeta.Name }}", /rendered "api-1", not a SPIFFE ID/],
  ])("a render failure for %s", (template, message) => {
    let err: unknown;
    try {
      renderPodEntry(compileRule("r", { spiffeIDTemplate: template }), ctx, pod, node);
    } catch (e) {
      err = e;
    }
    expect(isSigilError(err, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect((err as Error).message).toMatch(message);
  });

  it("quotes at most a short prefix of what a pod's annotation rendered (the message is logged and kept per pod)", () => {
    const big = "a".repeat(200_000);
    const hostile: V1Pod = { ...pod, metadata: { ...pod.metadata, annotations: { path: big } } };
    for (const spec of [
      { spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/{{ index .PodMeta.Annotations "path" }}' },
      { spiffeIDTemplate: "spiffe://example.org/a", workloadSelectorTemplates: ['{{ index .PodMeta.Annotations "path" }}'] },
    ]) {
      let err: unknown;
      try {
        renderPodEntry(compileRule("r", spec), ctx, hostile, node);
      } catch (e) {
        err = e;
      }
      expect(isSigilError(err, "ERR_INVALID_ARGUMENT")).toBe(true);
      expect((err as Error).message.length).toBeLessThan(1_000);
    }
  });

  it("a selector template that renders no selector is a render failure", () => {
    const rule = compileRule("r", { spiffeIDTemplate: "spiffe://example.org/a", workloadSelectorTemplates: ['k8s:{{ index .PodMeta.Labels "none" }}'] });
    expect(() => renderPodEntry(rule, ctx, pod, node)).toThrow(/workloadSelectorTemplates\[0\] rendered "k8s:", not a selector/);
  });
});

describe("compileRule", () => {
  it.each([
    [{}, /spec\.spiffeIDTemplate: is required/],
    [{ spiffeIDTemplate: "spiffe://x/{{ .Nope }}" }, /spec\.spiffeIDTemplate: template .* the root has no field Nope/],
    [{ spiffeIDTemplate: "spiffe://x/a", ttl: "soon" }, /spec\.ttl: "soon" is not a duration/],
    [{ spiffeIDTemplate: "spiffe://x/a", dnsNameTemplates: ["{{ .PodMeta }}"] }, /spec\.dnsNameTemplates\[0\]: /],
    [{ spiffeIDTemplate: "spiffe://x/a", podSelector: { matchExpressions: [{ key: "a", operator: "Near" }] } }, /spec\.podSelector\.matchExpressions\[0\]\.operator/],
  ])("refuses %j", (spec, message) => {
    expect(() => compileRule("r", spec)).toThrow(message);
  });
});

describe("podIsLive", () => {
  it("a scheduled pod that has not finished", () => {
    expect(podIsLive(pod)).toBe(true);
    expect(podIsLive({ ...pod, status: { phase: "Pending" } })).toBe(true);
    expect(podIsLive({ ...pod, spec: { containers: [] } })).toBe(false);
    expect(podIsLive({ ...pod, status: { phase: "Succeeded" } })).toBe(false);
    expect(podIsLive({ ...pod, status: { phase: "Failed" } })).toBe(false);
  });
});
