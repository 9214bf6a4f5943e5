/**
 * Workload attestation with the `k8s` attestor against a local fake kubelet
 * (HTTPS, bearer token) listing 110 pods, the kubelet's default maximum, with
 * a warm pod-list cache: what every call from a pod costs once the list is
 * fetched. Per attestation, `attestWorkload` as the agent runs it (the
 * attestor, then the caller check of /proc/<pid>/stat) on a real process:
 * when root, one moved into a real container cgroup (cgroup v2, systemd
 * layout); otherwise a fake proc root gives its cgroup file (printed).
 *
 * Baseline in the same run, on the same process: the same with the `unix`
 * attestor alone. Figure: p99 of 4,000 sequential attestations, median of 3
 * interleaved rounds. Ratio target <= 3: both read one small /proc file and
 * make about the same number of syscalls; the k8s attestor adds a parse of
 * the cgroup file, a map lookup among 110 pods and ~25 selectors, work of the
 * same order as the unix attestor's, so 3x leaves room for GC pauses at the
 * p99 while a regression that reached the kubelet per call (or scanned every
 * pod) would miss it by far.
 *
 * Run: `node --import tsx --expose-gc bench/k8s-workload-attestor.bench.ts`.
 */
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { attestWorkload } from "../agent/attestation/workload.js";
import { processStartTime, type PeerCredentials } from "../agent/endpoints/peer.js";
import { createLogger } from "../common/log.js";
import { createK8sWorkloadAttestor } from "../plugins/workloadattestor/k8s/index.js";
import type { WorkloadAttestor } from "../plugins/workloadattestor/types.js";
import { createUnixWorkloadAttestor } from "../plugins/workloadattestor/unix/index.js";
import { CGROUP_LAYOUTS, cgroupsUnavailable, createContainerCgroup, type CgroupLayout, type ContainerCgroup } from "../test/support/cgroups.js";
import { randomContainerId, startFakeKubelet, type FakePodSpec } from "../test/support/kubelet.js";
import { median, percentile, report } from "./harness.js";

const PODS = 110;
const N = 4000;
const ROUNDS = 3;
const log = createLogger({ level: "error", destination: { write: () => undefined } });

// The caller: a real process, in a real container cgroup when this machine allows it.
const sleeper = spawn("sleep", ["3600"], { stdio: "ignore" });
const pid = sleeper.pid as number;
const layout = CGROUP_LAYOUTS[2] as CgroupLayout;
const noCgroups = cgroupsUnavailable();
let cgroup: ContainerCgroup | undefined;
let fakeProc: string | undefined;
let ids: { podUid: string; containerId: string };
if (noCgroups === undefined) {
  cgroup = createContainerCgroup(layout);
  cgroup.add(pid);
  ids = cgroup;
} else {
  console.log(`note: ${noCgroups}; the caller's cgroup file comes from a fake proc root`);
  ids = { podUid: crypto.randomUUID(), containerId: randomContainerId() };
  fakeProc = mkdtempSync(path.join(tmpdir(), "sigil-bench-proc-"));
  mkdirSync(path.join(fakeProc, String(pid)));
  writeFileSync(path.join(fakeProc, String(pid), "cgroup"), `0::/${layout.containerPath(ids.podUid, ids.containerId)}\n`);
}

const pods: FakePodSpec[] = Array.from({ length: PODS }, (_, i) => ({
  name: `app-${i}-7d9f8-x${i}`,
  namespace: `ns-${i % 20}`,
  serviceAccountName: `sa-${i % 7}`,
  nodeName: "node-1",
  labels: { app: `app-${i}`, "app.kubernetes.io/part-of": "bench", tier: i % 2 ? "back" : "front" },
  owners: [{ kind: "ReplicaSet", name: `app-${i}-7d9f8`, uid: crypto.randomUUID() }],
  containers: [
    { name: "app", image: `registry.example/app-${i}:1.${i}` },
    { name: "envoy", image: "registry.example/envoy:1.30" },
  ],
  initContainers: [{ name: "init", image: "registry.example/init:2" }],
}));
pods[57] = { ...(pods[57] as FakePodSpec), uid: ids.podUid, containers: [{ name: "app", image: "registry.example/app-57:1.57", id: ids.containerId }, { name: "envoy", image: "registry.example/envoy:1.30" }] };
const kubelet = await startFakeKubelet({ nodeName: "node-1", pods });

const k8s = createK8sWorkloadAttestor(
  { kubelet_secure_port: kubelet.port, kubelet_ca_path: kubelet.caPath, token_path: kubelet.tokenPath, node_name: "node-1", pod_list_cache_ttl: 3_600_000 },
  { log, ...(fakeProc === undefined ? {} : { procRoot: fakeProc }) },
);
const unix = createUnixWorkloadAttestor({}, { log });
const peer: PeerCredentials = { pid, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, startTime: processStartTime(pid) };

async function latencies(attestors: WorkloadAttestor[]): Promise<number[]> {
  const out = new Array<number>(N);
  for (let i = 0; i < N; i++) {
    const t = performance.now();
    await attestWorkload(peer, attestors, { timeoutMs: 5_000, log });
    out[i] = performance.now() - t;
  }
  return out;
}

try {
  // Warm: the pod list fetched once, JIT settled.
  const selectors = await attestWorkload(peer, [k8s], { timeoutMs: 5_000, log });
  if (!selectors.some((s) => s.value === "pod-name:app-57-7d9f8-x57")) throw new Error(`bench: the caller was not attested as pod 57: ${selectors.join(" ")}`);
  await latencies([k8s]);
  await latencies([unix]);
  const requestsBefore = kubelet.requests;
  const k8sP99: number[] = [];
  const unixP99: number[] = [];
  const k8sP50: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    globalThis.gc?.();
    const k = await latencies([k8s]);
    globalThis.gc?.();
    const u = await latencies([unix]);
    k8sP99.push(percentile(k, 99));
    k8sP50.push(percentile(k, 50));
    unixP99.push(percentile(u, 99));
  }
  if (kubelet.requests !== requestsBefore) throw new Error("bench: the kubelet was asked during the measurement; the cache was not warm");
  console.log(`k8s attestation p50 ${median(k8sP50).toFixed(3)} ms over ${PODS} pods, ${selectors.length} selectors per call; caller in ${cgroup === undefined ? "a fake proc root" : `a real cgroup (${layout.name})`}`);
  report({
    name: "k8s-workload-attestation-p99-110-pods",
    value: median(k8sP99),
    unit: "ms",
    baseline: { value: median(unixP99), unit: "ms", what: "the unix attestor alone on the same caller, p99" },
    target: { kind: "ratio", op: "<=", bound: 3 },
  });
} finally {
  k8s.close();
  await kubelet.close();
  sleeper.kill("SIGKILL");
  await new Promise<void>((resolve) => (sleeper.exitCode !== null || sleeper.signalCode !== null ? resolve() : sleeper.once("exit", () => resolve())));
  cgroup?.remove();
  if (fakeProc !== undefined) rmSync(fakeProc, { recursive: true, force: true });
}
