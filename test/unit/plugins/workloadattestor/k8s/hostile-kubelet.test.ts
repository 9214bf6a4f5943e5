/**
 * The `k8s` workload attestor against a kubelet that misbehaves (answers
 * slowly, lists a pod or a container twice, sends objects of the wrong
 * shape, redirects) and against garbage config (a token path that is a
 * device or a FIFO, a host that is not a host, durations no timer can hold).
 * Every case fails the attestation with a clear `Unavailable` error, in
 * bounded time and memory, never with fewer or other selectors.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { isSigilError } from "../../../../../spiffe/errors.js";
import { createK8sWorkloadAttestor, k8sWorkloadAttestorConfigSchema, type K8sWorkloadAttestor } from "../../../../../plugins/workloadattestor/k8s/index.js";
import { createKubeletClient } from "../../../../../plugins/workloadattestor/k8s/kubelet.js";
import { makePod, randomContainerId, type FakePodSpec } from "../../../../support/kubelet.js";
import { testTempDir } from "../../../../support/temp-dir.js";

const PID = 4242;
const CALLER = { pid: PID, uid: 1000, gid: 1000 };
const POD_UID = "2c48913c-b29f-11e7-9350-020968147796";
const APP_ID = randomContainerId();
const WEB: FakePodSpec = {
  name: "web-1",
  namespace: "prod",
  uid: POD_UID,
  serviceAccountName: "web",
  nodeName: "node-1",
  containers: [{ name: "web", image: "registry.example/web:1.2", id: APP_ID }],
};
const IN_CONTAINER = `0::/kubepods/burstable/pod${POD_UID}/${APP_ID}\n`;

const servers: http.Server[] = [];
const attestors: K8sWorkloadAttestor[] = [];
afterEach(async () => {
  for (const a of attestors.splice(0)) a.close();
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
});

/** A plain-HTTP "kubelet" (the read-only port's scheme) answering with `handler`. */
async function kubeletServer(handler: http.RequestListener): Promise<number> {
  const s = http.createServer(handler);
  servers.push(s);
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", () => resolve()));
  return (s.address() as AddressInfo).port;
}

/** A kubelet answering every request with `body` as a PodList's JSON. */
function podListServer(items: unknown[]): Promise<number> {
  return kubeletServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ kind: "PodList", apiVersion: "v1", metadata: {}, items })));
}

function procRoot(cgroupText: string): string {
  const root = testTempDir("sigil-k8s-proc-");
  mkdirSync(path.join(root, String(PID)));
  writeFileSync(path.join(root, String(PID), "cgroup"), cgroupText);
  return root;
}

function readOnlyAttestor(port: number, extra: Record<string, unknown> = {}): K8sWorkloadAttestor {
  const a = createK8sWorkloadAttestor(
    { kubelet_read_only_port: port, node_name: "node-1", max_poll_attempts: 2, poll_retry_interval: 10, ...extra },
    { procRoot: procRoot(IN_CONTAINER), env: {} },
  );
  attestors.push(a);
  return a;
}

async function failure(p: Promise<unknown>): Promise<{ code: string | undefined; message: string }> {
  try {
    await p;
  } catch (e) {
    return { code: isSigilError(e) ? e.code : undefined, message: (e as Error).message };
  }
  throw new Error("expected a failure");
}

describe("a slow kubelet", () => {
  it("an answer that trickles in is abandoned once the request's whole time is up, not only after a silence", async () => {
    // Headers at once, then one byte every 50 ms: never silent for long, never done.
    const port = await kubeletServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      const t = setInterval(() => res.write(" "), 50);
      res.on("close", () => clearInterval(t));
    });
    const client = createKubeletClient({ host: "127.0.0.1", scheme: "http", port, cacheTtlMs: 0, requestTimeoutMs: 300 });
    const started = performance.now();
    const f = await failure(client.pods());
    client.close();
    expect(performance.now() - started).toBeLessThan(3_000);
    expect(f).toEqual({ code: "ERR_UNAVAILABLE", message: `workloadattestor(k8s): kubelet http://127.0.0.1:${port}/pods: no complete answer within 300 ms` });
  });

  it("a caller that joins a request already in flight still stops waiting when its own signal aborts", async () => {
    const port = await kubeletServer(() => undefined); // accepts, never answers
    const client = createKubeletClient({ host: "127.0.0.1", scheme: "http", port, cacheTtlMs: 0, requestTimeoutMs: 20_000 });
    const first = client.pods();
    first.catch(() => undefined);
    const controller = new AbortController();
    const joined = client.pods({ signal: controller.signal });
    setTimeout(() => controller.abort(new Error("the caller's time is up")), 50);
    const started = performance.now();
    expect((await failure(joined)).message).toBe("the caller's time is up");
    expect(performance.now() - started).toBeLessThan(2_000);
    client.close();
  });
});

describe("a kubelet whose answer is ambiguous or malformed", () => {
  it("the caller's pod listed twice on the node fails, rather than pick one", async () => {
    const port = await podListServer([makePod(WEB), makePod({ ...WEB, name: "impostor", serviceAccountName: "admin" })]);
    const f = await failure(readOnlyAttestor(port).attest(CALLER));
    expect(f.code).toBe("ERR_UNAVAILABLE");
    expect(f.message).toContain(`lists pod UID ${POD_UID} more than once`);
  });

  it("the caller's container ID listed for two containers of its pod fails, rather than pick one", async () => {
    const pod = makePod({ ...WEB, initContainers: [{ name: "admin-tools", image: "registry.example/tools:1", id: APP_ID }] });
    const port = await podListServer([pod]);
    const f = await failure(readOnlyAttestor(port).attest(CALLER));
    expect(f.code).toBe("ERR_UNAVAILABLE");
    expect(f.message).toContain(`lists container ${APP_ID} more than once in pod prod/web-1`);
  });

  it.each([
    ["containerStatuses is not a list", (p: Record<string, any>) => (p.status.containerStatuses = { 0: p.status.containerStatuses[0] })],
    ["a containerID is not a string", (p: Record<string, any>) => (p.status.containerStatuses[0].containerID = 42)],
    ["labels is not an object of strings", (p: Record<string, any>) => (p.metadata.labels = { app: { nested: true } })],
    ["ownerReferences is not a list", (p: Record<string, any>) => (p.metadata.ownerReferences = "ReplicaSet")],
    ["the namespace is not a string", (p: Record<string, any>) => (p.metadata.namespace = ["prod"])],
  ])("%s: fails as Unavailable naming the pod, not with a TypeError or a made-up selector", async (_name, mutate) => {
    const pod = JSON.parse(JSON.stringify(makePod({ ...WEB, labels: { app: "web" } }))) as Record<string, any>;
    mutate(pod);
    const port = await podListServer([pod]);
    const f = await failure(readOnlyAttestor(port).attest(CALLER));
    expect(f.code).toBe("ERR_UNAVAILABLE");
    expect(f.message).toMatch(/^workloadattestor\(k8s\): the kubelet's entry for pod .* is malformed: /);
  });

  it("an ephemeral container (kubectl debug) is refused at once, naming it, not polled for until the time is up", async () => {
    const pod = makePod({ ...WEB, containers: [{ name: "web", image: "registry.example/web:1.2" }] }) as Record<string, any>;
    pod.status.ephemeralContainerStatuses = [{ name: "debugger-x7", image: "busybox:1", imageID: "busybox@sha256:dddd", containerID: `containerd://${APP_ID}`, ready: false, restartCount: 0 }];
    let requests = 0;
    const port = await kubeletServer((_req, res) => {
      requests++;
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ kind: "PodList", apiVersion: "v1", metadata: {}, items: [pod] }));
    });
    const f = await failure(readOnlyAttestor(port, { max_poll_attempts: 60 }).attest(CALLER));
    expect(f).toEqual({
      code: "ERR_UNAVAILABLE",
      message: `workloadattestor(k8s): container ${APP_ID} of pid ${PID} is the ephemeral container debugger-x7 of pod prod/web-1 (${POD_UID}); ephemeral containers get no pod identity`,
    });
    expect(requests).toBe(1);
  });

  it("a redirect is not followed: the attestation fails naming the status", async () => {
    const port = await kubeletServer((_req, res) => res.writeHead(302, { location: "http://192.0.2.1/pods" }).end());
    const f = await failure(readOnlyAttestor(port).attest(CALLER));
    expect(f).toEqual({ code: "ERR_UNAVAILABLE", message: `workloadattestor(k8s): kubelet http://127.0.0.1:${port}/pods: HTTP 302: ` });
  });
});

describe("garbage config", () => {
  it("a token_path that is a device or a FIFO fails at once with a clear error, without reading it whole or blocking", async () => {
    let requests = 0;
    const port = await kubeletServer((_req, res) => {
      requests++;
      res.writeHead(500).end();
    });
    const dir = testTempDir("sigil-k8s-token-");
    const fifo = path.join(dir, "fifo");
    execFileSync("mkfifo", [fifo]);
    const big = path.join(dir, "big");
    writeFileSync(big, Buffer.alloc(2 << 20, 0x61));
    for (const [tokenPath, problem] of [
      ["/dev/zero", "/dev/zero is not a regular file"],
      [fifo, `${fifo} is not a regular file`],
      [big, `${big} is larger than`],
    ] as const) {
      // The secure port's client reads the token before it connects (plain HTTP here: it never gets that far).
      const client = createKubeletClient({ host: "127.0.0.1", scheme: "https", port, cacheTtlMs: 0, tokenPath, skipVerification: true });
      const f = await failure(client.pods());
      client.close();
      expect(f.code).toBe("ERR_UNAVAILABLE");
      expect(f.message).toContain(`cannot read token_path ${tokenPath}: ${problem}`);
    }
    expect(requests).toBe(0);
  });

  it("a kubelet_ca_path that is a device fails with a clear error", async () => {
    const dir = testTempDir("sigil-k8s-token-");
    writeFileSync(path.join(dir, "t"), "token\n");
    const client = createKubeletClient({ host: "127.0.0.1", scheme: "https", port: 1, cacheTtlMs: 0, tokenPath: path.join(dir, "t"), caPath: "/dev/zero" });
    const f = await failure(client.pods());
    client.close();
    expect(f.message).toContain("cannot read kubelet_ca_path /dev/zero: /dev/zero is not a regular file");
  });

  it.each([
    [{ kubelet_host: "10.0.0.1/evil" }, "kubelet_host"],
    [{ kubelet_host: "user@kubelet.example" }, "kubelet_host"],
    [{ kubelet_host: "kubelet.example:10250" }, "kubelet_host"],
    [{ kubelet_host: "[::1]" }, "kubelet_host"],
    [{ kubelet_host: " node-1" }, "kubelet_host"],
    [{ node_name: "node 1" }, "node_name"],
    [{ poll_retry_interval: "1000h" }, "poll_retry_interval"],
    [{ pod_list_cache_ttl: "1000h" }, "pod_list_cache_ttl"],
  ])("%o is refused, naming %s", (config, key) => {
    const r = k8sWorkloadAttestorConfigSchema.safeParse(config);
    expect(r.success).toBe(false);
    expect(r.error?.issues.map((i) => i.path.join("."))).toEqual([key]);
  });

  it.each([{ kubelet_host: "::1" }, { kubelet_host: "10.0.0.1" }, { kubelet_host: "node-1.example" }, { node_name: "ip-10-0-0-1.eu-west-1.compute.internal" }, { poll_retry_interval: "1m" }, { pod_list_cache_ttl: "1m" }])(
    "%o is accepted",
    (config) => {
      expect(k8sWorkloadAttestorConfigSchema.safeParse(config).success).toBe(true);
    },
  );
});
