/**
 * One of two `sigil-server run` processes on one PostgreSQL database killed
 * with SIGKILL while the cluster is under load: real agents (each given both
 * addresses) stream short-lived SVIDs to their workloads, simulated agents
 * sync in a loop, and entries are created through both servers. A user
 * notices none of it: every real agent whose server died fails over within
 * 30 s, no workload SVID expires, an entry created through the surviving
 * server after the kill reaches every workload, and no entry whose creation
 * was acknowledged is lost (stored, and served by the survivor to the agent
 * it belongs to).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { AgentAPI } from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { createTestDatabase, datastoreEngines } from "../support/datastore.js";
import { startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { listAllEntries } from "./support/entry-load.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { expectNeverExpired, watchSvids, type SvidWatch } from "./support/svid-stream.js";
import { attestWithJoinToken, rootsPemFromBundleJson, tlsCredentials, type Attested } from "./support/test-agent.js";

const hasPostgres = (await datastoreEngines()).includes("postgres");
const UID = process.getuid?.() ?? 0;
/** Real agent processes, each with a workload streaming its SVID. */
const REAL_AGENTS = 2;
/** Simulated agents (this process's clients of the agent API) syncing in a loop. */
const SIM_AGENTS = 8;

/** A simulated agent: one client per server, the same agent SVID on both. */
interface SimAgent {
  readonly id: string;
  readonly clients: readonly Attested[];
  /** Which client it syncs through; moves to the next when that server is unavailable. */
  current: number;
}

describe.skipIf(!hasPostgres)("one of two servers killed with SIGKILL under load", () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function startServer(url: string, name: string): Promise<ServerProcess> {
    const dir = mkdtempSync(path.join(tmpdir(), `sigil-it-killed-${name}-`));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const configPath = path.join(dir, "server.yaml");
    // The simulated agents sync in a tight loop on purpose; the per-agent sync limit has tests of its own.
    // They never renew, so agent SVIDs outlast a test stretched by a busy machine (renewal across a
    // failover is agent-failover.test.ts's).
    const yaml = testServerConfigYaml(dir, {
      keyManager: "disk",
      serverExtra: "  default_x509_svid_ttl: 20s\n  agent_ttl: 10m\n  ratelimit:\n    sync: false\n",
      dataStore: { databaseType: "postgres", connectionString: url },
    });
    writeFileSync(configPath, yaml);
    const srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"));
    cleanups.push(() => srv.stop({ keepDir: true }));
    return srv;
  }

  it("agents fail over within 30 s, no workload SVID expires, no acknowledged entry is lost", async () => {
    const { url, drop } = await createTestDatabase("postgres");
    cleanups.push(drop);
    // A first: B's bundle, published at its start, holds A's root too, so an agent attested to either is known to both.
    const servers = [await startServer(url, "a"), await startServer(url, "b")];
    const roots = rootsPemFromBundleJson(servers[1]!.cli(["bundle", "show", "--output", "json"]).stdout);
    const admins = servers.map((s) => {
      const c = { entries: createUnaryClient(EntryAdmin, `unix:${s.socketPath}`, credentials.createInsecure()), agents: createUnaryClient(AgentAdmin, `unix:${s.socketPath}`, credentials.createInsecure()) };
      cleanups.push(() => {
        c.entries.close();
        c.agents.close();
      });
      return c;
    });
    const addresses = servers.map((s) => s.agentApiAddress);

    // Real agents, each with an entry for its workload's uid (20 s SVIDs, renewed at half life).
    const workloadEntry = (agentId: string, name: string) => create(EntrySchema, { spiffeId: `spiffe://example.org/${name}`, parentId: agentId, selectors: [{ type: "unix", value: `uid:${UID}` }], x509SvidTtl: 20 });
    const ended = new AbortController();
    // Started side by side (each start waits for its workload's first SVID).
    const real: { agent: AgentProcess; agentId: string; workload: SvidWatch }[] = await Promise.all(
      Array.from({ length: REAL_AGENTS }, async (_, i) => {
        const tok = await admins[0]!.agents.createJoinToken({ ttl: 600 });
        expect((await admins[0]!.entries.batchCreateEntry({ entries: [workloadEntry(tok.agentId, `web-${i}`)] })).results[0]?.status?.code).toBe(0);
        const agent = await startAgentProcess({ serverAddress: addresses[0]!, bundlePem: roots, joinToken: tok.token, extraAgentYaml: `  server_addresses: [${addresses.join(", ")}]\n` });
        cleanups.push(() => agent.stop());
        const workload = watchSvids(agent.socketPath, { renewed: `/web-${i}`, renewals: 3, until: `/after-kill-${i}`, timeoutMs: 120_000, signal: ended.signal });
        cleanups.push(async () => {
          ended.abort();
          await workload.result;
        });
        await workload.first;
        return { agent, agentId: tok.agentId, workload };
      }),
    );

    // Simulated agents, attested through A, syncing in a loop through their current server.
    const sims: SimAgent[] = await Promise.all(
      Array.from({ length: SIM_AGENTS }, async (_, i) => {
        const tok = await admins[0]!.agents.createJoinToken({ ttl: 600 });
        const atA = await attestWithJoinToken(addresses[0]!, roots, tok.token);
        const identity = { keyPem: atA.key.export({ format: "pem", type: "pkcs8" }).toString(), certPem: encodePemCertificates(atA.chain) };
        const atB: Attested = { ...atA, api: createUnaryClient(AgentAPI, addresses[1]!, tlsCredentials(roots, identity)) };
        cleanups.push(() => {
          atA.api.close();
          atB.api.close();
        });
        return { id: tok.agentId, clients: [atA, atB], current: i % 2 };
      }),
    );
    let stop = false;
    const syncLoop = async (sim: SimAgent): Promise<void> => {
      while (!stop) {
        try {
          await sim.clients[sim.current]!.api.syncAuthorized({});
        } catch {
          sim.current = (sim.current + 1) % sim.clients.length;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    // Entries for the simulated agents, created through both servers; only acknowledged ones must survive.
    const acknowledged = new Map<string, string>(); // entry ID → its agent
    let failedCreates = 0;
    const createLoop = async (via: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const sim = sims[i % sims.length]!;
        try {
          const res = await admins[via]!.entries.batchCreateEntry({
            entries: [create(EntrySchema, { spiffeId: `spiffe://example.org/load/${via}-${i}`, parentId: sim.id, selectors: [{ type: "unix", value: "uid:4242" }] })],
          });
          for (const r of res.results) if (r.status?.code === 0 && r.entry) acknowledged.set(r.entry.id, sim.id);
        } catch {
          failedCreates++;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    };
    const loads = [...sims.map(syncLoop), createLoop(0), createLoop(1)];
    await vi.waitFor(() => expect(acknowledged.size).toBeGreaterThan(20), { timeout: 30_000, interval: 100 });

    // Kill the server most real agents are on (each agent picks one at random and sticks to it).
    const homeOf = (agentId: string) => servers.findIndex((s) => s.logs.some((r) => r.msg === "agent attested" && r.agent_id === agentId));
    const onA = real.filter((r) => homeOf(r.agentId) === 0).length;
    const killed = onA * 2 >= real.length ? 0 : 1;
    const survivor = 1 - killed;
    const orphaned = real.filter((r) => homeOf(r.agentId) === killed);
    expect(orphaned.length).toBeGreaterThan(0);
    servers[killed]!.child.kill("SIGKILL");

    // Every agent that was on the killed server fails over within 30 s.
    await Promise.all(orphaned.map((r) => r.agent.waitForLog((l) => l.msg === "sync: the server is unavailable; failing over to the next one", 30_000)));
    // Load goes on through the survivor for a while.
    const atKill = acknowledged.size;
    await vi.waitFor(() => expect(acknowledged.size).toBeGreaterThan(atKill + 20), { timeout: 30_000, interval: 100 });
    stop = true;
    await Promise.all(loads);
    expect(failedCreates, "creates through the killed server failed").toBeGreaterThan(0);
    expect(servers[survivor]!.child.exitCode).toBeNull();

    // Created through the survivor after the kill: reaches every workload.
    for (const [i, r] of real.entries()) {
      expect((await admins[survivor]!.entries.batchCreateEntry({ entries: [workloadEntry(r.agentId, `after-kill-${i}`)] })).results[0]?.status?.code).toBe(0);
    }

    // No acknowledged entry lost: stored, and the survivor serves each to its agent.
    const stored = new Map((await listAllEntries(admins[survivor]!.entries)).map((e) => [e.id, e.parentId]));
    for (const [id, agentId] of acknowledged) expect(stored.get(id), id).toBe(agentId);
    for (const sim of sims) {
      const want = [...stored].filter(([, agentId]) => agentId === sim.id).map(([id]) => id).sort();
      const got = (await sim.clients[survivor]!.api.syncAuthorized({})).entries.map((e) => e.id).sort();
      expect(got, sim.id).toEqual(want);
    }

    // No workload SVID expired, and each workload got the entry created after the kill.
    for (const [i, r] of real.entries()) {
      const problems = r.agent.logs.filter((l) => l.level === "warn" || l.level === "error").slice(-20);
      const updates = expectNeverExpired(await r.workload.result, `/web-${i}`, JSON.stringify(problems, null, 1));
      expect(updates.at(-1)!.svids.map((s) => s.id).sort()).toEqual([`spiffe://example.org/after-kill-${i}`, `spiffe://example.org/web-${i}`]);
    }
  }, 150_000);
});
