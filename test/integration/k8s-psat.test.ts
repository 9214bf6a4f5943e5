/**
 * The `k8s_psat` node attestor end to end: a real `sigil-server` configured
 * with a cluster whose API server is test/support/kube-api.ts (HTTPS, bearer
 * token, TokenReview / Pod / Node in the Kubernetes wire format, reached
 * through the server's real @kubernetes/client-node), and a real `sigil-agent`
 * sending its projected token from a file, as in a DaemonSet pod. A workload
 * registered under a node alias that matches the agent's k8s_psat selectors
 * gets its SVID through the Workload API (`unix:uid` selects the workload;
 * the k8s workload attestor is tested elsewhere).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { encodeK8sPsatPayload } from "../../plugins/nodeattestor/k8s_psat/payload.js";
import { EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EXAMPLE_AGENT_POD, EXAMPLE_NODE, opaqueToken, startFakeKubeApi, type FakeKubeApi, type FakeNode, type FakePod } from "../support/kube-api.js";
import { closedLoopbackPort } from "../support/ports.js";
import { requireTool } from "../support/tools.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { attestAgent, rootsPemFromBundleJson } from "./support/test-agent.js";

const haveOpenssl = requireTool("openssl", ["version"], "the fake API server's certificate");

const NODE = EXAMPLE_NODE;
const AGENT_POD = EXAMPLE_AGENT_POD;
const AGENT_ID = `spiffe://example.org/spire/agent/k8s_psat/prod/${NODE.uid}`;
const ALIAS_ID = "spiffe://example.org/k8s/prod/sigil-agents";
const WORKLOAD_ID = "spiffe://example.org/k8s/prod/web";

let api: FakeKubeApi;
let dir = "";
let tokenPath = "";
let srv: ServerProcess;
let roots = "";
let agent: AgentProcess | undefined;

/** The agent's config line for its node attestor. */
const nodeAttestorYaml = (file: string): string => `k8s_psat: { cluster: prod, token_path: ${JSON.stringify(file)} }`;

/** What `sigil-server agent list` shows: each agent's ID and selectors. */
function listedAgents(): Array<{ spiffe_id: string; attestation_type: string; selectors: Array<{ type: string; value: string }> }> {
  const r = srv.cli(["agent", "list", "--output", "json"]);
  expect(r.status, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { agents: Array<{ spiffe_id: string; attestation_type: string; selectors: Array<{ type: string; value: string }> }> }).agents;
}

async function workloadIds(socketPath: string): Promise<{ ids?: string[]; error?: unknown }> {
  const r = await runWorkload(socketPath, `const ctx = await client.fetchX509Context(); console.log(JSON.stringify({ ids: ctx.svids.map((s) => s.id.toString()) }));`);
  return JSON.parse(r.stdout.trim().split("\n").pop() || JSON.stringify({ error: r.stderr })) as never;
}


describe.skipIf(!haveOpenssl)("k8s_psat node attestation with real server and agent processes", () => {
  beforeAll(async () => {
    api = await startFakeKubeApi();
    api.putNode(NODE);
    api.putPod(AGENT_POD);
    dir = mkdtempSync(path.join(tmpdir(), "sigil-k8s-psat-it-"));
    const kubeconfig = api.writeKubeconfig(dir);
    // A second cluster whose API server is down, for the Unavailable case.
    const offline = api.writeKubeconfig(dir, "offline.yaml");
    writeFileSync(offline, readFileSync(offline, "utf8").replace(api.url, `https://127.0.0.1:${await closedLoopbackPort()}`));
    tokenPath = path.join(dir, "token");
    writeFileSync(tokenPath, api.projectedToken(AGENT_POD));

    const serverDir = mkdtempSync(path.join(tmpdir(), "sigil-it-"));
    const configPath = path.join(serverDir, "server.yaml");
    // The extra YAML lands under plugins.NodeAttestor, after join_token. Attestation rate limits off: the test makes a dozen attempts at once.
    writeFileSync(
      configPath,
      testServerConfigYaml(serverDir, {
        serverExtra: "  log_level: debug\n  ratelimit: { attestation: false }\n",
        extraYaml: `    k8s_psat:
      clusters:
        prod:
          service_account_allow_list: ["sigil:sigil-agent"]
          kube_config_file: ${JSON.stringify(kubeconfig)}
          allowed_pod_label_keys: [app]
          allowed_node_label_keys: [topology.kubernetes.io/zone]
        offline:
          service_account_allow_list: ["sigil:sigil-agent"]
          kube_config_file: ${JSON.stringify(offline)}
`,
      }),
    );
    srv = await launchServerProcess(serverDir, configPath, path.join(serverDir, "admin", "api.sock"), { ownsDir: true });
    roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);

    // A node alias for the cluster's agents, and a workload under it.
    const entries = createUnaryClient(EntryAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
    try {
      const res = await entries.batchCreateEntry({
        entries: [
          {
            spiffeId: ALIAS_ID,
            parentId: "spiffe://example.org/spire/server",
            selectors: [
              { type: "k8s_psat", value: "cluster:prod" },
              { type: "k8s_psat", value: "agent_ns:sigil" },
              { type: "k8s_psat", value: "agent_sa:sigil-agent" },
            ],
          },
          { spiffeId: WORKLOAD_ID, parentId: ALIAS_ID, selectors: [{ type: "unix", value: `uid:${process.getuid?.() ?? 0}` }] },
        ],
      });
      expect(res.results.map((r) => r.status?.code ?? 0)).toEqual([0, 0]);
    } finally {
      entries.close();
    }
  }, 90_000);

  afterAll(async () => {
    await agent?.stop();
    await srv?.stop();
    await api?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the agent attests with its projected token: its ID names the node UID, its record carries SPIRE's selectors, and a workload under the node alias gets its SVID", async () => {
    agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, nodeAttestorYaml: nodeAttestorYaml(tokenPath) });
    await agent.waitForLog((l) => l.msg === "node attestation: agent attested" && l.agent_id === AGENT_ID && l.attestation_type === "k8s_psat");

    const show = srv.cli(["agent", "show", "--spiffe-id", AGENT_ID, "--output", "json"]);
    expect(show.status, show.stderr).toBe(0);
    const record = JSON.parse(show.stdout) as { attestation_type: string; selectors: Array<{ type: string; value: string }> };
    expect(record.attestation_type).toBe("k8s_psat");
    expect(record.selectors.map((s) => `${s.type}:${s.value}`).sort()).toEqual(
      [
        "k8s_psat:cluster:prod",
        "k8s_psat:agent_ns:sigil",
        "k8s_psat:agent_sa:sigil-agent",
        `k8s_psat:agent_pod_name:${AGENT_POD.name}`,
        `k8s_psat:agent_pod_uid:${AGENT_POD.uid}`,
        `k8s_psat:agent_node_name:${NODE.name}`,
        `k8s_psat:agent_node_uid:${NODE.uid}`,
        "k8s_psat:agent_node_ip:192.0.2.11",
        "k8s_psat:agent_pod_label:app:sigil-agent",
        "k8s_psat:agent_node_label:topology.kubernetes.io/zone:zone-a",
      ].sort(),
    );
    // The server asked the API server with its own bearer token.
    expect(api.requests.some((r) => r.path === "/apis/authentication.k8s.io/v1/tokenreviews" && r.authorization === `Bearer ${api.bearerToken}`)).toBe(true);

    expect(await workloadIds(agent.socketPath)).toEqual({ ids: [WORKLOAD_ID] });
  }, 90_000);

  it("every refusal is refused with its reason and leaves no agent record", async () => {
    const debugPod: FakePod = { ...AGENT_POD, name: "debug-shell", uid: "11111111-2222-4333-8444-555555555555", serviceAccountName: "default" };
    const otherNode: FakeNode = { name: "worker-9", uid: "99999999-aaaa-4bbb-8ccc-dddddddddddd" };
    const goner: FakePod = { ...AGENT_POD, name: "sigil-agent-gone", uid: "33333333-4444-4555-8666-777777777777" };
    const orphan: FakePod = { ...AGENT_POD, name: "sigil-agent-orphan", uid: "44444444-5555-4666-8777-888888888888", nodeName: otherNode.name };
    api.putPod(debugPod);
    api.putPod(goner);
    api.putNode(otherNode);
    api.putPod(orphan);
    const gonerToken = api.projectedToken(goner);
    const orphanToken = api.projectedToken(orphan);

    const psat = (token: string, cluster = "prod") => ({ type: "k8s_psat", payload: encodeK8sPsatPayload({ cluster, token }) });
    const cases: Array<[string, () => { type: string; payload: Uint8Array }, status, RegExp]> = [
      ["a token the TokenReview rejects", () => psat(opaqueToken()), status.PERMISSION_DENIED, /did not authenticate the token: \[invalid bearer token/],
      ["a token for another audience", () => psat(api.projectedToken(AGENT_POD, { audiences: ["vault"] })), status.PERMISSION_DENIED, /token audiences \["vault"\] is invalid for the target audiences \["sigil-server"\]/],
      ["an unlisted service account", () => psat(api.projectedToken(debugPod)), status.PERMISSION_DENIED, /service account sigil:default is not in cluster "prod"'s service_account_allow_list/],
      ["an unknown cluster", () => psat(api.projectedToken(AGENT_POD), "staging"), status.PERMISSION_DENIED, /cluster "staging" is not configured on this server$/],
      [
        "a token whose pod was deleted",
        () => {
          api.deletePod(goner.namespace, goner.name);
          return psat(gonerToken);
        },
        status.PERMISSION_DENIED,
        /\[invalid bearer token, pods "sigil-agent-gone" not found\]/,
      ],
      [
        "a token whose pod was deleted after a cached review (GET pod 404)",
        () => {
          api.staleTokenReviews = true;
          return psat(gonerToken);
        },
        status.PERMISSION_DENIED,
        /pod sigil\/sigil-agent-gone, which the token is bound to, no longer exists in cluster "prod"/,
      ],
      [
        "a token whose node was deleted (GET node 404)",
        () => {
          api.staleTokenReviews = false;
          api.deleteNode(otherNode.name);
          return psat(orphanToken);
        },
        status.PERMISSION_DENIED,
        /node worker-9, where pod sigil\/sigil-agent-orphan runs, no longer exists in cluster "prod"/,
      ],
      ["a malformed payload", () => ({ type: "k8s_psat", payload: Buffer.from("not json") }), status.INVALID_ARGUMENT, /k8s_psat: malformed attestation payload: it is not a UTF-8 JSON object/],
      ["an API server that cannot be reached", () => psat(api.projectedToken(AGENT_POD), "offline"), status.UNAVAILABLE, /cluster "offline": the Kubernetes API at https:\/\/127\.0\.0\.1:\d+ cannot be reached for a TokenReview: .*ECONNREFUSED/],
    ];
    for (const [name, data, code, message] of cases) {
      const e = await attestAgent(srv.agentApiAddress, roots, data()).then(
        () => undefined,
        (err: unknown) => err as ServiceError,
      );
      expect(e, name).toBeDefined();
      expect({ name, code: e?.code, details: e?.details }).toEqual({ name, code, details: expect.stringMatching(message) });
    }

    // A real agent with the unlisted service account's token fails to start, saying why.
    const debugToken = path.join(dir, "debug-token");
    writeFileSync(debugToken, api.projectedToken(debugPod));
    const refused = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, nodeAttestorYaml: nodeAttestorYaml(debugToken) }).then(
      async (a) => {
        await a.stop();
        return "started";
      },
      (err: unknown) => String(err),
    );
    expect(refused).toMatch(/service account sigil:default is not in cluster "prod"'s service_account_allow_list/);

    // Only the agent of the first test is on record.
    expect(listedAgents().map((a) => a.spiffe_id)).toEqual([AGENT_ID]);
  }, 120_000);

  it("the same node keeps its ID: re-attestation after an eviction (with the kubelet's rotated token), and a restart without its stored SVID", async () => {
    if (agent === undefined) throw new Error("the first test did not start the agent");
    const running = agent;
    const requestsBefore = api.requests.length;
    // The kubelet rotates the token; the old one stops working.
    const rotated = api.projectedToken(AGENT_POD);
    writeFileSync(tokenPath, rotated);

    const attestedBefore = running.logs.filter((l) => l.msg === "node attestation: agent attested").length;
    const evict = srv.cli(["agent", "evict", "--spiffe-id", AGENT_ID]);
    expect(evict.status, evict.stderr).toBe(0);
    // The next "agent attested" record after those already logged.
    let seen = 0;
    await running.waitForLog((l) => l.msg === "node attestation: agent attested" && ++seen > attestedBefore && l.agent_id === AGENT_ID, 30_000);
    // The re-attestation sent the rotated token, read from the file again.
    expect(api.requests.slice(requestsBefore).some((r) => (r.body as { spec?: { token?: string } } | undefined)?.spec?.token === rotated)).toBe(true);
    expect(listedAgents().map((a) => [a.spiffe_id, a.attestation_type])).toEqual([[AGENT_ID, "k8s_psat"]]);
    expect(await workloadIds(running.socketPath)).toEqual({ ids: [WORKLOAD_ID] });

    // A restart that lost its stored SVID attests again while the record exists: the server accepts the same node under the same ID.
    await running.stop({ keepDir: true });
    agent = undefined;
    rmSync(path.join(running.dir, "data", "agent-svid.pem"));
    writeFileSync(tokenPath, api.projectedToken(AGENT_POD));
    agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, nodeAttestorYaml: nodeAttestorYaml(tokenPath), dir: running.dir });
    await agent.waitForLog((l) => l.msg === "node attestation: agent attested" && l.agent_id === AGENT_ID);
    expect(listedAgents().map((a) => a.spiffe_id)).toEqual([AGENT_ID]);
    expect(await workloadIds(agent.socketPath)).toEqual({ ids: [WORKLOAD_ID] });
  }, 120_000);
});
