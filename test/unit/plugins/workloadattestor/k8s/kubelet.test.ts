/**
 * The `k8s` workload attestor against a fake kubelet (HTTPS, bearer token,
 * a CA made for the test): the selectors of a caller's container, the retry
 * while a container is not listed yet, and every way the kubelet can fail,
 * each of which fails the attestation instead of returning fewer selectors.
 * The caller's cgroups come from a fake proc root; real cgroups are in
 * test/integration/k8s-workload.test.ts.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { parseAgentConfig } from "../../../../../agent/config/load.js";
import { formatSelector } from "../../../../../common/selector.js";
import {
  createK8sWorkloadAttestor,
  k8sWorkloadAttestorConfigSchema,
  type K8sWorkloadAttestor,
  type K8sWorkloadAttestorConfig,
} from "../../../../../plugins/workloadattestor/k8s/index.js";
import { randomContainerId, startFakeKubelet, type FakeKubelet, type FakePodSpec } from "../../../../support/kubelet.js";
import { closedLoopbackPort } from "../../../../support/ports.js";
import { createServingPki } from "../../../../support/serving-cert.js";
import { testTempDir } from "../../../../support/temp-dir.js";
import { requireTool } from "../../../../support/tools.js";

const haveOpenssl = requireTool("openssl", ["version"], "the fake kubelet's certificates are made with it");

const PID = 4242;
const CALLER = { pid: PID, uid: 1000, gid: 1000 };
const POD_UID = "2c48913c-b29f-11e7-9350-020968147796";
const APP_ID = randomContainerId();
const INIT_ID = randomContainerId();
const WEB: FakePodSpec = {
  name: "web-7d9f8-abcde",
  namespace: "prod",
  uid: POD_UID,
  serviceAccountName: "web",
  nodeName: "node-1",
  labels: { app: "web", tier: "front" },
  owners: [{ kind: "ReplicaSet", name: "web-7d9f8", uid: "5f0a6e0c-1111-4c6e-9f2b-8e1d2c3b4a59" }],
  containers: [
    { name: "web", image: "registry.example/web:1.2", imageID: "registry.example/web@sha256:aaaa", id: APP_ID },
    { name: "proxy", image: "registry.example/proxy:3", imageID: "registry.example/proxy@sha256:bbbb" },
  ],
  initContainers: [{ name: "migrate", image: "registry.example/migrate:1", imageID: "registry.example/migrate@sha256:cccc", id: INIT_ID, runtime: "cri-o" }],
};

let kubelet: FakeKubelet | undefined;
const attestors: K8sWorkloadAttestor[] = [];
afterEach(async () => {
  for (const a of attestors.splice(0)) a.close();
  await kubelet?.close();
  kubelet = undefined;
});

/** A proc root in which pid {@link PID}'s cgroup file says `cgroupText`. */
function procRoot(cgroupText: string): string {
  const root = testTempDir("sigil-k8s-proc-");
  mkdirSync(path.join(root, String(PID)));
  writeFileSync(path.join(root, String(PID), "cgroup"), cgroupText);
  return root;
}

const inContainer = (id: string): string => `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${POD_UID.replace(/-/g, "_")}.slice/cri-containerd-${id}.scope\n`;

function attestor(k: FakeKubelet, cgroupText: string, config: K8sWorkloadAttestorConfig = {}): K8sWorkloadAttestor {
  const a = createK8sWorkloadAttestor(
    { kubelet_secure_port: k.port, kubelet_ca_path: k.caPath, token_path: k.tokenPath, node_name: k.nodeName, poll_retry_interval: 10, ...config },
    { procRoot: procRoot(cgroupText), env: {} },
  );
  attestors.push(a);
  return a;
}

async function failure(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("expected the attestation to fail");
}

describe.skipIf(!haveOpenssl)("k8s workload attestor against a kubelet", () => {
  it("gives a container SPIRE's pod and container selectors", async () => {
    kubelet = await startFakeKubelet({ pods: [WEB] });
    const selectors = (await attestor(kubelet, inContainer(APP_ID)).attest(CALLER)).map(formatSelector);
    expect(selectors.sort()).toEqual(
      [
        "k8s:ns:prod",
        "k8s:sa:web",
        "k8s:pod-name:web-7d9f8-abcde",
        `k8s:pod-uid:${POD_UID}`,
        "k8s:node-name:node-1",
        "k8s:pod-label:app:web",
        "k8s:pod-label:tier:front",
        "k8s:pod-owner:ReplicaSet:web-7d9f8",
        "k8s:pod-owner-uid:ReplicaSet:5f0a6e0c-1111-4c6e-9f2b-8e1d2c3b4a59",
        "k8s:pod-image:registry.example/web:1.2",
        "k8s:pod-image:registry.example/web@sha256:aaaa",
        "k8s:pod-image:registry.example/proxy:3",
        "k8s:pod-image:registry.example/proxy@sha256:bbbb",
        "k8s:pod-image-count:2",
        "k8s:pod-init-image:registry.example/migrate:1",
        "k8s:pod-init-image:registry.example/migrate@sha256:cccc",
        "k8s:pod-init-image-count:1",
        "k8s:container-name:web",
        "k8s:container-image:registry.example/web:1.2",
        "k8s:container-image:registry.example/web@sha256:aaaa",
      ].sort(),
    );
  });

  it("an init container is found by its containerID too (cri-o:// prefix)", async () => {
    kubelet = await startFakeKubelet({ pods: [WEB] });
    const selectors = (await attestor(kubelet, inContainer(INIT_ID)).attest(CALLER)).map(formatSelector);
    expect(selectors).toContain("k8s:container-name:migrate");
    expect(selectors).toContain("k8s:container-image:registry.example/migrate:1");
    expect(selectors).not.toContain("k8s:container-name:web");
  });

  it("a process in no pod gets no k8s selectors and the kubelet is not asked", async () => {
    kubelet = await startFakeKubelet({ pods: [WEB] });
    expect(await attestor(kubelet, "12:pids:/system.slice/sshd.service\n0::/system.slice/sshd.service\n").attest(CALLER)).toEqual([]);
    expect(kubelet.requests).toBe(0);
  });

  it("asks again while the pod is not listed yet, and succeeds once it is", async () => {
    kubelet = await startFakeKubelet();
    const k = kubelet;
    k.onNextRequest(() => k.onNextRequest(() => k.addPod(WEB))); // added while the second request is answered
    const selectors = (await attestor(k, inContainer(APP_ID), { max_poll_attempts: 60 }).attest(CALLER)).map(formatSelector);
    expect(selectors).toContain("k8s:sa:web");
    expect(k.requests).toBe(2);
  });

  it("a pod whose container is not listed after max_poll_attempts fails, with no partial selectors", async () => {
    kubelet = await startFakeKubelet({ pods: [WEB] });
    const other = randomContainerId();
    const message = await failure(attestor(kubelet, inContainer(other), { max_poll_attempts: 3 }).attest(CALLER));
    expect(message).toBe(
      `workloadattestor(k8s): container ${other} of pod prod/web-7d9f8-abcde (${POD_UID}) of pid ${PID} is not in the kubelet's pod list (https://127.0.0.1:${kubelet.port}/pods) after 3 attempts`,
    );
    expect(kubelet.requests).toBe(3);
  });

  it("only pods on the configured node count", async () => {
    kubelet = await startFakeKubelet({ pods: [{ ...WEB, nodeName: "node-2" }] });
    expect(await failure(attestor(kubelet, inContainer(APP_ID), { max_poll_attempts: 1 }).attest(CALLER))).toContain(`pod ${POD_UID} of pid ${PID} is not in the kubelet's pod list`);
  });

  it("the agent's abort signal (its attestation timeout) ends the retries", async () => {
    kubelet = await startFakeKubelet();
    const controller = new AbortController();
    kubelet.onNextRequest(() => controller.abort(new Error("timed out")));
    const a = attestor(kubelet, inContainer(APP_ID), { max_poll_attempts: 60, poll_retry_interval: 3_600_000 });
    expect(await failure(a.attest(CALLER, controller.signal))).toBe("timed out");
  });

  it("a kubelet certificate the configured CA did not sign is refused; skip_kubelet_verification accepts it", async () => {
    kubelet = await startFakeKubelet({ pods: [WEB] });
    const otherCa = testTempDir("sigil-k8s-ca-");
    writeFileSync(path.join(otherCa, "ca.crt"), createServingPki("another cluster").caPem);
    const refused = await failure(attestor(kubelet, inContainer(APP_ID), { kubelet_ca_path: path.join(otherCa, "ca.crt") }).attest(CALLER));
    expect(refused).toMatch(new RegExp(`^workloadattestor\\(k8s\\): kubelet https://127\\.0\\.0\\.1:${kubelet.port}/pods: the kubelet's serving certificate is not trusted: `));
    const skipped = await attestor(kubelet, inContainer(APP_ID), { kubelet_ca_path: path.join(otherCa, "ca.crt"), skip_kubelet_verification: true }).attest(CALLER);
    expect(skipped.map(formatSelector)).toContain("k8s:ns:prod");
  });

  it("the certificate must name the node: signed by the right CA for another name, it is refused", async () => {
    kubelet = await startFakeKubelet({ pods: [{ ...WEB, nodeName: "node-9" }] });
    expect(await failure(attestor(kubelet, inContainer(APP_ID), { node_name: "node-9" }).attest(CALLER))).toContain("is not trusted");
  });

  it("no node name: the certificate must name kubelet_host; the node name may come from node_name_env", async () => {
    kubelet = await startFakeKubelet({ pods: [WEB] });
    const k = kubelet;
    const base = { kubelet_secure_port: k.port, kubelet_ca_path: k.caPath, token_path: k.tokenPath };
    const byHost = createK8sWorkloadAttestor({ ...base, kubelet_host: "localhost" }, { procRoot: procRoot(inContainer(APP_ID)), env: {} });
    const byEnv = createK8sWorkloadAttestor({ ...base, node_name_env: "NODE" }, { procRoot: procRoot(inContainer(APP_ID)), env: { NODE: "node-1" } });
    attestors.push(byHost, byEnv);
    expect((await byHost.attest(CALLER)).map(formatSelector)).toContain("k8s:ns:prod");
    expect((await byEnv.attest(CALLER)).map(formatSelector)).toContain("k8s:node-name:node-1");
  });

  it("401 (token not accepted) and 500 fail the attestation, naming the status; the token file is re-read on every request", async () => {
    kubelet = await startFakeKubelet({ pods: [WEB] });
    const a = attestor(kubelet, inContainer(APP_ID), { pod_list_cache_ttl: 0 });
    writeFileSync(kubelet.tokenPath, "rotated-away\n");
    expect(await failure(a.attest(CALLER))).toBe(`workloadattestor(k8s): kubelet https://127.0.0.1:${kubelet.port}/pods: HTTP 401 (the token was not accepted): Unauthorized`);
    writeFileSync(kubelet.tokenPath, `${kubelet.token}\n`);
    expect((await a.attest(CALLER)).length).toBeGreaterThan(0);
    kubelet.failWith(500);
    expect(await failure(a.attest(CALLER))).toContain("HTTP 500: Internal Error: fake failure");
  });

  it("an unreachable kubelet fails the attestation", async () => {
    const closed = await closedLoopbackPort();
    kubelet = await startFakeKubelet({ pods: [WEB] });
    expect(await failure(attestor(kubelet, inContainer(APP_ID), { kubelet_secure_port: closed }).attest(CALLER))).toMatch(
      new RegExp(`^workloadattestor\\(k8s\\): kubelet https://127\\.0\\.0\\.1:${closed}/pods: cannot connect \\(.*ECONNREFUSED.*\\); is the kubelet running and the port right\\?$`),
    );
  });

  it("kubelet_read_only_port: plain HTTP without a token, only when configured", async () => {
    kubelet = await startFakeKubelet({ pods: [WEB], readOnlyPort: true });
    const a = createK8sWorkloadAttestor({ kubelet_read_only_port: kubelet.port, token_path: "/nonexistent", node_name: "node-1" }, { procRoot: procRoot(inContainer(APP_ID)), env: {} });
    attestors.push(a);
    expect((await a.attest(CALLER)).map(formatSelector)).toContain("k8s:ns:prod");
    // The default is the secure port: HTTPS against a plain HTTP server fails.
    expect(await failure(attestor(kubelet, inContainer(APP_ID)).attest(CALLER))).toContain(`kubelet https://127.0.0.1:${kubelet.port}/pods: `);
  });

  it("the pod list is reused within pod_list_cache_ttl and asked again after it", async () => {
    kubelet = await startFakeKubelet({ pods: [WEB] });
    const cached = attestor(kubelet, inContainer(APP_ID), { pod_list_cache_ttl: 3_600_000 });
    await Promise.all([cached.attest(CALLER), cached.attest(CALLER)]);
    await cached.attest(CALLER);
    expect(kubelet.requests).toBe(1);
    const uncached = attestor(kubelet, inContainer(APP_ID), { pod_list_cache_ttl: 0 });
    await uncached.attest(CALLER);
    await uncached.attest(CALLER);
    expect(kubelet.requests).toBe(3);
  });
});

describe("k8s workload attestor config", () => {
  it("takes SPIRE's option names with durations, and refuses both kubelet ports at once", () => {
    const ok = k8sWorkloadAttestorConfigSchema.parse({ kubelet_secure_port: 10250, poll_retry_interval: "250ms", pod_list_cache_ttl: "2s", max_poll_attempts: 5 });
    expect(ok).toEqual({ kubelet_secure_port: 10250, poll_retry_interval: 250, pod_list_cache_ttl: 2000, max_poll_attempts: 5 });
    const both = k8sWorkloadAttestorConfigSchema.safeParse({ kubelet_secure_port: 10250, kubelet_read_only_port: 10255 });
    expect(both.error?.issues.map((i) => i.message)).toEqual(["kubelet_read_only_port and kubelet_secure_port exclude each other; set one"]);
    expect(k8sWorkloadAttestorConfigSchema.safeParse({ kubelet_port: 1 }).success).toBe(false);
  });

  it("in an agent config, `k8s:` alone takes every default, and a wrong key is named by its path", () => {
    const yaml = (k8s: string) => `agent:\n  trust_domain: example.org\n  insecure_bootstrap: true\nplugins:\n  NodeAttestor:\n    join_token:\n  WorkloadAttestor:\n    unix:\n    k8s:${k8s}\n`;
    expect(parseAgentConfig(yaml("")).plugins.WorkloadAttestor).toEqual({ unix: {}, k8s: {} });
    expect(() => parseAgentConfig(yaml("\n      poll_retry_interval: 500"))).toThrow("plugins.WorkloadAttestor.k8s.poll_retry_interval");
  });
});
