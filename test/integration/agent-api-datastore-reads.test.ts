/**
 * The agent API's database load at steady state, against an in-process
 * server over real mTLS: agent records and bundles come from caches the
 * change feed keeps current, so syncing agents read nothing from the
 * datastore while nothing changes, and a change made through the server
 * (a ban, an eviction, a bundle update) applies on the very next call.
 *
 * Calls are counted by wrapping the server's datastore methods
 * (`test/support/datastore-calls.ts`); only those made from the agent API's
 * code are asserted on (the CA rotation job reads the own bundle every 10 s on
 * its own timer, and the change feed polls: neither is per-agent load).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseSelector } from "../../common/selector.js";
import { createUnaryClient, type UnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, BundleAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { parseServerConfig } from "../../server/config/load.js";
import { startServer, type RunningServer } from "../../server/main.js";
import { countDatastoreCalls, type DatastoreCalls } from "../support/datastore-calls.js";
import { makeTestCa } from "../support/federation-bundles.js";
import { testServerConfigYaml } from "./support/server-process.js";
import { attestInProcess, refusal, type Attested } from "./support/test-agent.js";

const TD = "example.org";
let dir: string;
let server: RunningServer;
let agentAdmin: UnaryClient<(typeof AgentAdmin)["method"]>;
let bundleAdmin: UnaryClient<(typeof BundleAdmin)["method"]>;
let calls: DatastoreCalls;

const total = (): number => [...calls.agentApi.values()].reduce((a, b) => a + b, 0);

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "sigil-agent-reads-"));
  // Sync limits off: the test syncs one agent far faster than an agent would. The caches'
  // age bound and the feed's start window (gap_timeout after the start, when the caches are
  // dropped once) are pushed past the test's run, so a slow machine does not see those reads.
  const config = parseServerConfig(
    testServerConfigYaml(dir, {
      keyManager: "memory",
      serverExtra: "  audit_log_enabled: false\n  ratelimit:\n    sync: false\n  change_feed:\n    gap_timeout: 1h\n    cache_max_age: 24h\n",
    }),
  );
  server = await startServer(config, { logDestination: { write: () => undefined } });
  calls = countDatastoreCalls(server.datastore);
  agentAdmin = createUnaryClient(AgentAdmin, `unix:${server.adminSocketPath}`, credentials.createInsecure());
  bundleAdmin = createUnaryClient(BundleAdmin, `unix:${server.adminSocketPath}`, credentials.createInsecure());
}, 60_000);

afterAll(async () => {
  try {
    agentAdmin?.close();
    bundleAdmin?.close();
    await server?.stop();
  } finally {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
});

describe("agent API: syncs at steady state read nothing from the datastore", () => {
  let agent: Attested;

  beforeAll(async () => {
    agent = await attestInProcess(server, new Date(), "steady");
  });
  afterAll(() => agent?.api.close());

  it("the first call reads the new agent's record once; 100 syncs after it make no datastore call at all (no agent record, no bundle)", async () => {
    calls.clear();
    await agent.api.syncAuthorized({});
    // The counter sees the agent API's reads: the record was not cached yet.
    expect(calls.agentApi.get("getAgent")).toBe(1);
    calls.clear();
    for (let i = 0; i < 100; i++) await agent.api.syncAuthorized({});
    expect(Object.fromEntries(calls.agentApi)).toEqual({});
    expect(total()).toBe(0);
  });

  it("a ban through the admin API refuses the very next call", async () => {
    const banned = await attestInProcess(server, new Date(), "admin-ban");
    try {
      await banned.api.syncAuthorized({});
      await banned.api.syncAuthorized({});
      await agentAdmin.banAgent({ spiffeId: banned.spiffeId });
      const e = await refusal(banned.api.syncAuthorized({}));
      expect(e.code).toBe(status.PERMISSION_DENIED);
      expect(e.details).toBe(`agent api: agent ${banned.spiffeId} is banned`);
    } finally {
      banned.api.close();
    }
  });

  it("an eviction through the admin API refuses the very next call", async () => {
    const evicted = await attestInProcess(server, new Date(), "admin-evict");
    try {
      await evicted.api.syncAuthorized({});
      await agentAdmin.evictAgent({ spiffeId: evicted.spiffeId });
      const e = await refusal(evicted.api.syncAuthorized({}));
      expect(e.code).toBe(status.PERMISSION_DENIED);
      expect(e.details).toContain("is not an attested agent");
    } finally {
      evicted.api.close();
    }
  });

  it("a federated bundle set, then updated, through the admin API is in the very next sync; syncs in between read nothing", async () => {
    const foreign = makeTestCa("foreign.test");
    const other = makeTestCa("foreign.test");
    await bundleAdmin.setFederatedBundle({ bundle: { trustDomain: "foreign.test", spiffeBundleJson: foreign.bundleJson(1n) } });
    const entry = await server.datastore.createEntry({ spiffeId: `spiffe://${TD}/federating`, parentId: agent.spiffeId, selectors: [parseSelector("unix:uid:7")], federatesWith: ["foreign.test"] });
    // The entry reaches the index through the feed at commit (a write through this server).
    const first = await agent.api.syncAuthorized({});
    expect(first.entries.map((e) => e.id)).toContain(entry.id);
    const held = first.bundles.find((b) => b.trustDomain === "foreign.test");
    expect(held?.sequence).toBe("1");
    expect(held?.spiffeBundleJson).toContain(foreign.certPem.split("\n")[1]!.slice(0, 40));

    calls.clear();
    for (let i = 0; i < 20; i++) await agent.api.syncAuthorized({ knownRevision: first.revision });
    expect(total()).toBe(0);

    await bundleAdmin.setFederatedBundle({ bundle: { trustDomain: "foreign.test", spiffeBundleJson: other.bundleJson(2n) } });
    const next = await agent.api.syncAuthorized({ knownRevision: first.revision });
    expect(next.notModified).toBe(false);
    const updated = next.bundles.find((b) => b.trustDomain === "foreign.test");
    expect(updated?.sequence).toBe("2");
    expect(updated?.spiffeBundleJson).not.toBe(held?.spiffeBundleJson);
    // The bundle cache read the changed bundle once, at the change; the sync itself read nothing.
    expect(calls.agentApi.get("getBundle") ?? 0).toBe(0);

    await server.datastore.deleteEntry(entry.id);
    await bundleAdmin.deleteFederatedBundle({ trustDomain: "foreign.test" });
    const after = await agent.api.syncAuthorized({});
    expect(after.bundles.map((b) => b.trustDomain)).toEqual([TD]);
  });
});
