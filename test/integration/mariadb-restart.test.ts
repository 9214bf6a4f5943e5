/**
 * MariaDB restarted under load, with two `sigil-server run` processes on it
 * (a private MariaDB server of this test's own, so the shared one other tests
 * use at the same time is never disturbed): entries are created through both
 * servers and an agent syncs with both while the database is shut down for
 * 11 s (or crashed with SIGKILL) and started again on the same data. A user notices none of it: both servers
 * stay up and become ready again, every entry whose creation was acknowledged
 * is stored, each server's entry index holds exactly what the database holds,
 * the tables pass MariaDB's CHECK TABLE and their own consistency rules, an
 * entry created after the restart reaches a real agent and its workload, and
 * the workload's SVID (short-lived, renewed across the restart) never expires,
 * and gRPC health says SERVING again.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import mysql from "mysql2/promise";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { AgentAPI } from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { privateMariadbUnavailable, startPrivateMariadb } from "../support/private-mariadb.js";
import { requireCondition } from "../support/tools.js";
import { startAgentProcess } from "./support/agent-process.js";
import { listAllEntries, startEntryLoad } from "./support/entry-load.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { expectNeverExpired, watchSvids } from "./support/svid-stream.js";
import { attestWithJoinToken, rootsPemFromBundleJson, tlsCredentials, type Attested } from "./support/test-agent.js";

const UID = process.getuid?.() ?? 0;
const canRun = requireCondition(privateMariadbUnavailable(), "restarting MariaDB under load (a private server)");

/** Every table of `database` that CHECK TABLE does not report as OK, with MariaDB's message. */
async function tablesNotOk(conn: mysql.Connection, database: string): Promise<string[]> {
  const [tables] = await conn.query<mysql.RowDataPacket[]>("SELECT table_name AS t FROM information_schema.tables WHERE table_schema = ?", [database]);
  expect(tables.length).toBeGreaterThan(5);
  const bad: string[] = [];
  for (const { t } of tables) {
    const [rows] = await conn.query<mysql.RowDataPacket[]>(`CHECK TABLE \`${database}\`.\`${String(t)}\` EXTENDED`);
    for (const r of rows) if (r.Msg_type === "error" || (r.Msg_type === "status" && r.Msg_text !== "OK")) bad.push(`${String(t)}: ${String(r.Msg_text)}`);
  }
  return bad;
}

describe.skipIf(!canRun)("two sigil-servers on one MariaDB database restarted under load", () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function startServer(url: string, name: string): Promise<{ srv: ServerProcess; health: string }> {
    const dir = mkdtempSync(path.join(tmpdir(), `sigil-it-mariadb-${name}-`));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const configPath = path.join(dir, "server.yaml");
    const yaml = testServerConfigYaml(dir, {
      keyManager: "disk",
      dataStore: { databaseType: "mysql", connectionString: url },
      // The load syncs in a tight loop on purpose. Agent SVIDs keep their default (1 h): the test's
      // load agent does not renew, and a busy machine can stretch the test past a short one.
      serverExtra: "  ratelimit:\n    sync: false\n",
      extraYaml: "health_checks:\n  listener_enabled: true\n  bind_port: 0\n",
    });
    writeFileSync(configPath, yaml);
    const srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"));
    cleanups.push(() => srv.stop({ keepDir: true }));
    const started = srv.logs.find((r) => r.msg === "server started");
    return { srv, health: String(started?.health) };
  }

  it.each([
    { how: "shut down for 11 s", signal: "SIGTERM" as const, downForMs: 11_000 },
    { how: "crashed (SIGKILL) and started again at once", signal: "SIGKILL" as const, downForMs: 0 },
  ])("MariaDB $how: servers come back ready, nothing is lost or corrupted, new entries reach the workload, its SVID never expires", async ({ signal, downForMs }) => {
    const maria = await startPrivateMariadb();
    cleanups.push(() => maria.stop());
    const database = `sigil_restart_${randomBytes(4).toString("hex")}`;
    const url = await maria.createDatabase(database);

    // A first: B's bundle, published at its start, holds A's root too, so an agent attested to A is known to both.
    const { srv: a, health: healthA } = await startServer(url, "a");
    const { srv: b, health: healthB } = await startServer(url, "b");
    const roots = rootsPemFromBundleJson(b.cli(["bundle", "show", "--output", "json"]).stdout);
    const admin = (s: ServerProcess) => {
      const c = { entries: createUnaryClient(EntryAdmin, `unix:${s.socketPath}`, credentials.createInsecure()), agents: createUnaryClient(AgentAdmin, `unix:${s.socketPath}`, credentials.createInsecure()) };
      cleanups.push(() => {
        c.entries.close();
        c.agents.close();
      });
      return c;
    };
    const adminA = admin(a);
    const adminB = admin(b);

    // The real agent and its workload, with a 60 s SVID renewed at half life: the outage (11 s, plus
    // MariaDB's own start, which a busy CI machine stretches) stays well inside that half.
    const realTok = await adminA.agents.createJoinToken({ ttl: 600 });
    const webEntry = (name: string) => create(EntrySchema, { spiffeId: `spiffe://example.org/${name}`, parentId: realTok.agentId, selectors: [{ type: "unix", value: `uid:${UID}` }], x509SvidTtl: 60 });
    expect((await adminA.entries.batchCreateEntry({ entries: [webEntry("web")] })).results[0]?.status?.code).toBe(0);
    const agent = await startAgentProcess({
      serverAddress: a.agentApiAddress,
      bundlePem: roots,
      joinToken: realTok.token,
      extraAgentYaml: `  server_addresses: [${a.agentApiAddress}, ${b.agentApiAddress}]\n`,
    });
    cleanups.push(() => agent.stop());
    const ended = new AbortController();
    const workload = watchSvids(agent.socketPath, { renewed: "/web", renewals: 2, until: "/after-restart", timeoutMs: 150_000, signal: ended.signal });
    cleanups.push(async () => {
      ended.abort();
      await workload.result;
    });
    await workload.first;

    // The load: a second agent (the test's own client) whose entries are created through A and B, syncing with both.
    const loadTok = await adminA.agents.createJoinToken({ ttl: 600 });
    const loadAgent = await attestWithJoinToken(a.agentApiAddress, roots, loadTok.token);
    cleanups.push(() => loadAgent.api.close());
    const identity = { keyPem: loadAgent.key.export({ format: "pem", type: "pkcs8" }).toString(), certPem: encodePemCertificates(loadAgent.chain) };
    const loadAgentAtB: Attested = { ...loadAgent, api: createUnaryClient(AgentAPI, b.agentApiAddress, tlsCredentials(roots, identity)) };
    cleanups.push(() => loadAgentAtB.api.close());
    const loadEntry = (name: string) => create(EntrySchema, { spiffeId: `spiffe://example.org/load/${name}`, parentId: loadTok.agentId, selectors: [{ type: "unix", value: "uid:4242" }] });
    const load = startEntryLoad([{ name: "a", entries: adminA.entries, agent: loadAgent }, { name: "b", entries: adminB.entries, agent: loadAgentAtB }], loadEntry);
    cleanups.push(() => load.stop());
    const { acknowledged } = load;
    await vi.waitFor(() => expect(acknowledged.size).toBeGreaterThan(20), { timeout: 30_000, interval: 100 });

    // The load goes on against the servers while the database is down and starts again. The long
    // outage outlasts a CA rotation step (10 s) and many change-feed polls, so both meet it, and
    // the servers say they are not ready meanwhile.
    let readyWhileDown: number[] = [];
    await maria.restart({
      signal,
      downForMs,
      whileDown: async () => {
        if (downForMs > 0) readyWhileDown = await Promise.all([healthA, healthB].map(async (h) => (await fetch(`${h}/ready`)).status));
      },
    });
    if (downForMs > 0) expect(readyWhileDown, "/ready while the database is down").toEqual([503, 503]);
    const before = acknowledged.size;
    await vi.waitFor(() => expect(acknowledged.size).toBeGreaterThan(before + 20), { timeout: 60_000, interval: 100 });
    await load.stop();
    expect(load.failures(), "the restart happened under load").toBeGreaterThan(0);

    // Both servers stayed up and are ready again.
    expect(a.child.exitCode).toBeNull();
    expect(b.child.exitCode).toBeNull();
    for (const health of [healthA, healthB]) {
      await vi.waitFor(async () => expect((await fetch(`${health}/ready`)).status).toBe(200), { timeout: 30_000, interval: 200 });
    }
    // gRPC health too (a CA rotation step that failed while the database was down once left it NOT_SERVING for good).
    for (const srv of [a, b]) {
      await vi.waitFor(() => {
        const hc = srv.cli(["healthcheck"]);
        expect(hc.status, hc.stderr).toBe(0);
      }, { timeout: 30_000, interval: 1_000 });
    }

    // Nothing lost: every acknowledged entry is stored.
    const stored = new Set((await listAllEntries(adminB.entries)).filter((e) => e.parentId === loadTok.agentId).map((e) => e.id));
    for (const id of acknowledged) expect(stored.has(id), id).toBe(true);

    // Nothing corrupted: each server's entry index holds what the database holds…
    const authorized = async (client: Attested) => new Set((await client.api.syncAuthorized({})).entries.map((e) => e.id));
    await vi.waitFor(async () => {
      expect(await authorized(loadAgent)).toEqual(stored);
      expect(await authorized(loadAgentAtB)).toEqual(stored);
    }, { timeout: 20_000, interval: 200 });
    // …and the tables pass MariaDB's own checks and Sigil's row invariants.
    const conn = await mysql.createConnection({ uri: url });
    try {
      expect(await tablesNotOk(conn, database)).toEqual([]);
      const [miscounted] = await conn.query<mysql.RowDataPacket[]>(
        "SELECT e.id FROM registration_entries e LEFT JOIN entry_selectors s ON s.owner_row = e.row_id GROUP BY e.row_id, e.id, e.selector_count HAVING COUNT(s.owner_row) <> e.selector_count",
      );
      expect(miscounted.map((r) => String(r.id)), "entries whose selector rows do not match their selector_count").toEqual([]);
      const [[{ n: storedCount }]] = (await conn.query("SELECT COUNT(*) AS n FROM registration_entries WHERE parent_id = ?", [loadTok.agentId])) as unknown as [[{ n: number }]];
      expect(Number(storedCount)).toBe(stored.size);
    } finally {
      await conn.end();
    }

    // Sync resumed: an entry created through B after the restart reaches the real agent and its workload.
    expect((await adminB.entries.batchCreateEntry({ entries: [webEntry("after-restart")] })).results[0]?.status?.code).toBe(0);
    const problems = agent.logs.filter((l) => l.level === "warn" || l.level === "error").slice(-30);
    const updates = expectNeverExpired(await workload.result, "/web", JSON.stringify(problems, null, 1));
    expect(updates.at(-1)!.svids.map((s) => s.id).sort()).toEqual(["spiffe://example.org/after-restart", "spiffe://example.org/web"]);
  }, 240_000);
});
