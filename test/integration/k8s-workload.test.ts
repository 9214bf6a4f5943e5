/**
 * The `k8s` workload attestor end to end: real `sigil-server` and
 * `sigil-agent` processes (the agent with the `unix` and `k8s` workload
 * attestors, the latter pointed at a fake kubelet over HTTPS with a bearer
 * token), and workload processes moved into REAL cgroups in each layout the
 * kubelet makes (test/support/cgroups.ts) before they call the Workload API.
 *
 * - A workload in a pod's container cgroup gets the SVID of the entry for its
 *   pod's namespace and service account (`k8s:ns` + `k8s:sa`), one case per
 *   layout; the attestor found its pod only through the agent's read of
 *   `/proc/<pid>/cgroup`.
 * - A process in no pod gets only its `unix` entry.
 * - A container the kubelet does not list yet gets its SVID once it is listed.
 * - With the kubelet unreachable, a pod's workload is refused (Unavailable),
 *   not handed the looser `unix` entry it would otherwise match.
 *
 * Needs root (cgroups, workloads as another uid) and openssl; skipped with a
 * reason elsewhere, a failure under CI=true.
 */
import { create } from "@bufbuild/protobuf";
import { credentials, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { CGROUP_LAYOUTS, cgroupsUnavailable, createContainerCgroup, type CgroupLayout, type ContainerCgroup } from "../support/cgroups.js";
import { startFakeKubelet, type FakeKubelet, type FakePodSpec } from "../support/kubelet.js";
import { closedLoopbackPort } from "../support/ports.js";
import { toolAvailable } from "../support/tools.js";
import { startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { runWorkloadInCgroup } from "./support/cgroup-workload.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const WORKLOAD = { uid: 4411, gid: 4411 };
const UNIX_ID = `spiffe://example.org/unix/${WORKLOAD.uid}`;
const NODE = "node-1";
const nsOf = (i: number): string => `team-${i}`;
const k8sIdOf = (i: number): string => `spiffe://example.org/ns/${nsOf(i)}/sa/app`;
/** Namespaces: one per layout, then one for the not-yet-listed case, one for the unreachable kubelet. */
const LATE = CGROUP_LAYOUTS.length;
const UNREACHABLE = CGROUP_LAYOUTS.length + 1;

const unavailable = cgroupsUnavailable() ?? (toolAvailable("openssl") ? undefined : "openssl is not available (the fake kubelet's certificates)");
if (unavailable !== undefined) {
  if (process.env.CI === "true") throw new Error(`k8s-workload: ${unavailable}; under CI=true this is a failure (CI runs as root with cgroups mounted)`);
  console.warn(`SKIP: k8s-workload: ${unavailable}; skipped on this machine`);
}

function podFor(i: number, cg: ContainerCgroup, layout: CgroupLayout): FakePodSpec {
  return {
    name: `app-${i}`,
    namespace: nsOf(i),
    uid: cg.podUid,
    serviceAccountName: "app",
    nodeName: NODE,
    labels: { app: "app" },
    containers: [{ name: "app", image: "registry.example/app:1", id: cg.containerId, runtime: layout.runtime }],
  };
}

function k8sYaml(kubelet: FakeKubelet, port: number): string {
  return `    k8s:
      kubelet_secure_port: ${port}
      kubelet_ca_path: ${kubelet.caPath}
      token_path: ${kubelet.tokenPath}
      node_name: ${NODE}
      poll_retry_interval: 100ms
      max_poll_attempts: 40
`;
}

let srv: ServerProcess | undefined;
let agent: AgentProcess | undefined;
let cutOff: AgentProcess | undefined;
let kubelet: FakeKubelet | undefined;

describe.skipIf(unavailable !== undefined)("k8s workload attestation with real cgroups, server and agent (needs root)", () => {
  beforeAll(async () => {
    kubelet = await startFakeKubelet({ nodeName: NODE });
    srv = await startServerProcess();
    const target = `unix:${srv.socketPath}`;
    const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
    const [tok, tok2] = [await agentAdmin.createJoinToken({ ttl: 600 }), await agentAdmin.createJoinToken({ ttl: 600 })];
    agentAdmin.close();
    const entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
    const entries = [tok.agentId, tok2.agentId].flatMap((parentId) => [
      create(EntrySchema, { spiffeId: UNIX_ID, parentId, selectors: [{ type: "unix", value: `uid:${WORKLOAD.uid}` }] }),
      ...Array.from({ length: UNREACHABLE + 1 }, (_, i) =>
        create(EntrySchema, { spiffeId: k8sIdOf(i), parentId, selectors: [{ type: "k8s", value: `ns:${nsOf(i)}` }, { type: "k8s", value: "sa:app" }] }),
      ),
    ]);
    const created = await entryAdmin.batchCreateEntry({ entries });
    entryAdmin.close();
    expect(created.results.every((r) => r.status?.code === 0)).toBe(true);
    const bundlePem = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    [agent, cutOff] = await Promise.all([
      startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem, joinToken: tok.token, extraWorkloadAttestorsYaml: k8sYaml(kubelet, kubelet.port) }),
      startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem, joinToken: tok2.token, extraWorkloadAttestorsYaml: k8sYaml(kubelet, await closedLoopbackPort()) }),
    ]);
  }, 120_000);

  afterAll(async () => {
    await Promise.all([agent?.stop(), cutOff?.stop()]);
    await srv?.stop();
    await kubelet?.close();
  });

  for (const [i, layout] of CGROUP_LAYOUTS.entries()) {
    it(`${layout.name}: a workload in the pod's container gets its k8s:ns + k8s:sa entry`, async () => {
      const cg = createContainerCgroup(layout);
      try {
        kubelet?.addPod(podFor(i, cg, layout));
        const r = await runWorkloadInCgroup((agent as AgentProcess).socketPath, cg, WORKLOAD);
        expect(r).toEqual({ ids: [k8sIdOf(i), UNIX_ID].sort() });
      } finally {
        cg.remove();
      }
    });
  }

  it("a process in no pod gets only its unix entry", async () => {
    expect(await runWorkloadInCgroup((agent as AgentProcess).socketPath, undefined, WORKLOAD)).toEqual({ ids: [UNIX_ID] });
  });

  it("a container the kubelet does not list yet gets its SVID once it is listed", async () => {
    const k = kubelet as FakeKubelet;
    const layout = CGROUP_LAYOUTS[2] as CgroupLayout;
    const cg = createContainerCgroup(layout);
    try {
      // Listed from the second pod-list request from now on: the first answer lacks it.
      k.onNextRequest(() => k.onNextRequest(() => k.addPod(podFor(LATE, cg, layout))));
      const r = await runWorkloadInCgroup((agent as AgentProcess).socketPath, cg, WORKLOAD);
      expect(r).toEqual({ ids: [k8sIdOf(LATE), UNIX_ID].sort() });
      const retried = await (agent as AgentProcess).waitForLog((l) => typeof l.msg === "string" && l.msg.includes(`pod ${cg.podUid} not listed by the kubelet yet`));
      expect(retried.attempt).toBe(1);
    } finally {
      cg.remove();
    }
  });

  it("with the kubelet unreachable, a pod's workload is refused (Unavailable), not given its looser unix entry", async () => {
    const layout = CGROUP_LAYOUTS[0] as CgroupLayout;
    const cg = createContainerCgroup(layout);
    try {
      kubelet?.addPod(podFor(UNREACHABLE, cg, layout));
      const r = await runWorkloadInCgroup((cutOff as AgentProcess).socketPath, cg, WORKLOAD);
      expect(r.error?.code).toBe(status.UNAVAILABLE);
      expect(r.ids).toBeUndefined();
      const line = await (cutOff as AgentProcess).waitForLog((l) => l.msg === 'Workload attestor "k8s" failed; the call is refused');
      expect(JSON.stringify(line.err)).toContain("cannot connect");
      // The same agent still serves a process in no pod.
      expect(await runWorkloadInCgroup((cutOff as AgentProcess).socketPath, undefined, WORKLOAD)).toEqual({ ids: [UNIX_ID] });
    } finally {
      cg.remove();
    }
  });
});
