/**
 * Two `sigil-server run` processes on one PostgreSQL database and on one
 * MariaDB database: each server's CA root is in both servers' bundles; an
 * entry created through server A reaches server B's entry index through the
 * change feed (an agent attested to B is served it); a join token made on A
 * and used at once on A and B admits exactly one agent; the same entry
 * created at once through A and B is created once (the other AlreadyExists);
 * server B restarted loads what changed while it was down and follows the
 * feed again; a federated bundle set and replaced through A, and a ban through
 * A, reach B's agent API (served from its change-fed caches).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials, status } from "@grpc/grpc-js";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, BundleAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { createTestDatabase, datastoreEngines } from "../support/datastore.js";
import { makeTestCa } from "../support/federation-bundles.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { attestWithJoinToken, refusal, rootsPemFromBundleJson, type Attested } from "./support/test-agent.js";

const engines = (await datastoreEngines()).filter((e): e is "postgres" | "mysql" => e !== "sqlite");

/** One server of the pair: its directory, config and (while running) process. */
interface Member {
  readonly name: string;
  readonly dir: string;
  readonly configPath: string;
  readonly socketPath: string;
  srv?: ServerProcess | undefined;
}

const certCount = (pem: string) => pem.split("BEGIN CERTIFICATE").length - 1;

describe.skipIf(engines.length === 0).each(engines)("two sigil-servers on one %s database", (engine) => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it("share bundles, entries and join tokens through the database; a restarted server catches up", async () => {
    const { url, drop } = await createTestDatabase(engine);
    cleanups.push(drop);
    const member = (name: string): Member => {
      const dir = mkdtempSync(path.join(tmpdir(), `sigil-it-ha-${name}-`));
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      const configPath = path.join(dir, "server.yaml");
      writeFileSync(configPath, testServerConfigYaml(dir, { keyManager: "disk", dataStore: { databaseType: engine, connectionString: url } }));
      return { name, dir, configPath, socketPath: path.join(dir, "admin", "api.sock") };
    };
    const launch = async (m: Member): Promise<ServerProcess> => {
      m.srv = await launchServerProcess(m.dir, m.configPath, m.socketPath);
      return m.srv;
    };
    const a = member("a");
    const b = member("b");
    cleanups.push(() => a.srv?.stop({ keepDir: true }));
    cleanups.push(() => b.srv?.stop({ keepDir: true }));
    await launch(a);
    await launch(b);
    const instance = (m: Member) => m.srv?.logs.find((r) => r.msg === "server started")?.server_instance;
    expect(instance(a)).not.toBe(instance(b));

    const roots = (m: Member) => rootsPemFromBundleJson((m.srv as ServerProcess).cli(["bundle", "show", "--output", "json"]).stdout);
    // Each server's CA root is in both bundles (A takes B's at its next rotation step).
    let union = "";
    await vi.waitFor(
      () => {
        union = roots(b);
        expect(certCount(union)).toBe(2);
        expect(roots(a)).toBe(union);
      },
      { timeout: 40_000, interval: 1_000 },
    );

    const admin = (m: Member) => ({
      entries: createUnaryClient(EntryAdmin, `unix:${m.socketPath}`, credentials.createInsecure()),
      agents: createUnaryClient(AgentAdmin, `unix:${m.socketPath}`, credentials.createInsecure()),
    });
    const adminA = admin(a);
    cleanups.push(() => {
      adminA.entries.close();
      adminA.agents.close();
    });
    const entry = (spiffePath: string, parentId: string, uid: number) =>
      create(EntrySchema, { spiffeId: `spiffe://example.org/${spiffePath}`, parentId, selectors: [{ type: "unix", value: `uid:${uid}` }] });
    const authorized = async (agent: Attested) => (await agent.api.syncAuthorized({})).entries.map((e) => e.id);

    // A join token made on A admits an agent at B; an entry created through A reaches B's index.
    const tok1 = await adminA.agents.createJoinToken({ ttl: 600 });
    const agent1 = await attestWithJoinToken((b.srv as ServerProcess).agentApiAddress, union, tok1.token);
    cleanups.push(() => agent1.api.close());
    expect(agent1.spiffeId).toBe(tok1.agentId);
    const e1 = (await adminA.entries.batchCreateEntry({ entries: [entry("web", tok1.agentId, 1001)] })).results[0]?.entry?.id as string;
    await vi.waitFor(async () => expect(await authorized(agent1)).toContain(e1), { timeout: 10_000, interval: 250 });

    // One join token used at once on A and on B: exactly one agent.
    for (let i = 0; i < 3; i++) {
      const tok = await adminA.agents.createJoinToken({ ttl: 600 });
      const attempts = await Promise.allSettled([a, b].map((m) => attestWithJoinToken((m.srv as ServerProcess).agentApiAddress, union, tok.token)));
      const admitted = attempts.filter((r) => r.status === "fulfilled");
      expect(admitted).toHaveLength(1);
      for (const r of admitted) (r as PromiseFulfilledResult<Attested>).value.api.close();
    }

    // The same entry created at once through A and B: one created, the other AlreadyExists.
    const adminB = admin(b);
    try {
      for (let i = 0; i < 3; i++) {
        const same = entry(`race-${i}`, tok1.agentId, 2000 + i);
        const results = await Promise.all([adminA, adminB].map((c) => c.entries.batchCreateEntry({ entries: [same] })));
        expect(results.map((r) => r.results[0]?.status?.code).sort()).toEqual([0, 6]);
      }
    } finally {
      adminB.entries.close();
      adminB.agents.close();
    }

    // B restarted: what changed while it was down is loaded; later changes come through the feed.
    const bInstance = instance(b);
    await (b.srv as ServerProcess).stop({ keepDir: true });
    b.srv = undefined;
    const tok2 = await adminA.agents.createJoinToken({ ttl: 600 });
    const e2 = (await adminA.entries.batchCreateEntry({ entries: [entry("while-down", tok2.agentId, 3001)] })).results[0]?.entry?.id as string;
    const restarted = await launch(b);
    expect(instance(b)).toBe(bInstance);
    // Same CA on B after the restart (disk key manager, its own journal rows): the union did not grow.
    expect(roots(b)).toBe(union);
    const agent2 = await attestWithJoinToken(restarted.agentApiAddress, union, tok2.token);
    cleanups.push(() => agent2.api.close());
    expect(await authorized(agent2)).toEqual([e2]);
    const e3 = (await adminA.entries.batchCreateEntry({ entries: [entry("after-restart", tok2.agentId, 3002)] })).results[0]?.entry?.id as string;
    await vi.waitFor(async () => expect((await authorized(agent2)).sort()).toEqual([e2, e3].sort()), { timeout: 10_000, interval: 250 });
    // A delete through A leaves B's index too.
    await adminA.entries.batchDeleteEntry({ ids: [e2] });
    await vi.waitFor(async () => expect(await authorized(agent2)).toEqual([e3]), { timeout: 10_000, interval: 250 });

    // A federated bundle set, then replaced, through A reaches the sync answers of B (its bundle cache follows the feed).
    const foreign = makeTestCa("foreign.test");
    const bundlesA = createUnaryClient(BundleAdmin, `unix:${a.socketPath}`, credentials.createInsecure());
    cleanups.push(() => bundlesA.close());
    await bundlesA.setFederatedBundle({ bundle: { trustDomain: "foreign.test", spiffeBundleJson: foreign.bundleJson(1n) } });
    const federating = create(EntrySchema, { ...entry("federating", tok2.agentId, 3003), federatesWith: ["foreign.test"] });
    const e4 = (await adminA.entries.batchCreateEntry({ entries: [federating] })).results[0]?.entry?.id as string;
    const foreignSequence = async () => (await agent2.api.syncAuthorized({})).bundles.find((x) => x.trustDomain === "foreign.test")?.sequence;
    await vi.waitFor(async () => expect(await authorized(agent2)).toContain(e4), { timeout: 10_000, interval: 250 });
    await vi.waitFor(async () => expect(await foreignSequence()).toBe("1"), { timeout: 10_000, interval: 250 });
    await bundlesA.setFederatedBundle({ bundle: { trustDomain: "foreign.test", spiffeBundleJson: foreign.bundleJson(2n) } });
    await vi.waitFor(async () => expect(await foreignSequence()).toBe("2"), { timeout: 10_000, interval: 250 });

    // A ban through A refuses the agent at B once B's feed delivers it (B serves its record from its cache).
    await adminA.agents.banAgent({ spiffeId: agent2.spiffeId });
    await vi.waitFor(
      async () => {
        const e = await refusal(agent2.api.syncAuthorized({}));
        expect(e.code).toBe(status.PERMISSION_DENIED);
        expect(e.details).toBe(`agent api: agent ${agent2.spiffeId} is banned`);
      },
      { timeout: 10_000, interval: 250 },
    );
  }, 240_000);
});
