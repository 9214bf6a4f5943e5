/**
 * A real `sigil-server run` on PostgreSQL and on MariaDB: an agent attests
 * with a join token and a workload gets its SVID; the server restarted on the
 * same database keeps its CA (disk key manager, CA journal in the database)
 * and its entries.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { createTestDatabase, datastoreEngines } from "../support/datastore.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const engines = (await datastoreEngines()).filter((e): e is "postgres" | "mysql" => e !== "sqlite");
const UID = process.getuid?.() ?? 0;

describe.skipIf(engines.length === 0).each(engines)("sigil-server on %s", (engine) => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it("an agent attests, a workload gets its SVID; a restart on the same database keeps the CA and the entries", async () => {
    const { url, drop } = await createTestDatabase(engine);
    cleanups.push(drop);
    const dir = mkdtempSync(path.join(tmpdir(), `sigil-it-${engine}-`));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const configPath = path.join(dir, "server.yaml");
    const socketPath = path.join(dir, "admin", "api.sock");
    writeFileSync(configPath, testServerConfigYaml(dir, { keyManager: "disk", dataStore: { databaseType: engine, connectionString: url } }));

    let srv: ServerProcess | undefined = await launchServerProcess(dir, configPath, socketPath);
    cleanups.push(() => srv?.stop({ keepDir: true }));
    const admin = createUnaryClient(AgentAdmin, `unix:${socketPath}`, credentials.createInsecure());
    const tok = await admin.createJoinToken({ ttl: 600 });
    admin.close();
    const created = srv.cli(["entry", "create", "--spiffe-id", "spiffe://example.org/web", "--parent-id", tok.agentId, "--selector", `unix:uid:${UID}`, "--output", "json"]);
    expect(created.status, created.stderr).toBe(0);
    const bundleBefore = srv.cli(["bundle", "show", "--output", "json"]).stdout;
    const roots = rootsPemFromBundleJson(bundleBefore);

    let agent: AgentProcess | undefined = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, joinToken: tok.token });
    cleanups.push(() => agent?.stop());
    const fetchIds = async (a: AgentProcess): Promise<unknown> => {
      const r = await runWorkload(a.socketPath, `const ctx = await client.fetchX509Context();
        console.log(JSON.stringify({ ids: ctx.svids.map((s) => s.id.toString()) }));`);
      return JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}");
    };
    expect(await fetchIds(agent)).toEqual({ ids: ["spiffe://example.org/web"] });
    // The join token is spent: the agent is recorded in the database.
    const agents = srv.cli(["agent", "list", "--output", "json"]);
    expect(agents.stdout).toContain(tok.agentId);
    await agent.stop();
    agent = undefined;

    await srv.stop({ keepDir: true });
    srv = await launchServerProcess(dir, configPath, socketPath);
    // Same CA: the published roots did not change across the restart.
    expect(rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout)).toBe(roots);
    const entries = srv.cli(["entry", "show", "--output", "json"]);
    expect(entries.status, entries.stderr).toBe(0);
    expect(entries.stdout).toContain("spiffe://example.org/web");
    expect(entries.stdout).toContain(tok.agentId);
    await srv.stop({ keepDir: true });
    srv = undefined;
    // Nothing went to a local SQLite file.
    expect(existsSync(path.join(dir, "datastore.sqlite3")), readdirSync(dir).join(", ")).toBe(false);
  }, 120_000);
});
