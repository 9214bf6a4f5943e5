/**
 * `issuesAgentId` of the k8s_psat server half: the IDs it would give a node of
 * a configured cluster, which the parent resolver accepts before the agent
 * attests (the registration controller parents pod entries to them).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createK8sPsatServerAttestor, k8sPsatServerConfigSchema } from "../../../../plugins/nodeattestor/k8s_psat/server.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";

const dir = mkdtempSync(join(tmpdir(), "sigil-psat-ids-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("k8s_psat issuesAgentId", () => {
  it("answers true only for /spire/agent/k8s_psat/<configured cluster>/<one segment> in its trust domain", () => {
    const kubeconfig = join(dir, "kubeconfig");
    writeFileSync(kubeconfig, "apiVersion: v1\nkind: Config\n");
    const config = k8sPsatServerConfigSchema.parse({ clusters: { prod: { service_account_allow_list: ["sigil:sigil-agent"], kube_config_file: kubeconfig } } });
    const attestor = createK8sPsatServerAttestor(config, { trustDomain: parseTrustDomain("example.org"), env: {} });
    const issues = (id: string): boolean | undefined => attestor.issuesAgentId?.(parseSpiffeId(id));
    expect(issues("spiffe://example.org/spire/agent/k8s_psat/prod/6a1e3c2b-9f0d-4e55-8d7e-0c1b2a3f4e5d")).toBe(true);
    expect(issues("spiffe://example.org/spire/agent/k8s_psat/staging/6a1e3c2b")).toBe(false);
    expect(issues("spiffe://other.org/spire/agent/k8s_psat/prod/6a1e3c2b")).toBe(false);
    expect(issues("spiffe://example.org/spire/agent/k8s_psat/prod")).toBe(false);
    expect(issues("spiffe://example.org/spire/agent/k8s_psat/prod/6a1e3c2b/extra")).toBe(false);
    expect(issues("spiffe://example.org/spire/agent/join_token/prod")).toBe(false);
    expect(issues("spiffe://example.org/ns/prod/sa/x")).toBe(false);
  });
});
