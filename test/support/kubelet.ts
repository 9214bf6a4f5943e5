/**
 * A fake kubelet for tests and benchmarks: HTTPS on 127.0.0.1 (ephemeral
 * port) with a serving certificate from a CA made for it (`serving-cert.ts`,
 * OpenSSL CLI; gate with `requireTool("openssl")`), answering `GET /pods`
 * with a PodList shaped as the Kubernetes API defines it (core/v1 types.go:
 * PodList, Pod, ObjectMeta, PodSpec, PodStatus, ContainerStatus), and 401
 * without the expected bearer token. Pods can be added while it runs, as a kubelet lists a
 * container only some time after it started.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import type { V1ContainerStatus, V1Pod, V1PodList } from "@kubernetes/client-node";
import { createServingPki, type ServingPki } from "./serving-cert.js";

/** A container of a {@link FakePodSpec}. */
export interface FakeContainer {
  readonly name: string;
  readonly image: string;
  /** Default: a digest made from the image name. */
  readonly imageID?: string;
  /** The runtime's 64-hex container ID; default random. */
  readonly id?: string;
  /** Prefix of `containerID`; default `containerd`. */
  readonly runtime?: "containerd" | "cri-o" | "docker";
}

/** What a test says about a pod; {@link makePod} fills in the rest. */
export interface FakePodSpec {
  readonly name: string;
  readonly namespace: string;
  /** Default: a random UUID. */
  readonly uid?: string;
  readonly serviceAccountName?: string;
  readonly nodeName?: string;
  readonly labels?: Record<string, string>;
  readonly owners?: ReadonlyArray<{ readonly kind: string; readonly name: string; readonly uid: string }>;
  readonly containers: readonly FakeContainer[];
  readonly initContainers?: readonly FakeContainer[];
}

/** A 64-hex container ID, as containerd, CRI-O and Docker make them. */
export function randomContainerId(): string {
  return randomBytes(32).toString("hex");
}

function status(c: FakeContainer, init: boolean): V1ContainerStatus {
  const id = c.id ?? randomContainerId();
  return {
    name: c.name,
    image: c.image,
    imageID: c.imageID ?? `${c.image.split(":")[0]}@sha256:${Buffer.from(c.image).toString("hex").padEnd(64, "0").slice(0, 64)}`,
    containerID: `${c.runtime ?? "containerd"}://${id}`,
    ready: !init,
    restartCount: 0,
    started: !init,
    state: init
      ? { terminated: { exitCode: 0, reason: "Completed", startedAt: new Date("2030-01-01T00:00:00Z"), finishedAt: new Date("2030-01-01T00:00:01Z") } }
      : { running: { startedAt: new Date("2030-01-01T00:00:02Z") } },
  };
}

/** A Pod object as the kubelet lists it. */
export function makePod(spec: FakePodSpec): V1Pod {
  return {
    metadata: {
      name: spec.name,
      namespace: spec.namespace,
      uid: spec.uid ?? randomUUID(),
      labels: { ...(spec.labels ?? {}) },
      ownerReferences: (spec.owners ?? []).map((o) => ({ apiVersion: "apps/v1", kind: o.kind, name: o.name, uid: o.uid, controller: true, blockOwnerDeletion: true })),
      creationTimestamp: new Date("2030-01-01T00:00:00Z"),
    },
    spec: {
      serviceAccountName: spec.serviceAccountName ?? "default",
      ...(spec.nodeName === undefined ? {} : { nodeName: spec.nodeName }),
      containers: spec.containers.map((c) => ({ name: c.name, image: c.image })),
      initContainers: (spec.initContainers ?? []).map((c) => ({ name: c.name, image: c.image })),
    },
    status: {
      phase: "Running",
      containerStatuses: spec.containers.map((c) => status(c, false)),
      initContainerStatuses: (spec.initContainers ?? []).map((c) => status(c, true)),
    },
  };
}

/** A running fake kubelet. */
export interface FakeKubelet {
  readonly port: number;
  /** The node name its certificate carries (besides 127.0.0.1 and localhost). */
  readonly nodeName: string;
  /** Files for the attestor's config: `kubelet_ca_path`, `token_path` (the expected token). Removed by close(). */
  readonly caPath: string;
  readonly tokenPath: string;
  readonly token: string;
  /** `GET /pods` requests answered so far (any status). */
  readonly requests: number;
  /** Adds a pod (listed from the next request on); returns it. */
  addPod(spec: FakePodSpec | V1Pod): V1Pod;
  /** Answers every request with this HTTP status (500…) until called with undefined. */
  failWith(status: number | undefined): void;
  /** Calls `f` once on the next request, before it is answered. */
  onNextRequest(f: () => void): void;
  close(): Promise<void>;
}

/**
 * Starts a fake kubelet with `pods`. `pki` defaults to a fresh CA and a
 * certificate for 127.0.0.1, localhost and `nodeName`. With `readOnlyPort` it
 * serves plain HTTP and asks for no token, as the kubelet's read-only port.
 */
export async function startFakeKubelet(opts: { nodeName?: string; pods?: readonly FakePodSpec[]; pki?: ServingPki; readOnlyPort?: boolean } = {}): Promise<FakeKubelet> {
  const nodeName = opts.nodeName ?? "node-1";
  const pki = opts.pki ?? createServingPki("fake kubelet", ["127.0.0.1", "localhost", nodeName]);
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-fake-kubelet-"));
  const caPath = path.join(dir, "ca.crt");
  const tokenPath = path.join(dir, "token");
  const token = `fake-sa-token-${randomBytes(12).toString("hex")}`;
  writeFileSync(caPath, pki.caPem);
  writeFileSync(tokenPath, `${token}\n`);
  const pods: V1Pod[] = (opts.pods ?? []).map(makePod);
  let failure: number | undefined;
  let requests = 0;
  const hooks: Array<() => void> = [];
  const handler: http.RequestListener = (req, res) => {
    requests++;
    for (const h of hooks.splice(0)) h();
    if (req.method !== "GET" || req.url !== "/pods") {
      res.writeHead(404, { "content-type": "text/plain" }).end("404 page not found\n");
      return;
    }
    // The kubelet answers 401 "Unauthorized" when its TokenReview does not accept the bearer.
    if (opts.readOnlyPort !== true && req.headers.authorization !== `Bearer ${token}`) {
      res.writeHead(401, { "content-type": "text/plain" }).end("Unauthorized");
      return;
    }
    if (failure !== undefined) {
      res.writeHead(failure, { "content-type": "text/plain" }).end("Internal Error: fake failure");
      return;
    }
    const list: V1PodList = { kind: "PodList", apiVersion: "v1", metadata: {}, items: pods };
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(list));
  };
  const server = opts.readOnlyPort === true ? http.createServer(handler) : https.createServer({ cert: pki.certPem, key: pki.keyPem }, handler);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    nodeName,
    caPath,
    tokenPath,
    token,
    get requests() {
      return requests;
    },
    addPod(spec) {
      const pod = "containers" in spec ? makePod(spec) : spec;
      pods.push(pod);
      return pod;
    },
    failWith(status) {
      failure = status;
    },
    onNextRequest(f) {
      hooks.push(f);
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
