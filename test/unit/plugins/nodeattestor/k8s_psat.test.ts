/**
 * The `k8s_psat` node attestor: its server half against a local Kubernetes API
 * server (test/support/kube-api.ts) through the real @kubernetes/client-node,
 * its agent half against token files, and its config through the real config
 * loaders (key paths in every message).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createNetServer, type AddressInfo, type Socket } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAgentConfig } from "../../../../agent/config/load.js";
import { formatSelector } from "../../../../common/selector.js";
import { createK8sPsatAgentAttestor } from "../../../../plugins/nodeattestor/k8s_psat/agent.js";
import { createKubeApi, type KubeApi } from "../../../../plugins/nodeattestor/k8s_psat/kube-api.js";
import { encodeK8sPsatPayload, parseK8sPsatPayload } from "../../../../plugins/nodeattestor/k8s_psat/payload.js";
import { createK8sPsatServerAttestor, k8sPsatServerConfigSchema } from "../../../../plugins/nodeattestor/k8s_psat/server.js";
import type { ServerNodeAttestor } from "../../../../plugins/nodeattestor/types.js";
import { parseServerConfig } from "../../../../server/config/load.js";
import { isSigilError, type ErrorCode } from "../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { EXAMPLE_AGENT_POD, EXAMPLE_NODE, opaqueToken, startFakeKubeApi, type FakeKubeApi, type FakeNode, type FakePod } from "../../../support/kube-api.js";
import { createServingPki } from "../../../support/serving-cert.js";
import { testTempDir } from "../../../support/temp-dir.js";
import { closedLoopbackPort } from "../../../support/ports.js";
import { requireTool } from "../../../support/tools.js";

const td = parseTrustDomain("example.org");
const noChallenge = async (): Promise<Uint8Array> => {
  throw new Error("k8s_psat never challenges");
};
const haveOpenssl = requireTool("openssl", ["version"], "the fake API server's certificate");

const NODE = EXAMPLE_NODE;
const POD = EXAMPLE_AGENT_POD;
const AGENT_ID = `spiffe://example.org/spire/agent/k8s_psat/prod/${NODE.uid}`;

let api: FakeKubeApi;

/** Refusal code and message of a promise that must reject with a SigilError. */
async function refusal(p: Promise<unknown>): Promise<{ code: ErrorCode; message: string }> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  if (!isSigilError(e)) throw new Error(`expected a SigilError, got ${String(e)}`);
  return { code: e.code, message: e.message };
}

/** A server half for cluster `prod` (allow list sigil:sigil-agent) talking to the fake through a kubeconfig. */
function serverHalf(overrides: Record<string, unknown> = {}, kubeconfig = api.writeKubeconfig(testTempDir("sigil-k8s-psat-"))): ServerNodeAttestor {
  const config = k8sPsatServerConfigSchema.parse({
    clusters: {
      prod: {
        service_account_allow_list: ["sigil:sigil-agent"],
        kube_config_file: kubeconfig,
        allowed_pod_label_keys: ["app", "missing"],
        allowed_node_label_keys: ["topology.kubernetes.io/zone"],
        ...overrides,
      },
    },
  });
  return createK8sPsatServerAttestor(config, { trustDomain: td, env: {} });
}

const payload = (token: string, cluster = "prod"): Uint8Array => encodeK8sPsatPayload({ cluster, token });

describe.skipIf(!haveOpenssl)("k8s_psat server half against the Kubernetes API", () => {
  beforeAll(async () => {
    api = await startFakeKubeApi();
  });
  afterAll(async () => {
    await api?.close();
  });

  function resetWorld(): void {
    api.staleTokenReviews = false;
    api.forbidden.clear();
    api.putNode(NODE);
    api.putPod(POD);
  }

  it("attests a pod-bound token: the agent ID names the node's UID; selectors come from the TokenReview, pod and node, labels only for allow-listed keys", async () => {
    resetWorld();
    const server = serverHalf();
    // The token's own claims say kube-system/lies; only the API server's answers count.
    const token = api.projectedToken(POD);
    const result = await server.attest(payload(token), noChallenge);
    expect(result.agentId.toString()).toBe(AGENT_ID);
    expect(result.canReattest).toBe(true);
    expect(result.selectors.map(formatSelector)).toEqual([
      "k8s_psat:cluster:prod",
      "k8s_psat:agent_ns:sigil",
      "k8s_psat:agent_sa:sigil-agent",
      `k8s_psat:agent_pod_name:${POD.name}`,
      `k8s_psat:agent_pod_uid:${POD.uid}`,
      `k8s_psat:agent_node_name:${NODE.name}`,
      `k8s_psat:agent_node_uid:${NODE.uid}`,
      "k8s_psat:agent_node_ip:192.0.2.11",
      "k8s_psat:agent_pod_label:app:sigil-agent",
      "k8s_psat:agent_node_label:topology.kubernetes.io/zone:zone-a",
    ]);
    // What went over the wire: the server's bearer token, the TokenReview with the default audience, then the pod and node.
    const mine = api.requests.slice(-3);
    expect(mine.map((r) => `${r.method} ${r.path}`)).toEqual([
      "POST /apis/authentication.k8s.io/v1/tokenreviews",
      `GET /api/v1/namespaces/sigil/pods/${POD.name}`,
      `GET /api/v1/nodes/${NODE.name}`,
    ]);
    expect(mine.every((r) => r.authorization === `Bearer ${api.bearerToken}`)).toBe(true);
    expect(mine[0]?.body).toEqual({ apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token, audiences: ["sigil-server"] } });
  });

  it("a token without node extras (Kubernetes before 1.32) attests from the pod's node; configured audiences replace the default", async () => {
    resetWorld();
    const token = api.addToken({
      username: "system:serviceaccount:sigil:sigil-agent",
      extra: { "authentication.kubernetes.io/pod-name": [POD.name], "authentication.kubernetes.io/pod-uid": [POD.uid] },
      audiences: ["spire-server", "other"],
    });
    const result = await serverHalf({ audience: ["spire-server"] }).attest(payload(token), noChallenge);
    expect(result.agentId.toString()).toBe(AGENT_ID);
    expect((api.requests.at(-3)?.body as { spec: { audiences: string[] } }).spec.audiences).toEqual(["spire-server"]);
  });

  it("the same node attests again with a fresh token under the same agent ID; the agent half reads the rotated token file each time", async () => {
    resetWorld();
    const server = serverHalf();
    const dir = testTempDir("sigil-k8s-psat-agent-");
    const tokenPath = join(dir, "token");
    const agent = createK8sPsatAgentAttestor({ cluster: "prod", token_path: tokenPath });
    const first = api.projectedToken(POD);
    writeFileSync(tokenPath, `${first}\n`);
    const a = await server.attest(await agent.payload(), noChallenge);
    // The kubelet rotates the token: a new file content, the old token expired.
    const second = api.projectedToken(POD);
    writeFileSync(tokenPath, second);
    api.addToken({ username: "system:serviceaccount:sigil:sigil-agent", audiences: ["sigil-server"], invalid: "service account token has expired" }, first);
    const sent = await agent.payload();
    expect(parseK8sPsatPayload(sent).token).toBe(second);
    const b = await server.attest(sent, noChallenge);
    expect(b.agentId.toString()).toBe(a.agentId.toString());
    expect(b.canReattest).toBe(true);
  });

  describe("refusals name the problem", () => {
    const cases: Array<[string, () => Uint8Array, ErrorCode, RegExp]> = [
      ["a token the TokenReview rejects", () => payload(opaqueToken()), "ERR_PERMISSION_DENIED", /^k8s_psat: the Kubernetes API of cluster "prod" did not authenticate the token: \[invalid bearer token/],
      [
        "a token for another audience",
        () => payload(api.projectedToken(POD, { audiences: ["vault"] })),
        "ERR_PERMISSION_DENIED",
        /did not authenticate the token: \[invalid bearer token, token audiences \["vault"\] is invalid for the target audiences \["sigil-server"\]\]/,
      ],
      [
        "an expired token",
        () => payload(api.addToken({ username: "system:serviceaccount:sigil:sigil-agent", audiences: ["sigil-server"], invalid: "service account token has expired" })),
        "ERR_PERMISSION_DENIED",
        /did not authenticate the token: \[invalid bearer token, service account token has expired\]/,
      ],
      [
        "an unlisted service account",
        () => {
          const pod = { ...POD, name: "debug-shell", uid: "11111111-2222-4333-8444-555555555555", serviceAccountName: "default" };
          api.putPod(pod);
          return payload(api.projectedToken(pod));
        },
        "ERR_PERMISSION_DENIED",
        /^k8s_psat: service account sigil:default is not in cluster "prod"'s service_account_allow_list$/,
      ],
      ["an unknown cluster", () => payload(api.projectedToken(POD), "staging"), "ERR_PERMISSION_DENIED", /^k8s_psat: cluster "staging" is not configured on this server$/],
      [
        "a user that is not a service account",
        () => payload(api.addToken({ username: "alice", audiences: ["sigil-server"] })),
        "ERR_PERMISSION_DENIED",
        /the token of cluster "prod" belongs to "alice", not a service account/,
      ],
      [
        "a service account token not bound to a pod (a legacy Secret token)",
        () => payload(api.addToken({ username: "system:serviceaccount:sigil:sigil-agent", audiences: ["sigil-server"] })),
        "ERR_PERMISSION_DENIED",
        /the token of sigil:sigil-agent in cluster "prod" is not bound to a pod .*mount a projected service account token/,
      ],
      [
        "a token whose pod was deleted (the API server's review notices)",
        () => {
          const token = api.projectedToken(POD);
          api.deletePod(POD.namespace, POD.name);
          return payload(token);
        },
        "ERR_PERMISSION_DENIED",
        /did not authenticate the token: \[invalid bearer token, pods "sigil-agent-x7k2p" not found\]/,
      ],
      [
        "a token whose pod has terminated (evicted: phase Failed)",
        () => {
          api.putPod({ ...POD, phase: "Failed" });
          return payload(api.projectedToken(POD));
        },
        "ERR_PERMISSION_DENIED",
        /^k8s_psat: pod sigil\/sigil-agent-x7k2p in cluster "prod" has terminated \(phase Failed\)$/,
      ],
      [
        "a token whose pod was deleted after a cached review (GET pod: 404)",
        () => {
          const token = api.projectedToken(POD);
          api.staleTokenReviews = true;
          api.deletePod(POD.namespace, POD.name);
          return payload(token);
        },
        "ERR_PERMISSION_DENIED",
        /^k8s_psat: pod sigil\/sigil-agent-x7k2p, which the token is bound to, no longer exists in cluster "prod"$/,
      ],
      [
        "a token whose pod was replaced under the same name",
        () => {
          const token = api.projectedToken(POD);
          api.staleTokenReviews = true;
          api.putPod({ ...POD, uid: "99999999-8888-4777-8666-555555555555" });
          return payload(token);
        },
        "ERR_PERMISSION_DENIED",
        /has UID 99999999-8888-4777-8666-555555555555, but the token is bound to UID 0f9e8d7c-.*: the pod was replaced/,
      ],
      [
        "a pod that now runs as another service account than the token's",
        () => {
          const token = api.projectedToken(POD);
          api.putPod({ ...POD, serviceAccountName: "builder" });
          return payload(token);
        },
        "ERR_PERMISSION_DENIED",
        /^k8s_psat: pod sigil\/sigil-agent-x7k2p in cluster "prod" runs as service account builder, not sigil-agent$/,
      ],
      [
        "a pod not scheduled on a node",
        () => {
          api.putPod({ ...POD, nodeName: "" });
          return payload(api.projectedToken({ ...POD, nodeName: "" }));
        },
        "ERR_PERMISSION_DENIED",
        /^k8s_psat: pod sigil\/sigil-agent-x7k2p in cluster "prod" is not scheduled on a node$/,
      ],
      [
        "a token whose node was deleted (GET node: 404)",
        () => {
          api.deleteNode(NODE.name);
          return payload(api.projectedToken(POD));
        },
        "ERR_PERMISSION_DENIED",
        /^k8s_psat: node worker-1, where pod sigil\/sigil-agent-x7k2p runs, no longer exists in cluster "prod"$/,
      ],
      [
        "a token bound to another node than the pod's",
        () => {
          const token = api.projectedToken(POD);
          api.putPod({ ...POD, nodeName: "worker-2" });
          api.putNode({ ...NODE, name: "worker-2", uid: "22222222-3333-4444-8555-666666666666" });
          return payload(token);
        },
        "ERR_PERMISSION_DENIED",
        /the token is bound to node worker-1, but pod sigil\/sigil-agent-x7k2p runs on worker-2/,
      ],
      ["an empty payload", () => new Uint8Array(), "ERR_INVALID_ARGUMENT", /^k8s_psat: malformed attestation payload: it is empty$/],
      ["a payload that is not JSON", () => Buffer.from("eyJhbGciOi.x.y"), "ERR_INVALID_ARGUMENT", /it is not a UTF-8 JSON object/],
      ["a JSON array", () => Buffer.from("[]"), "ERR_INVALID_ARGUMENT", /it is not a JSON object/],
      ["no cluster", () => Buffer.from('{"token":"a.b.c"}'), "ERR_INVALID_ARGUMENT", /"cluster" is missing or not a string/],
      ["a cluster name that is not a path segment", () => Buffer.from('{"cluster":"../x","token":"a.b.c"}'), "ERR_INVALID_ARGUMENT", /"cluster" may contain only/],
      ["no token", () => Buffer.from('{"cluster":"prod"}'), "ERR_INVALID_ARGUMENT", /"token" is missing or empty/],
      ["a token that is not a JWT", () => Buffer.from('{"cluster":"prod","token":"not a jwt"}'), "ERR_INVALID_ARGUMENT", /"token" is not a JWT in compact form/],
      ["an oversized payload", () => Buffer.alloc(70_000, 0x20), "ERR_INVALID_ARGUMENT", /larger than 65536 bytes/],
    ];
    it.each(cases)("%s", async (_name, make, code, message) => {
      resetWorld();
      const server = serverHalf();
      const r = await refusal(server.attest(make(), noChallenge));
      expect(r.code).toBe(code);
      expect(r.message).toMatch(message);
    });
  });

  it("a review that authenticates without confirming a configured audience is refused", async () => {
    // An authenticator that ignores audiences; the API reference says the client must check status.audiences.
    const lax: KubeApi = {
      reviewToken: async () => ({ authenticated: true, user: { username: "system:serviceaccount:sigil:sigil-agent" }, audiences: ["https://kubernetes.default.svc"] }),
      getPod: async () => undefined,
      getNode: async () => undefined,
    };
    const config = k8sPsatServerConfigSchema.parse({ clusters: { prod: { service_account_allow_list: ["sigil:sigil-agent"], kube_config_file: api.writeKubeconfig(testTempDir("sigil-k8s-psat-")) } } });
    const server = createK8sPsatServerAttestor(config, { trustDomain: td, env: {}, kubeApi: () => lax });
    const r = await refusal(server.attest(payload(opaqueToken()), noChallenge));
    expect(r).toEqual({ code: "ERR_PERMISSION_DENIED", message: 'k8s_psat: the TokenReview of cluster "prod" does not confirm any of the audiences sigil-server (it names ["https://kubernetes.default.svc"])' });
  });

  it("an API server that cannot be reached is Unavailable, naming the server; the next attestation tries again", async () => {
    resetWorld();
    const port = await closedLoopbackPort();
    const dir = testTempDir("sigil-k8s-psat-");
    const kubeconfig = api.writeKubeconfig(dir);
    writeFileSync(kubeconfig, readFileSync(kubeconfig, "utf8").replace(api.url, `https://127.0.0.1:${port}`));
    const r = await refusal(serverHalf({}, kubeconfig).attest(payload(api.projectedToken(POD)), noChallenge));
    expect(r.code).toBe("ERR_UNAVAILABLE");
    expect(r.message).toMatch(new RegExp(`^k8s_psat: cluster "prod": the Kubernetes API at https://127\\.0\\.0\\.1:${port} cannot be reached for a TokenReview: .*ECONNREFUSED`));
  });

  it("an API server that accepts and never answers is Unavailable once the call's time is up", async () => {
    const sockets = new Set<Socket>();
    const silent = createNetServer((sock) => void sockets.add(sock));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    try {
      const port = (silent.address() as AddressInfo).port;
      const kubeconfig = api.writeKubeconfig(testTempDir("sigil-k8s-psat-"));
      writeFileSync(kubeconfig, readFileSync(kubeconfig, "utf8").replace(api.url, `https://127.0.0.1:${port}`));
      const kube = createKubeApi({ cluster: "prod", kubeConfigFile: kubeconfig, timeoutMs: 200 });
      const r = await refusal(kube.reviewToken(opaqueToken(), ["sigil-server"]));
      expect(r).toEqual({ code: "ERR_UNAVAILABLE", message: `k8s_psat: cluster "prod": the Kubernetes API at https://127.0.0.1:${port} cannot be reached for a TokenReview: no answer within 200 ms` });
    } finally {
      for (const sock of sockets) sock.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  it("an API server whose certificate the kubeconfig's CA did not issue is Unavailable", async () => {
    resetWorld();
    const dir = testTempDir("sigil-k8s-psat-");
    const kubeconfig = api.writeKubeconfig(dir);
    const other = Buffer.from(createServingPki("another cluster").caPem).toString("base64");
    writeFileSync(kubeconfig, readFileSync(kubeconfig, "utf8").replace(/certificate-authority-data: .*/, `certificate-authority-data: ${other}`));
    const r = await refusal(serverHalf({}, kubeconfig).attest(payload(api.projectedToken(POD)), noChallenge));
    expect(r.code).toBe("ERR_UNAVAILABLE");
    expect(r.message).toMatch(/cannot be reached for a TokenReview: .*certificate/);
  });

  it.each([
    ["its credentials are refused (401)", "tokenreviews" as const, true, /refused the server's own credentials for a TokenReview \(HTTP 401\); the server needs create on tokenreviews and get on pods and nodes/],
    ["RBAC lacks get on pods (403)", "pods" as const, false, /refused the server's own credentials for reading pod sigil\/sigil-agent-x7k2p \(HTTP 403: pods is forbidden: User .* cannot get resource "pods"/],
    ["RBAC lacks create on tokenreviews (403)", "tokenreviews" as const, false, /refused the server's own credentials for a TokenReview \(HTTP 403: tokenreviews is forbidden/],
  ])("the server's own access refused: %s is FailedPrecondition with the RBAC it needs", async (_name, resource, badBearer, message) => {
    resetWorld();
    const dir = testTempDir("sigil-k8s-psat-");
    const kubeconfig = api.writeKubeconfig(dir);
    if (badBearer) writeFileSync(kubeconfig, readFileSync(kubeconfig, "utf8").replace(api.bearerToken, "wrong-token"));
    else api.forbidden.add(resource);
    const r = await refusal(serverHalf({}, kubeconfig).attest(payload(api.projectedToken(POD)), noChallenge));
    expect(r.code).toBe("ERR_FAILED_PRECONDITION");
    expect(r.message).toMatch(message);
  });
});

describe("k8s_psat agent half", () => {
  it("reads the token file again for every attestation and sends it with the cluster name", async () => {
    const dir = testTempDir("sigil-k8s-psat-agent-");
    const tokenPath = join(dir, "token");
    const agent = createK8sPsatAgentAttestor({ cluster: "prod", token_path: tokenPath });
    writeFileSync(tokenPath, "aaa.bbb.ccc\n");
    expect(parseK8sPsatPayload(await agent.payload())).toEqual({ cluster: "prod", token: "aaa.bbb.ccc" });
    writeFileSync(tokenPath, "ddd.eee.fff");
    expect(parseK8sPsatPayload(await agent.payload())).toEqual({ cluster: "prod", token: "ddd.eee.fff" });
  });

  it("can attest again while the token file is readable; without it, says where the token should be", async () => {
    const dir = testTempDir("sigil-k8s-psat-agent-");
    const tokenPath = join(dir, "tokens", "sigil-agent");
    const agent = createK8sPsatAgentAttestor({ cluster: "prod", token_path: tokenPath });
    expect(agent.canReattest?.()).toBe(false);
    expect(agent.reattestRemedy).toContain(tokenPath);
    const r = await refusal(agent.payload());
    expect(r).toEqual({ code: "ERR_FAILED_PRECONDITION", message: expect.stringMatching(new RegExp(`^k8s_psat: cannot read the service account token ${tokenPath}: ENOENT; mount a projected service account token there`)) });
    mkdirSync(join(dir, "tokens"));
    writeFileSync(tokenPath, "  \n");
    expect(agent.canReattest?.()).toBe(true);
    expect((await refusal(agent.payload())).message).toBe(`k8s_psat: the service account token file ${tokenPath} is empty`);
    rmSync(tokenPath);
    expect(agent.canReattest?.()).toBe(false);
  });
});

describe("k8s_psat agent half: garbage token_path", () => {
  it("a device, a FIFO or a huge file at token_path fails at once, without reading it whole or blocking", async () => {
    const dir = testTempDir("sigil-k8s-psat-agent-");
    const fifo = join(dir, "fifo");
    execFileSync("mkfifo", [fifo]);
    const big = join(dir, "big");
    writeFileSync(big, Buffer.alloc(1 << 20, 0x61));
    for (const [tokenPath, problem] of [
      ["/dev/zero", "/dev/zero is not a regular file"],
      [fifo, `${fifo} is not a regular file`],
      [big, `${big} is larger than 32768 bytes`],
    ] as const) {
      const r = await refusal(createK8sPsatAgentAttestor({ cluster: "prod", token_path: tokenPath }).payload());
      expect(r.code).toBe("ERR_FAILED_PRECONDITION");
      expect(r.message).toContain(`k8s_psat: cannot read the service account token ${tokenPath}: ${problem}`);
    }
  });
});

describe("k8s_psat config", () => {
  const server = (nodeAttestor: string): string => `server:
  trust_domain: example.org
plugins:
  DataStore: { sql: { database_type: sqlite3, connection_string: x.db } }
  KeyManager: { memory: {} }
  NodeAttestor:
    k8s_psat: ${nodeAttestor}
`;
  const errorOf = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      return (e as Error).message;
    }
    throw new Error("expected an error");
  };

  it("fills SPIRE's defaults", () => {
    const cfg = parseServerConfig(server("{ clusters: { prod: { service_account_allow_list: ['sigil:sigil-agent'] } } }"));
    expect(cfg.plugins.NodeAttestor?.k8s_psat).toEqual({
      clusters: { prod: { service_account_allow_list: ["sigil:sigil-agent"], audience: ["sigil-server"], allowed_node_label_keys: [], allowed_pod_label_keys: [] } },
    });
    const agent = parseAgentConfig("agent:\n  trust_domain: example.org\n  insecure_bootstrap: true\nplugins:\n  NodeAttestor: { k8s_psat: { cluster: prod } }\n  WorkloadAttestor: { unix: {} }\n");
    expect(agent.plugins.NodeAttestor?.k8s_psat).toEqual({ cluster: "prod", token_path: "/var/run/secrets/tokens/sigil-agent" });
  });

  it.each([
    ["{ clusters: {} }", "plugins.NodeAttestor.k8s_psat.clusters: configure at least one cluster"],
    ["{}", "plugins.NodeAttestor.k8s_psat.clusters: required key is missing"],
    ["{ clusters: { prod: { service_account_allow_list: [sigil] } } }", 'plugins.NodeAttestor.k8s_psat.clusters.prod.service_account_allow_list[0]: "sigil" is not "<namespace>:<service account name>"'],
    ["{ clusters: { prod: { service_account_allow_list: [] } } }", "plugins.NodeAttestor.k8s_psat.clusters.prod.service_account_allow_list: list at least one"],
    ["{ clusters: { 'a/b': { service_account_allow_list: ['sigil:agent'] } } }", 'plugins.NodeAttestor.k8s_psat.clusters["a/b"]: cluster name may contain only A-Z a-z 0-9 . _ -'],
    ["{ clusters: { prod: { service_account_allow_list: ['sigil:agent'], audiences: [x] } } }", 'plugins.NodeAttestor.k8s_psat.clusters.prod.audiences: unknown key (did you mean "audience"?)'],
    ["{ clusters: { prod: { service_account_allow_list: ['sigil:agent'], audience: [] } } }", "plugins.NodeAttestor.k8s_psat.clusters.prod.audience: list at least one audience"],
    ["{ clusters: { prod: { service_account_allow_list: ['sigil:agent'], kube_config_file: '' } } }", "plugins.NodeAttestor.k8s_psat.clusters.prod.kube_config_file: is empty"],
    ["{ clusters: { prod: { service_account_allow_list: ['sigil:agent'], allowed_pod_label_keys: [''] } } }", "plugins.NodeAttestor.k8s_psat.clusters.prod.allowed_pod_label_keys[0]: a label key is empty"],
  ])("server %s is refused: %s", (yaml, message) => {
    expect(errorOf(() => parseServerConfig(server(yaml)))).toContain(message);
  });

  it.each([
    ["{ token_path: /t }", "plugins.NodeAttestor.k8s_psat.cluster: required key is missing"],
    ["{ cluster: 'a b' }", "plugins.NodeAttestor.k8s_psat.cluster: cluster name may contain only"],
    ["{ cluster: prod, token_path: '' }", "plugins.NodeAttestor.k8s_psat.token_path: is empty"],
  ])("agent %s is refused: %s", (yaml, message) => {
    const text = `agent:\n  trust_domain: example.org\n  insecure_bootstrap: true\nplugins:\n  NodeAttestor: { k8s_psat: ${yaml} }\n  WorkloadAttestor: { unix: {} }\n`;
    expect(errorOf(() => parseAgentConfig(text))).toContain(message);
  });

  it("at start: an unreadable kubeconfig, or no kubeconfig outside a pod, is refused naming the key", () => {
    const dir = testTempDir("sigil-k8s-psat-");
    const missing = join(dir, "nope.yaml");
    const parse = (c: Record<string, unknown>) => k8sPsatServerConfigSchema.parse({ clusters: { prod: { service_account_allow_list: ["sigil:sigil-agent"], ...c } } });
    expect(errorOf(() => createK8sPsatServerAttestor(parse({ kube_config_file: missing }), { trustDomain: td, env: {} }))).toBe(
      `k8s_psat: plugins.NodeAttestor.k8s_psat.clusters.prod.kube_config_file: cannot read ${missing}: ENOENT`,
    );
    expect(errorOf(() => createK8sPsatServerAttestor(parse({}), { trustDomain: td, env: {} }))).toMatch(
      /^k8s_psat: plugins\.NodeAttestor\.k8s_psat\.clusters\.prod: no kube_config_file is set and the server does not run in a Kubernetes pod/,
    );
    // In a pod (the service environment variables are set) the in-cluster config is used.
    expect(createK8sPsatServerAttestor(parse({}), { trustDomain: td, env: { KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443" } }).name).toBe("k8s_psat");
  });
});

