/**
 * Faults with two `sigil-server run` processes on one PostgreSQL database:
 *
 * - an agent that synced with A, whose entry is then deleted through B, asks
 *   B with the revision A gave it (accepting deltas): whatever B answers
 *   (full set, or a delta against what it remembers), the agent's merged set
 *   no longer holds the entry;
 * - PostgreSQL restarted (a private cluster of this test's own, so the shared
 *   one other tests use at the same time is never disturbed) while entries are
 *   created through both servers and the agent syncs: both servers stay up,
 *   every entry whose creation was acknowledged is stored, each server's
 *   entry index holds exactly what the database holds, and a change made
 *   through B after the restart reaches A through the change feed (how fast
 *   is measured by the benchmarks, not asserted here).
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
import { privatePostgresUnavailable, startPrivatePostgres } from "../support/private-postgres.js";
import { requireCondition } from "../support/tools.js";
import { listAllEntries, startEntryLoad } from "./support/entry-load.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { attestWithJoinToken, rootsPemFromBundleJson, tlsCredentials, type Attested } from "./support/test-agent.js";

const hasPostgres = (await datastoreEngines()).includes("postgres");

/** An agent's view of its entries, merged from SyncAuthorized answers as the agent does. */
class HeldEntries {
  revision = "";
  ids = new Set<string>();
  async sync(agent: Attested): Promise<{ delta: boolean }> {
    const res = await agent.api.syncAuthorized({ knownRevision: this.revision, acceptDelta: true });
    if (res.notModified) return { delta: false };
    if (!res.delta) this.ids = new Set();
    for (const id of res.removedEntryIds) this.ids.delete(id);
    for (const e of res.entries) this.ids.add(e.id);
    this.revision = res.revision;
    return { delta: res.delta };
  }
}

describe.skipIf(!hasPostgres)("two sigil-servers on one PostgreSQL database, under faults", () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /** Two servers on one database: a fresh one on the shared cluster, or `database` (a private cluster's). */
  async function pair(database?: string) {
    let url = database;
    if (url === undefined) {
      const db = await createTestDatabase("postgres");
      cleanups.push(db.drop);
      url = db.url;
    }
    const launch = async (name: string): Promise<ServerProcess> => {
      const dir = mkdtempSync(path.join(tmpdir(), `sigil-it-faults-${name}-`));
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      const configPath = path.join(dir, "server.yaml");
      writeFileSync(configPath, testServerConfigYaml(dir, {
          keyManager: "disk",
          dataStore: { databaseType: "postgres", connectionString: url as string },
          // These tests sync in tight loops on purpose; the per-agent sync limit has tests of its own.
          serverExtra: "  ratelimit:\n    sync: false\n",
        }));
      const srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"));
      cleanups.push(() => srv.stop({ keepDir: true }));
      return srv;
    };
    // A first: B's bundle, published at its start, holds A's root too, so an agent attested to A is known to both.
    const a = await launch("a");
    const b = await launch("b");
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
    const tok = await adminA.agents.createJoinToken({ ttl: 600 });
    const agent = await attestWithJoinToken(a.agentApiAddress, roots, tok.token);
    cleanups.push(() => agent.api.close());
    // The same agent SVID against B (A's root is in B's bundle).
    const identity = { keyPem: agent.key.export({ format: "pem", type: "pkcs8" }).toString(), certPem: encodePemCertificates(agent.chain) };
    const agentAtB: Attested = { ...agent, api: createUnaryClient(AgentAPI, b.agentApiAddress, tlsCredentials(roots, identity)) };
    cleanups.push(() => agentAtB.api.close());
    const entry = (name: string) => create(EntrySchema, { spiffeId: `spiffe://example.org/${name}`, parentId: tok.agentId, selectors: [{ type: "unix", value: "uid:1001" }] });
    return { a, b, adminA, adminB, agentAtA: agent, agentAtB, entry };
  }

  it("an entry deleted through B is gone from an agent that synced with A and then asks B with A's revision", async () => {
    const { adminA, adminB, agentAtA, agentAtB, entry } = await pair();
    const e1 = (await adminA.entries.batchCreateEntry({ entries: [entry("one")] })).results[0]?.entry?.id as string;
    // B remembers an older answer for this agent ({e1}).
    const held = new HeldEntries();
    await vi.waitFor(async () => {
      await held.sync(agentAtB);
      expect([...held.ids]).toEqual([e1]);
    }, { timeout: 10_000, interval: 50 });
    const e2 = (await adminB.entries.batchCreateEntry({ entries: [entry("two")] })).results[0]?.entry?.id as string;
    // The agent moves to A and syncs there until A has both.
    await vi.waitFor(async () => {
      await held.sync(agentAtA);
      expect([...held.ids].sort()).toEqual([e1, e2].sort());
    }, { timeout: 10_000, interval: 50 });
    const fromA = held.revision;
    // Deleted through B; the agent fails over to B holding A's revision.
    await adminB.entries.batchDeleteEntry({ ids: [e1] });
    await held.sync(agentAtB);
    expect([...held.ids]).toEqual([e2]);
    // B now remembers the answer it gave: a delta from it, and from A's stale revision, stay right.
    const e3 = (await adminB.entries.batchCreateEntry({ entries: [entry("three")] })).results[0]?.entry?.id as string;
    expect((await held.sync(agentAtB)).delta).toBe(true);
    expect([...held.ids].sort()).toEqual([e2, e3].sort());
    const stale = new HeldEntries();
    stale.revision = fromA;
    stale.ids = new Set([e1, e2]);
    await stale.sync(agentAtB);
    expect([...stale.ids].sort()).toEqual([e2, e3].sort());
  }, 120_000);

  const canRestart = requireCondition(privatePostgresUnavailable(), "restarting PostgreSQL under load (a private cluster)");
  it.skipIf(!canRestart)("PostgreSQL restarted under load: servers reconnect, nothing is lost or corrupted, sync and the change feed resume", async () => {
    const cluster = await startPrivatePostgres();
    cleanups.push(() => cluster.stop());
    const { a, b, adminA, adminB, agentAtA, agentAtB, entry } = await pair(cluster.url);
    const load = startEntryLoad([{ name: "a", entries: adminA.entries, agent: agentAtA }, { name: "b", entries: adminB.entries, agent: agentAtB }], entry);
    cleanups.push(() => load.stop());
    const { acknowledged } = load;
    await new Promise((r) => setTimeout(r, 1_000));
    // The load goes on against the servers while the database is down.
    await cluster.restart();
    // The load goes on until both servers answer again.
    const before = acknowledged.size;
    await vi.waitFor(() => expect(acknowledged.size).toBeGreaterThan(before + 10), { timeout: 30_000, interval: 100 });
    await load.stop();
    expect(load.failures()).toBeGreaterThan(0);
    expect(a.child.exitCode).toBeNull();
    expect(b.child.exitCode).toBeNull();

    // Nothing lost: every acknowledged entry is stored.
    const stored = new Set((await listAllEntries(adminA.entries)).map((e) => e.id));
    for (const id of acknowledged) expect(stored.has(id), id).toBe(true);
    // Nothing corrupted: each server's index holds what the database holds.
    const authorized = async (agent: Attested) => new Set((await agent.api.syncAuthorized({})).entries.map((e) => e.id));
    await vi.waitFor(async () => {
      expect(await authorized(agentAtA)).toEqual(stored);
      expect(await authorized(agentAtB)).toEqual(stored);
    }, { timeout: 10_000, interval: 100 });
    // The change feed resumed: a change through B reaches A within a second.
    const late = (await adminB.entries.batchCreateEntry({ entries: [entry("after-restart")] })).results[0]?.entry?.id as string;
    await vi.waitFor(async () => expect((await authorized(agentAtA)).has(late)).toBe(true), { timeout: 10_000, interval: 20 });
    await adminB.entries.batchDeleteEntry({ ids: [late] });
    await vi.waitFor(async () => expect((await authorized(agentAtA)).has(late)).toBe(false), { timeout: 10_000, interval: 20 });
  }, 180_000);
});
