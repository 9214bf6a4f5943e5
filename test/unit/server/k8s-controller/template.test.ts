/**
 * The ClusterSPIFFEID template subset: field paths and `index` on label and
 * annotation maps render as Go's text/template would; everything else is
 * refused when compiled, naming the offset and the reason.
 */
import { describe, expect, it } from "vitest";
import { compileTemplate, type TemplateData } from "../../../../server/k8s-controller/template.js";
import { isSigilError } from "../../../../spiffe/errors.js";

const DATA: TemplateData = {
  TrustDomain: "example.org",
  ClusterName: "prod",
  ClusterDomain: "cluster.local",
  PodMeta: { Name: "api-7d9f8", Namespace: "payments", UID: "a1a1", Labels: { app: "api", "app.kubernetes.io/name": "billing" }, Annotations: { "sigil.dev/team": "pay" } },
  PodSpec: { ServiceAccountName: "api-sa", NodeName: "worker-1" },
  NodeMeta: { Name: "worker-1", UID: "n0de", Labels: { "topology.kubernetes.io/zone": "zone-a" }, Annotations: {} },
  NodeSpec: { ProviderID: "aws:///eu-west-1a/i-0abc", PodCIDR: "10.244.0.0/24" },
};

const render = (t: string): string => compileTemplate(t).render(DATA);

describe("compileTemplate", () => {
  it.each([
    ["spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}", "spiffe://example.org/ns/payments/sa/api-sa"],
    ['spiffe://{{ .TrustDomain }}/app/{{ index .PodMeta.Labels "app" }}', "spiffe://example.org/app/api"],
    ['{{ index .PodMeta.Labels "app.kubernetes.io/name" }}', "billing"],
    ['{{index .PodMeta.Annotations "sigil.dev/team"}}', "pay"],
    ['{{ index .NodeMeta.Labels "topology.kubernetes.io/zone" }}/{{ .NodeMeta.UID }}/{{ .NodeMeta.Name }}', "zone-a/n0de/worker-1"],
    ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}", "api-7d9f8.payments.svc.cluster.local"],
    ["{{ .ClusterName }}:{{ .PodMeta.UID }}:{{ .PodSpec.NodeName }}:{{ .NodeSpec.ProviderID }}", "prod:a1a1:worker-1:aws:///eu-west-1a/i-0abc"],
    ["no actions at all", "no actions at all"],
    ["", ""],
    ["a {{- .ClusterName -}} b", "aprodb"],
    ["a {{ .ClusterName -}}   /b", "a prod/b"],
  ])("%s renders %s", (template, expected) => {
    expect(render(template)).toBe(expected);
  });

  it("renders a missing map key as the empty string, as Go does", () => {
    expect(render('x/{{ index .PodMeta.Labels "missing" }}')).toBe("x/");
    expect(render('{{ index .PodMeta.Labels "a\\"b" }}')).toBe("");
  });

  it.each([
    ["{{ .PodMeta.Name | upper }}", /is not supported: only a field path/],
    ["{{ printf \"%s\" .TrustDomain }}", /is not supported/],
    ["{{ if .PodMeta.Name }}x{{ end }}", /is not supported/],
    ["{{ $x := .TrustDomain }}", /is not supported/],
    ["{{ . }}", /is not supported/],
    ["{{ .PodMeta.Nmae }}", /\.PodMeta has no field Nmae \(it has Name, Namespace, UID, Labels, Annotations\)/],
    ["{{ .Pod.Name }}", /the root has no field Pod/],
    ["{{ .PodMeta }}", /\.PodMeta is a structure; name one of its fields/],
    ["{{ .PodMeta.Labels }}", /\.PodMeta\.Labels is a map; pick one key with index/],
    ["{{ .TrustDomain.Name }}", /\.TrustDomain is a string and has no field Name/],
    ['{{ index .PodMeta.Name "x" }}', /index needs a map/],
    ["{{ index .PodMeta.Labels app }}", /is not supported/],
    ["{{ .TrustDomain ", /at offset 0: unclosed action/],
    ["a }} b", /at offset 2: unexpected }}/],
    ["{{ }}", /empty action/],
  ])("refuses %s", (template, message) => {
    let err: unknown;
    try {
      compileTemplate(template);
    } catch (e) {
      err = e;
    }
    expect(isSigilError(err, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).toContain(JSON.stringify(template));
  });
});
