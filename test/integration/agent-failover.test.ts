/**
 * Two real `sigil-server run` processes on one PostgreSQL database, each
 * with its own CA under one upstream authority (a shared root, so an agent
 * SVID signed by either verifies on both), and an agent given both addresses (`server_addresses`): the server the agent
 * attested with is killed with SIGKILL; the agent fails over to the other,
 * keeps renewing on it (short TTLs), the workload's SVID never expires on its
 * stream, and an entry created through the surviving server reaches the
 * workload (pushed notice); no entry is lost.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { createTestDatabase, datastoreEngines } from "../support/datastore.js";
import { startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { expectNeverExpired, watchSvids } from "./support/svid-stream.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const hasPostgres = (await datastoreEngines()).includes("postgres");
const UID = process.getuid?.() ?? 0;

describe.skipIf(!hasPostgres)("an agent with two servers on one PostgreSQL database", () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function startServer(url: string, name: string, upstream: { cert: string; key: string }): Promise<ServerProcess> {
    const dir = mkdtempSync(path.join(tmpdir(), `sigil-it-failover-${name}-`));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const configPath = path.join(dir, "server.yaml");
    const socketPath = path.join(dir, "admin", "api.sock");
    const yaml = testServerConfigYaml(dir, { keyManager: "disk", serverExtra: "  default_x509_svid_ttl: 20s\n  agent_ttl: 30s\n", dataStore: { databaseType: "postgres", connectionString: url } });
    writeFileSync(configPath, `${yaml}  UpstreamAuthority:\n    disk:\n      cert_file_path: ${upstream.cert}\n      key_file_path: ${upstream.key}\n`);
    const srv = await launchServerProcess(dir, configPath, socketPath);
    cleanups.push(() => srv.stop({ keepDir: true }));
    return srv;
  }

  it("fails over when the agent's server is killed; the workload's SVID never expires and no entry is lost", async () => {
    const { url, drop } = await createTestDatabase("postgres");
    cleanups.push(drop);
    const upDir = mkdtempSync(path.join(tmpdir(), "sigil-it-failover-upstream-"));
    cleanups.push(() => rmSync(upDir, { recursive: true, force: true }));
    const upstream = { cert: path.join(upDir, "ca.pem"), key: path.join(upDir, "ca.key") };
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", upstream.key, "-out", upstream.cert, "-days", "2", "-subj", "/CN=upstream",
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectAltName=URI:spiffe://example.org"], { stdio: "ignore" });
    const a = await startServer(url, "a", upstream);
    const admin = createUnaryClient(AgentAdmin, `unix:${a.socketPath}`, credentials.createInsecure());
    const tok = await admin.createJoinToken({ ttl: 600 });
    admin.close();
    const web = a.cli(["entry", "create", "--spiffe-id", "spiffe://example.org/web", "--parent-id", tok.agentId, "--selector", `unix:uid:${UID}`, "--x509-svid-ttl", "20s"]);
    expect(web.status, web.stderr).toBe(0);
    const b = await startServer(url, "b", upstream);
    // Both servers publish the bundle the agent bootstraps with (the union of their CAs).
    const roots = rootsPemFromBundleJson(b.cli(["bundle", "show", "--output", "json"]).stdout);

    const agent: AgentProcess = await startAgentProcess({
      serverAddress: a.agentApiAddress,
      bundlePem: roots,
      joinToken: tok.token,
      extraAgentYaml: `  server_addresses: [${a.agentApiAddress}, ${b.agentApiAddress}]\n`,
    });
    cleanups.push(() => agent.stop());
    const [home, other] = a.logs.some((r) => r.msg === "agent attested") ? [a, b] : [b, a];

    let killed = false;
    const ended = new AbortController();
    const workload = watchSvids(agent.socketPath, { renewed: "/web", renewals: 3, until: "/web2", timeoutMs: 110_000, signal: ended.signal });
    cleanups.push(async () => {
      ended.abort();
      await workload.result;
    });
    await workload.first;
    home.child.kill("SIGKILL");
    killed = true;
    await agent.waitForLog((r) => r.msg === "sync: the server is unavailable; failing over to the next one", 30_000);
    // Created through the surviving server: reaches the agent through its change stream there.
    const web2 = other.cli(["entry", "create", "--spiffe-id", "spiffe://example.org/web2", "--parent-id", tok.agentId, "--selector", `unix:uid:${UID}`, "--x509-svid-ttl", "20s"]);
    expect(web2.status, web2.stderr).toBe(0);

    const r = await workload.result;
    expect(killed).toBe(true);
    const problems = agent.logs.filter((l) => l.level === "warn" || l.level === "error" || String(l.msg).includes("change stream")).slice(-30);
    if (process.env.SIGIL_TEST_DUMP) writeFileSync(process.env.SIGIL_TEST_DUMP, JSON.stringify({ agent: agent.logs, home: home.logs.slice(-200), other: other.logs.slice(-300), stdout: r.stdout }, null, 1));
    // Never expired: every SVID handed out was valid, and each web SVID was replaced before it expired.
    const updates = expectNeverExpired(r, "/web", JSON.stringify(problems, null, 1));
    // No entry lost: the last view holds both workloads' SVIDs.
    expect(updates.at(-1)!.svids.map((s) => s.id).sort()).toEqual(["spiffe://example.org/web", "spiffe://example.org/web2"]);
  }, 150_000);
});
