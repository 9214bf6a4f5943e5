/**
 * The admin API end to end over a Unix socket: a grpc-js server with the four
 * admin services, a temp SQLite datastore, a real CA manager, and the same
 * unary client the CLI uses. Every refusal is checked three ways: gRPC status,
 * a message naming the field, and an unchanged datastore.
 */
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials, Server, ServerCredentials, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock, systemClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { createUnaryClient, type UnaryClient } from "../../../../common/rpc/unary-client.js";
import { parseSelector } from "../../../../common/selector.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { AgentAdmin, AuthorityAdmin, BundleAdmin, EntryAdmin, SvidAdmin } from "../../../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema, type Entry } from "../../../../proto/gen/sigil/types/v1/types_pb.js";
import { createAdminApi, MAX_ADMIN_BATCH_SIZE } from "../../../../server/api/admin-api.js";
import { CaManager } from "../../../../server/ca/manager.js";
import { createSqliteDatastore, type Datastore } from "../../../../server/datastore/index.js";
import { parseSpiffeBundle, serializeSpiffeBundle, toJwtBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { X509Bundle } from "../../../../spiffe/bundle/x509-bundle.js";
import { buildCsr } from "../../../../spiffe/csr.js";
import { grpcServiceDefinition } from "../../../../spiffe/grpc/service.js";
import { parseTrustDomain, type TrustDomain } from "../../../../spiffe/id.js";
import { validateJwtSvid } from "../../../../spiffe/jwt/validate.js";
import { StaticX509BundleSource } from "../../../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../../../spiffe/x509/verify.js";
import { makeRoot } from "../../../fixtures/x509/pki.js";

const TD = parseTrustDomain("example.org");
const SERVER_ID = "spiffe://example.org/spire/server";
const AGENT = "spiffe://example.org/spire/agent/x509pop/node1";
const HOUR = 3_600_000;

const root = mkdtempSync(path.join(tmpdir(), "sigil-admin-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

interface Env {
  /** The admin socket's path. */
  socket: string;
  ds: Datastore;
  ca: CaManager;
  clock: ManualClock;
  lines: string[];
  metrics: Metrics;
  entry: UnaryClient<(typeof EntryAdmin)["method"]>;
  agent: UnaryClient<(typeof AgentAdmin)["method"]>;
  bundle: UnaryClient<(typeof BundleAdmin)["method"]>;
  svid: UnaryClient<(typeof SvidAdmin)["method"]>;
  close(): Promise<void>;
}

let n = 0;
async function startEnv(opts: { maxTtlMs?: number } = {}): Promise<Env> {
  const dir = mkdtempSync(path.join(root, "t"));
  // The datastore and the admin API share a hand-moved clock (join-token expiry); the CA runs on real time.
  const clock = new ManualClock(new Date());
  const ds = await createSqliteDatastore({ path: path.join(dir, "ds.sqlite3"), clock });
  const ca = new CaManager({ trustDomain: TD, caTtlMs: 24 * HOUR, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store: ds, clock: systemClock });
  await ca.start();
  const lines: string[] = [];
  const log = createLogger({ level: "info", destination: { write: (l) => lines.push(l) } });
  const metrics = new Metrics({ defaultMetrics: false });
  const admin = createAdminApi({
    trustDomain: TD,
    serverId: SERVER_ID,
    datastore: ds,
    ca,
    log,
    metrics,
    auditEnabled: true,
    now: () => clock.now(),
    defaultX509TtlMs: HOUR,
    defaultJwtTtlMs: 5 * 60_000,
    ...(opts.maxTtlMs === undefined ? {} : { maxTtlMs: opts.maxTtlMs }),
  });
  const server = new Server();
  server.addService(grpcServiceDefinition(EntryAdmin), admin.entry);
  server.addService(grpcServiceDefinition(AgentAdmin), admin.agent);
  server.addService(grpcServiceDefinition(BundleAdmin), admin.bundle);
  server.addService(grpcServiceDefinition(SvidAdmin), admin.svid);
  server.addService(grpcServiceDefinition(AuthorityAdmin), admin.authority);
  const socket = path.join(dir, `admin${n++}.sock`);
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
  const target = `unix:${socket}`;
  const creds = credentials.createInsecure();
  const clients = {
    entry: createUnaryClient(EntryAdmin, target, creds),
    agent: createUnaryClient(AgentAdmin, target, creds),
    bundle: createUnaryClient(BundleAdmin, target, creds),
    svid: createUnaryClient(SvidAdmin, target, creds),
  };
  return {
    socket,
    ds,
    ca,
    clock,
    lines,
    metrics,
    ...clients,
    async close() {
      for (const c of Object.values(clients)) c.close();
      server.forceShutdown();
      await ds.close();
    },
  };
}

let env: Env;
beforeEach(async () => {
  env = await startEnv();
});
afterEach(async () => {
  await env.close();
});

/** The gRPC error of a call that must fail. */
async function grpcError(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    return e as ServiceError;
  }
  throw new Error("expected the call to fail");
}

/** Expects a failure with this status and a message containing every fragment. */
async function expectFailure(p: Promise<unknown>, code: status, ...fragments: string[]): Promise<void> {
  const err = await grpcError(p);
  expect({ code: err.code, details: err.details }).toMatchObject({ code });
  for (const f of fragments) expect(err.details).toContain(f);
}

function entry(spiffeId: string, fields: Partial<Omit<Entry, "$typeName" | "selectors">> & { selectors?: string[] } = {}): Entry {
  const { selectors, ...rest } = fields;
  return create(EntrySchema, {
    spiffeId,
    parentId: SERVER_ID,
    ...rest,
    selectors: (selectors ?? ["unix:uid:1000"]).map((s) => {
      const sel = parseSelector(s);
      return { type: sel.type, value: sel.value };
    }),
  });
}

/** A raw wire selector (bypasses parseSelector so bad ones can be sent). */
function rawEntry(spiffeId: string, selectors: { type: string; value: string }[], parentId = SERVER_ID): Entry {
  return create(EntrySchema, { spiffeId, parentId, selectors });
}

async function createOk(...entries: Entry[]): Promise<Entry[]> {
  const res = await env.entry.batchCreateEntry({ entries });
  for (const r of res.results) expect(r.status, r.status?.message).toMatchObject({ code: 0 });
  return res.results.map((r) => r.entry as Entry);
}

async function seedAgent(spiffeId: string, attestationType = "x509pop"): Promise<void> {
  await env.ds.createAgent({ spiffeId, attestationType, certSerial: "1", certNotAfter: new Date(Date.now() + HOUR) });
}

/** Audit records written so far. */
function auditRecords(): Record<string, unknown>[] {
  return env.lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.type === "audit");
}

async function storeFederatedBundle(td: string): Promise<void> {
  const { publicKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const json = serializeSpiffeBundle({ trustDomain: parseTrustDomain(td), x509Authorities: [], jwtAuthorities: new Map([["k1", publicKey]]) });
  await env.bundle.setFederatedBundle({ bundle: { trustDomain: td, spiffeBundleJson: json } });
}

describe("EntryAdmin", () => {
  it("creates, shows, counts and deletes entries", async () => {
    const [web] = await createOk(entry("spiffe://example.org/web", { hint: "external", dnsNames: ["web.example.org"], x509SvidTtl: 600 }));
    expect(web).toMatchObject({ spiffeId: "spiffe://example.org/web", parentId: SERVER_ID, hint: "external", dnsNames: ["web.example.org"], x509SvidTtl: 600, revision: 0n });
    expect(web?.id).toMatch(/.+/);

    const shown = await env.entry.getEntry({ id: web?.id ?? "" });
    expect(shown).toEqual(web);
    expect((await env.entry.countEntries({})).count).toBe(1n);

    const del = await env.entry.batchDeleteEntry({ ids: [web?.id ?? "", "no-such-entry"] });
    expect(del.results[0]).toMatchObject({ id: web?.id, status: { code: 0 } });
    expect(del.results[1]).toMatchObject({ id: "no-such-entry", status: { code: status.NOT_FOUND } });
    expect(del.results[1]?.status?.message).toContain("ids[1]");
    expect(del.results[1]?.status?.message).toContain("no-such-entry");
    expect((await env.entry.countEntries({})).count).toBe(0n);
    await expectFailure(env.entry.getEntry({ id: web?.id ?? "" }), status.NOT_FOUND, web?.id ?? "?");
  });

  it("keeps an operator-chosen entry ID", async () => {
    const [e] = await createOk(entry("spiffe://example.org/db", { id: "db-entry" }));
    expect(e?.id).toBe("db-entry");
  });

  it("creates a node alias and its workloads in one batch, in any order", async () => {
    const alias = "spiffe://example.org/node/cluster-a";
    const res = await env.entry.batchCreateEntry({
      entries: [entry("spiffe://example.org/workload", { parentId: alias }), entry(alias, { selectors: ["k8s_psat:cluster:a"] })],
    });
    expect(res.results.map((r) => r.status?.code)).toEqual([0, 0]);
    expect(res.results[0]?.entry?.parentId).toBe(alias);
  });

  it("accepts a parent that is an attested agent or another entry's SPIFFE ID", async () => {
    await seedAgent(AGENT);
    const [onAgent] = await createOk(entry("spiffe://example.org/a", { parentId: AGENT }));
    expect(onAgent?.parentId).toBe(AGENT);
    await createOk(entry("spiffe://example.org/b", { parentId: "spiffe://example.org/a" }));
  });

  it("accepts a parent that is a fresh join token's default agent ID until the token expires", async () => {
    const tok = await env.agent.createJoinToken({ ttl: 60 });
    expect(tok.agentId).toBe(`spiffe://example.org/spire/agent/join_token/${tok.token}`);
    const [e] = await createOk(entry("spiffe://example.org/on-token", { parentId: tok.agentId }));
    expect(e?.parentId).toBe(tok.agentId);

    env.clock.advance(61_000);
    const res = await env.entry.batchCreateEntry({ entries: [entry("spiffe://example.org/late", { parentId: tok.agentId })] });
    expect(res.results[0]?.status?.code).toBe(status.NOT_FOUND);
  });

  it("accepts a parent that is a join token's custom agent ID", async () => {
    const tok = await env.agent.createJoinToken({ agentId: "spiffe://example.org/spire/agent/host/build-7" });
    await createOk(entry("spiffe://example.org/ci", { parentId: "spiffe://example.org/spire/agent/host/build-7" }));
    expect(tok.agentId).toBe("spiffe://example.org/spire/agent/host/build-7");
  });

  describe("refuses bad entries per item, naming the field, writing nothing", () => {
    const cases: Array<[string, () => Entry, status, string[]]> = [
      ["malformed SPIFFE ID", () => entry("spiffe://example.org/a/../b"), status.INVALID_ARGUMENT, ["entries[0].spiffe_id"]],
      ["SPIFFE ID in another trust domain", () => entry("spiffe://other.org/web"), status.INVALID_ARGUMENT, ["entries[0].spiffe_id", "other.org"]],
      ["bad selector type", () => rawEntry("spiffe://example.org/web", [{ type: "Unix!", value: "uid:1" }]), status.INVALID_ARGUMENT, ["entries[0].selectors[0]"]],
      ["selector without value", () => rawEntry("spiffe://example.org/web", [{ type: "unix", value: "uid:1" }, { type: "unix", value: "" }]), status.INVALID_ARGUMENT, ["entries[0].selectors[1]"]],
      ["no selectors", () => rawEntry("spiffe://example.org/web", []), status.INVALID_ARGUMENT, ["entries[0].selectors"]],
      ["unknown parent", () => entry("spiffe://example.org/web", { parentId: "spiffe://example.org/spire/agent/ghost" }), status.NOT_FOUND, ["entries[0].parent_id", "ghost"]],
      ["hint too long", () => entry("spiffe://example.org/web", { hint: "h".repeat(1025) }), status.INVALID_ARGUMENT, ["entries[0].hint"]],
      ["bad DNS name", () => entry("spiffe://example.org/web", { dnsNames: ["ok.example.org", "bad_name!"] }), status.INVALID_ARGUMENT, ["entries[0].dns_names[1]"]],
      ["federates with an unknown trust domain", () => entry("spiffe://example.org/web", { federatesWith: ["nowhere.org"] }), status.INVALID_ARGUMENT, ["entries[0]", "nowhere.org"]],
    ];
    for (const [name, make, code, fragments] of cases) {
      it(name, async () => {
        const before = await env.ds.lastEventId();
        const res = await env.entry.batchCreateEntry({ entries: [make()] });
        expect(res.results).toHaveLength(1);
        expect(res.results[0]?.status?.code).toBe(code);
        for (const f of fragments) expect(res.results[0]?.status?.message).toContain(f);
        expect(res.results[0]?.entry).toBeUndefined();
        expect(await env.ds.countEntries()).toBe(0);
        expect(await env.ds.lastEventId()).toBe(before);
      });
    }
  });

  it("refuses a duplicate entry with ALREADY_EXISTS and creates the valid items of a mixed batch", async () => {
    await createOk(entry("spiffe://example.org/web"));
    const res = await env.entry.batchCreateEntry({
      entries: [entry("spiffe://example.org/web"), entry("spiffe://example.org/api"), entry("not-a-spiffe-id")],
    });
    expect(res.results.map((r) => r.status?.code)).toEqual([status.ALREADY_EXISTS, 0, status.INVALID_ARGUMENT]);
    expect(res.results[0]?.status?.message).toContain("entries[0]");
    expect(res.results[2]?.status?.message).toContain("entries[2].spiffe_id");
    expect(await env.ds.countEntries()).toBe(2);
  });

  it("refuses an empty or oversized batch as a whole", async () => {
    await expectFailure(env.entry.batchCreateEntry({ entries: [] }), status.INVALID_ARGUMENT, "entries", "empty");
    const many = Array.from({ length: MAX_ADMIN_BATCH_SIZE + 1 }, (_, i) => entry(`spiffe://example.org/w${i}`));
    await expectFailure(env.entry.batchCreateEntry({ entries: many }), status.INVALID_ARGUMENT, "entries", String(MAX_ADMIN_BATCH_SIZE));
    await expectFailure(env.entry.batchDeleteEntry({ ids: Array.from({ length: MAX_ADMIN_BATCH_SIZE + 1 }, (_, i) => `e${i}`) }), status.INVALID_ARGUMENT, "ids");
    expect(await env.ds.countEntries()).toBe(0);
  });

  it("updates only the masked fields and bumps the revision", async () => {
    const [e] = await createOk(entry("spiffe://example.org/web", { hint: "old", x509SvidTtl: 300, dnsNames: ["a.example.org"] }));
    const res = await env.entry.batchUpdateEntry({
      entries: [entry("spiffe://example.org/ignored", { id: e?.id ?? "", hint: "new", x509SvidTtl: 900, selectors: ["unix:uid:1"] })],
      mask: ["hint", "x509_svid_ttl"],
    });
    expect(res.results[0]?.status?.code).toBe(0);
    expect(res.results[0]?.entry).toMatchObject({ spiffeId: "spiffe://example.org/web", hint: "new", x509SvidTtl: 900, dnsNames: ["a.example.org"], revision: 1n });
    expect(res.results[0]?.entry?.selectors).toEqual(e?.selectors);
    expect((await env.entry.getEntry({ id: e?.id ?? "" })).hint).toBe("new");
  });

  it("with an empty mask replaces every field", async () => {
    const [e] = await createOk(entry("spiffe://example.org/web", { hint: "old", dnsNames: ["a.example.org"] }));
    const res = await env.entry.batchUpdateEntry({ entries: [entry("spiffe://example.org/web2", { id: e?.id ?? "", selectors: ["unix:uid:2"] })], mask: [] });
    expect(res.results[0]?.entry).toMatchObject({ spiffeId: "spiffe://example.org/web2", hint: "", dnsNames: [], selectors: [{ type: "unix", value: "uid:2" }] });
  });

  it("keeps an entry's parent valid on update even after its agent is evicted", async () => {
    await seedAgent(AGENT);
    const [e] = await createOk(entry("spiffe://example.org/web", { parentId: AGENT }));
    await env.agent.evictAgent({ spiffeId: AGENT });
    const res = await env.entry.batchUpdateEntry({ entries: [entry("", { id: e?.id ?? "", hint: "still here" })], mask: ["hint"] });
    expect(res.results[0]?.status?.code).toBe(0);
  });

  it("refuses an unknown mask field, a missing entry and an invalid merged entry", async () => {
    const [e] = await createOk(entry("spiffe://example.org/web"));
    const before = await env.ds.lastEventId();
    await expectFailure(
      env.entry.batchUpdateEntry({ entries: [entry("spiffe://example.org/web", { id: e?.id ?? "" })], mask: ["hint", "revision"] }),
      status.INVALID_ARGUMENT,
      "mask[1]",
      '"revision"',
    );
    const res = await env.entry.batchUpdateEntry({
      entries: [
        entry("spiffe://example.org/x", { id: "missing" }),
        entry("spiffe://example.org/x", { id: e?.id ?? "", hint: "x".repeat(2000) }),
        entry("spiffe://example.org/x", { id: e?.id ?? "", parentId: "spiffe://example.org/nobody" }),
        entry("spiffe://example.org/x"),
      ],
      mask: ["hint", "parent_id"],
    });
    expect(res.results.map((r) => r.status?.code)).toEqual([status.NOT_FOUND, status.INVALID_ARGUMENT, status.NOT_FOUND, status.INVALID_ARGUMENT]);
    expect(res.results[0]?.status?.message).toContain("missing");
    expect(res.results[1]?.status?.message).toContain("entries[1].hint");
    expect(res.results[2]?.status?.message).toContain("entries[2].parent_id");
    expect(res.results[3]?.status?.message).toContain("entries[3].id");
    expect(await env.ds.lastEventId()).toBe(before);
    expect((await env.entry.getEntry({ id: e?.id ?? "" })).revision).toBe(0n);
  });

  describe("ListEntries", () => {
    beforeEach(async () => {
      await seedAgent(AGENT);
      await storeFederatedBundle("partner.org");
      await createOk(
        entry("spiffe://example.org/a", { selectors: ["unix:uid:1"] }),
        entry("spiffe://example.org/b", { selectors: ["unix:uid:1", "unix:gid:1"], parentId: AGENT, hint: "blue" }),
        entry("spiffe://example.org/c", { selectors: ["unix:uid:1", "unix:gid:1", "unix:user:c"], federatesWith: ["partner.org"] }),
        entry("spiffe://example.org/d", { selectors: ["unix:gid:1"], downstream: true }),
        entry("spiffe://example.org/e", { selectors: ["k8s:ns:prod"] }),
      );
    });

    const ids = (entries: readonly Entry[]) => entries.map((e) => e.spiffeId.replace("spiffe://example.org/", "")).sort();
    const list = async (filter: Record<string, unknown>) => ids((await env.entry.listEntries({ filter })).entries);
    const sel = (...s: string[]) => s.map((x) => {
      const p = parseSelector(x);
      return { type: p.type, value: p.value };
    });

    it("filters by SPIFFE ID, parent, hint, downstream and federated trust domain", async () => {
      expect(await list({ bySpiffeId: "spiffe://example.org/c" })).toEqual(["c"]);
      expect(await list({ byParentId: AGENT })).toEqual(["b"]);
      expect(await list({ byHint: "blue" })).toEqual(["b"]);
      expect(await list({ byDownstream: "true" })).toEqual(["d"]);
      expect(await list({ byDownstream: "false" })).toEqual(["a", "b", "c", "e"]);
      expect(await list({ byFederatesWith: "partner.org" })).toEqual(["c"]);
      expect(await list({ byFederatesWith: "spiffe://partner.org" })).toEqual(["c"]);
      expect(Number((await env.entry.countEntries({ filter: { byParentId: SERVER_ID } })).count)).toBe(4);
    });

    it("matches selectors exactly (default), as subset, superset or any", async () => {
      const s = sel("unix:uid:1", "unix:gid:1");
      expect(await list({ bySelectors: s })).toEqual(["b"]);
      expect(await list({ bySelectors: s, selectorMatch: "exact" })).toEqual(["b"]);
      expect(await list({ bySelectors: s, selectorMatch: "subset" })).toEqual(["a", "b", "d"]);
      expect(await list({ bySelectors: s, selectorMatch: "superset" })).toEqual(["b", "c"]);
      expect(await list({ bySelectors: s, selectorMatch: "any" })).toEqual(["a", "b", "c", "d"]);
      expect(Number((await env.entry.countEntries({ filter: { bySelectors: s, selectorMatch: "any" } })).count)).toBe(4);
    });

    it("pages through results with the returned token", async () => {
      const seen: string[] = [];
      let pageToken = "";
      let pages = 0;
      do {
        const res = await env.entry.listEntries({ pageSize: 2, pageToken });
        expect(res.entries.length).toBeLessThanOrEqual(2);
        seen.push(...ids(res.entries));
        pageToken = res.nextPageToken;
        pages++;
      } while (pageToken && pages < 10);
      expect(seen.sort()).toEqual(["a", "b", "c", "d", "e"]);
      expect(pages).toBeGreaterThanOrEqual(3);
    });

    it("refuses bad filters, page sizes and page tokens, naming them", async () => {
      await expectFailure(env.entry.listEntries({ filter: { selectorMatch: "most" } }), status.INVALID_ARGUMENT, "filter.selector_match");
      await expectFailure(env.entry.listEntries({ filter: { byDownstream: "yes" } }), status.INVALID_ARGUMENT, "filter.by_downstream");
      await expectFailure(env.entry.listEntries({ filter: { bySpiffeId: "http://x" } }), status.INVALID_ARGUMENT, "filter.by_spiffe_id");
      await expectFailure(env.entry.listEntries({ filter: { bySelectors: [{ type: "unix", value: "" }] } }), status.INVALID_ARGUMENT, "filter.by_selectors[0]");
      await expectFailure(env.entry.countEntries({ filter: { byFederatesWith: "Bad Domain" } }), status.INVALID_ARGUMENT, "filter.by_federates_with");
      await expectFailure(env.entry.listEntries({ pageSize: 100_000 }), status.INVALID_ARGUMENT, "page_size");
      await expectFailure(env.entry.listEntries({ pageSize: -1 }), status.INVALID_ARGUMENT, "page_size");
      await expectFailure(env.entry.listEntries({ pageSize: 2, pageToken: "garbage" }), status.INVALID_ARGUMENT, "page_token");
    });
  });
});

describe("AgentAdmin", () => {
  it("lists, shows, bans, evicts and counts agents", async () => {
    await seedAgent(AGENT);
    await seedAgent("spiffe://example.org/spire/agent/join_token/t1", "join_token");
    expect((await env.agent.countAgents({})).count).toBe(2n);
    expect((await env.agent.listAgents({})).agents.map((a) => a.spiffeId).sort()).toEqual([AGENT, "spiffe://example.org/spire/agent/join_token/t1"].sort());
    expect((await env.agent.listAgents({ byAttestationType: "join_token" })).agents.map((a) => a.spiffeId)).toEqual(["spiffe://example.org/spire/agent/join_token/t1"]);

    const shown = await env.agent.getAgent({ spiffeId: AGENT });
    expect(shown).toMatchObject({ spiffeId: AGENT, attestationType: "x509pop", banned: false, x509SvidSerial: "1" });

    await env.agent.banAgent({ spiffeId: AGENT });
    expect(await env.agent.getAgent({ spiffeId: AGENT })).toMatchObject({ banned: true, x509SvidSerial: "" });
    expect((await env.agent.listAgents({ byBanned: "true" })).agents.map((a) => a.spiffeId)).toEqual([AGENT]);
    expect((await env.agent.listAgents({ byBanned: "false" })).agents.map((a) => a.spiffeId)).toEqual(["spiffe://example.org/spire/agent/join_token/t1"]);

    await env.agent.evictAgent({ spiffeId: AGENT });
    await expectFailure(env.agent.getAgent({ spiffeId: AGENT }), status.NOT_FOUND, "spiffe_id", AGENT);
    expect((await env.agent.countAgents({})).count).toBe(1n);
  });

  it("pages agents", async () => {
    for (let i = 0; i < 3; i++) await seedAgent(`spiffe://example.org/spire/agent/x/${i}`);
    const first = await env.agent.listAgents({ pageSize: 2 });
    expect(first.agents).toHaveLength(2);
    const second = await env.agent.listAgents({ pageSize: 2, pageToken: first.nextPageToken });
    expect([...first.agents, ...second.agents].map((a) => a.spiffeId).sort()).toEqual([0, 1, 2].map((i) => `spiffe://example.org/spire/agent/x/${i}`));
  });

  it("refuses bad agent requests, naming the field", async () => {
    await seedAgent(AGENT);
    await expectFailure(env.agent.listAgents({ byBanned: "maybe" }), status.INVALID_ARGUMENT, "by_banned", "maybe");
    await expectFailure(env.agent.getAgent({ spiffeId: "" }), status.INVALID_ARGUMENT, "spiffe_id", "required");
    await expectFailure(env.agent.banAgent({ spiffeId: "not an id" }), status.INVALID_ARGUMENT, "spiffe_id");
    await expectFailure(env.agent.banAgent({ spiffeId: "spiffe://example.org/spire/agent/ghost" }), status.NOT_FOUND, "spiffe://example.org/spire/agent/ghost");
    await expectFailure(env.agent.evictAgent({ spiffeId: "spiffe://example.org/spire/agent/ghost" }), status.NOT_FOUND, "spiffe://example.org/spire/agent/ghost");
    expect(await env.agent.getAgent({ spiffeId: AGENT })).toMatchObject({ banned: false });
  });

  describe("CreateJoinToken", () => {
    it("generates unique 128-bit tokens that expire after the default 600 s", async () => {
      const t0 = env.clock.now().getTime();
      const a = await env.agent.createJoinToken({});
      const b = await env.agent.createJoinToken({});
      expect(a.token).toMatch(/^[0-9a-f]{32}$/);
      expect(b.token).not.toBe(a.token);
      expect(Number(a.expiresAt)).toBe(Math.floor((t0 + 600_000) / 1000));
      // The datastore honours the expiry: usable just before, expired at it.
      const stillValid = await env.ds.consumeJoinToken(a.token, new Date(t0 + 599_000));
      expect(stillValid.agentId).toBeUndefined();
      await expect(env.ds.consumeJoinToken(b.token, new Date(t0 + 600_000))).rejects.toMatchObject({ code: "ERR_PERMISSION_DENIED" });
    });

    it("honours a custom TTL, token and agent ID", async () => {
      const t0 = env.clock.now().getTime();
      const res = await env.agent.createJoinToken({ ttl: 3600, token: "operator-chosen-token-1", agentId: "spiffe://example.org/spire/agent/host/db-1" });
      expect(res).toMatchObject({ token: "operator-chosen-token-1", agentId: "spiffe://example.org/spire/agent/host/db-1", expiresAt: BigInt(Math.floor((t0 + 3_600_000) / 1000)) });
      expect(await env.ds.consumeJoinToken("operator-chosen-token-1", new Date(t0 + 3_599_000))).toMatchObject({ agentId: "spiffe://example.org/spire/agent/host/db-1" });
    });

    it("refuses bad TTLs, tokens and agent IDs", async () => {
      await expectFailure(env.agent.createJoinToken({ ttl: -1 }), status.INVALID_ARGUMENT, "ttl");
      await expectFailure(env.agent.createJoinToken({ ttl: 31 * 24 * 3600 }), status.INVALID_ARGUMENT, "ttl", "maximum");
      await expectFailure(env.agent.createJoinToken({ token: "short" }), status.INVALID_ARGUMENT, "token", "16");
      await expectFailure(env.agent.createJoinToken({ token: "has spaces in it, not allowed" }), status.INVALID_ARGUMENT, "token");
      await expectFailure(env.agent.createJoinToken({ agentId: "spiffe://other.org/host" }), status.INVALID_ARGUMENT, "agent_id", "other.org");
      await expectFailure(env.agent.createJoinToken({ agentId: "spiffe://example.org" }), status.INVALID_ARGUMENT, "agent_id", "path");
      await expectFailure(env.agent.createJoinToken({ agentId: SERVER_ID }), status.INVALID_ARGUMENT, "agent_id", "server");
      await env.agent.createJoinToken({ token: "the-same-token-twice" });
      await expectFailure(env.agent.createJoinToken({ token: "the-same-token-twice" }), status.ALREADY_EXISTS, "token");
    });

    it("audits the agent ID, never the token", async () => {
      const generated = await env.agent.createJoinToken({});
      await env.agent.createJoinToken({ token: "secret-token-value-xyz" });
      await env.agent.createJoinToken({ token: "secret-token-value-abc", agentId: "spiffe://example.org/spire/agent/host/h1" });
      const recs = auditRecords().filter((r) => r.method === "/sigil.admin.v1.AgentAdmin/CreateJoinToken");
      expect(recs.map((r) => [r.status, r.agent_id])).toEqual([
        ["success", "spiffe://example.org/spire/agent/join_token/REDACTED"],
        ["success", "spiffe://example.org/spire/agent/join_token/REDACTED"],
        ["success", "spiffe://example.org/spire/agent/host/h1"],
      ]);
      const all = env.lines.join("\n");
      for (const t of [generated.token, "secret-token-value-xyz", "secret-token-value-abc"]) expect(all).not.toContain(t);
    });
  });
});

describe("BundleAdmin", () => {
  it("returns the server's own bundle", async () => {
    const b = await env.bundle.getBundle({});
    expect(b.trustDomain).toBe("example.org");
    const parsed = parseSpiffeBundle(b.spiffeBundleJson, TD).bundle;
    expect(parsed.x509Authorities.map((d) => Buffer.from(d).toString("base64"))).toEqual(env.ca.bundle().x509Authorities.map((d) => Buffer.from(d).toString("base64")));
    expect(b.sequence).toBe(String(env.ca.bundle().sequenceNumber));
  });

  it("sets, lists and deletes federated bundles", async () => {
    const partner = parseTrustDomain("partner.org");
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const json = serializeSpiffeBundle({ trustDomain: partner, x509Authorities: [makeRoot("partner.org").der], jwtAuthorities: new Map([["k1", publicKey]]), sequenceNumber: 7n });
    const set = await env.bundle.setFederatedBundle({ bundle: { trustDomain: "partner.org", spiffeBundleJson: json } });
    expect(set).toMatchObject({ trustDomain: "partner.org", spiffeBundleJson: json, sequence: "7" });

    const again = await env.bundle.setFederatedBundle({ bundle: { trustDomain: "spiffe://partner.org", spiffeBundleJson: json, sequence: "9" } });
    expect(again.sequence).toBe("9");

    const listed = await env.bundle.listFederatedBundles({});
    expect(listed.bundles.map((b) => b.trustDomain)).toEqual(["partner.org"]);

    await env.bundle.deleteFederatedBundle({ trustDomain: "partner.org" });
    expect((await env.bundle.listFederatedBundles({})).bundles).toEqual([]);
    await expectFailure(env.bundle.deleteFederatedBundle({ trustDomain: "partner.org" }), status.NOT_FOUND, "partner.org");
  });

  it("refuses to delete a bundle entries federate with, naming how many", async () => {
    await storeFederatedBundle("partner.org");
    const [e] = await createOk(entry("spiffe://example.org/web", { federatesWith: ["partner.org"] }));
    await expectFailure(env.bundle.deleteFederatedBundle({ trustDomain: "partner.org" }), status.FAILED_PRECONDITION, "1 entry", "partner.org");
    expect((await env.bundle.listFederatedBundles({})).bundles).toHaveLength(1);
    await env.entry.batchDeleteEntry({ ids: [e?.id ?? ""] });
    await env.bundle.deleteFederatedBundle({ trustDomain: "partner.org" });
  });

  it("refuses garbage, the own trust domain and bad trust-domain names, storing nothing", async () => {
    const valid = serializeSpiffeBundle({ trustDomain: parseTrustDomain("partner.org"), x509Authorities: [makeRoot("partner.org").der], jwtAuthorities: new Map() });
    await expectFailure(env.bundle.setFederatedBundle({ bundle: { trustDomain: "partner.org", spiffeBundleJson: "{not json" } }), status.INVALID_ARGUMENT, "bundle.spiffe_bundle_json");
    await expectFailure(env.bundle.setFederatedBundle({ bundle: { trustDomain: "partner.org", spiffeBundleJson: '{"keys":[]}' } }), status.INVALID_ARGUMENT, "bundle.spiffe_bundle_json", "no X.509 or JWT");
    await expectFailure(env.bundle.setFederatedBundle({ bundle: { trustDomain: "example.org", spiffeBundleJson: valid } }), status.INVALID_ARGUMENT, "bundle.trust_domain", "own");
    await expectFailure(env.bundle.setFederatedBundle({ bundle: { trustDomain: "Not A Domain", spiffeBundleJson: valid } }), status.INVALID_ARGUMENT, "bundle.trust_domain");
    await expectFailure(env.bundle.setFederatedBundle({ bundle: { trustDomain: "partner.org", spiffeBundleJson: valid, sequence: "-1" } }), status.INVALID_ARGUMENT, "bundle.sequence");
    await expectFailure(env.bundle.setFederatedBundle({}), status.INVALID_ARGUMENT, "bundle");
    await expectFailure(env.bundle.deleteFederatedBundle({ trustDomain: "example.org" }), status.INVALID_ARGUMENT, "trust_domain", "own");
    expect((await env.ds.listBundles()).map((b) => b.trustDomain)).toEqual(["example.org"]);
  });
});

describe("AuthorityAdmin", () => {
  it("answers an inventory of an unknown key ID with NOT_FOUND naming it, and of a known key with its count", async () => {
    const authority = createUnaryClient(AuthorityAdmin, `unix:${env.socket}`, credentials.createInsecure());
    try {
      await expectFailure(authority.inventory({ keyId: "x509-Z-000000000000" }), status.NOT_FOUND, 'key_id: no authority with key ID "x509-Z-000000000000"');
      const active = (await env.ca.list()).find((a) => a.kind === "x509" && a.status === "active");
      if (!active) throw new Error("no active X.509 authority");
      const inv = await authority.inventory({ keyId: active.keyId });
      expect(inv.live).toBe(0n);
      expect(inv.keyId).toBe(active.keyId);
    } finally {
      authority.close();
    }
  });
});

describe("SvidAdmin", () => {
  function csr(): Uint8Array {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    return buildCsr(privateKey);
  }

  it("mints an X509-SVID that verifies against the returned bundle, with the requested ID, DNS names and TTL", async () => {
    const t0 = Date.now();
    const res = await env.svid.mintX509SVID({ csr: csr(), spiffeId: "spiffe://example.org/tool", dnsNames: ["tool.example.org", "*.tool.example.org"], ttl: 120 });
    const chain = res.svid?.certChain ?? [];
    expect(chain.length).toBeGreaterThan(0);
    const verified = verifyX509Svid(chain, new StaticX509BundleSource([new X509Bundle(TD, res.bundle)]));
    expect(verified.id.toString()).toBe("spiffe://example.org/tool");
    const leaf = new X509Certificate(chain[0] as Uint8Array);
    expect(leaf.subjectAltName).toContain("DNS:tool.example.org");
    expect(leaf.subjectAltName).toContain("DNS:*.tool.example.org");
    const notAfter = new Date(leaf.validTo).getTime();
    expect(notAfter).toBeLessThanOrEqual(Date.now() + 120_000);
    expect(notAfter).toBeGreaterThan(t0 + 60_000);
    expect(res.svid?.expiresAt).toBe(BigInt(Math.floor(notAfter / 1000)));
    expect(await env.metrics.x509SvidsSigned.get()).toMatchObject({ values: [{ value: 1 }] });
  });

  it("mints a JWT-SVID that validates against the CA's JWT bundle", async () => {
    const res = await env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/tool", audience: ["spiffe://example.org/api", "other"] });
    const jwtBundle = toJwtBundle(env.ca.bundle());
    const svid = validateJwtSvid(res.token, { getJwtBundleForTrustDomain: (td: TrustDomain) => (td.equals(TD) ? jwtBundle : undefined) }, { audience: "other" });
    expect(svid.spiffeId.toString()).toBe("spiffe://example.org/tool");
    expect(svid.audience).toEqual(["spiffe://example.org/api", "other"]);
    expect(BigInt(Math.floor(svid.expiresAt.getTime() / 1000))).toBe(res.expiresAt);
    const rec = auditRecords().find((r) => r.method === "/sigil.admin.v1.SvidAdmin/MintJWTSVID");
    expect(rec).toMatchObject({ status: "success", spiffe_id: "spiffe://example.org/tool" });
    expect(env.lines.join("\n")).not.toContain(res.token);
  });

  it("refuses bad mint requests, naming the field", async () => {
    await expectFailure(env.svid.mintX509SVID({ csr: new Uint8Array([1, 2, 3]), spiffeId: "spiffe://example.org/tool" }), status.INVALID_ARGUMENT, "csr");
    await expectFailure(env.svid.mintX509SVID({ spiffeId: "spiffe://example.org/tool" }), status.INVALID_ARGUMENT, "csr", "required");
    await expectFailure(env.svid.mintX509SVID({ csr: csr(), spiffeId: "spiffe://other.org/tool" }), status.INVALID_ARGUMENT, "spiffe_id", "other.org");
    await expectFailure(env.svid.mintX509SVID({ csr: csr(), spiffeId: "spiffe://example.org" }), status.INVALID_ARGUMENT, "spiffe_id", "path");
    await expectFailure(env.svid.mintX509SVID({ csr: csr(), spiffeId: "spiffe://example.org/t", dnsNames: ["ok.example.org", "-bad-"] }), status.INVALID_ARGUMENT, "dns_names[1]");
    await expectFailure(env.svid.mintX509SVID({ csr: csr(), spiffeId: "spiffe://example.org/t", ttl: -5 }), status.INVALID_ARGUMENT, "ttl");
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: [] }), status.INVALID_ARGUMENT, "audience");
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: ["a", ""] }), status.INVALID_ARGUMENT, "audience[1]");
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: ["a", "b".repeat(257)] }), status.INVALID_ARGUMENT, "audience[1]: is longer than the maximum 256 bytes (257)");
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: ["é".repeat(129)] }), status.INVALID_ARGUMENT, "audience[0]: is longer than the maximum 256 bytes (258)");
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: ["a", "b\u0001"] }), status.INVALID_ARGUMENT, "audience[1]: contains control character U+0001 at offset 1");
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: ["\u009b"] }), status.INVALID_ARGUMENT, "audience[0]: contains control character U+009b");
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: Array.from({ length: 33 }, (_, i) => `a${i}`) }), status.INVALID_ARGUMENT, "audience: has 33 audiences, more than the maximum 32");
    // The most accepted: 32 audiences of 256 bytes.
    const longest = await env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: Array.from({ length: 32 }, (_, i) => `${i}`.padEnd(256, "x")) });
    expect(longest.token.length).toBeGreaterThan(32 * 256);
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: "nope", audience: ["a"] }), status.INVALID_ARGUMENT, "spiffe_id");
  });

  it("lists the issuance log: every mint, newest first, filtered and paged; bad filters name the field", async () => {
    const x = await env.svid.mintX509SVID({ csr: csr(), spiffeId: "spiffe://example.org/tool", ttl: 120 });
    const serial = new X509Certificate(x.svid?.certChain[0] as Uint8Array).serialNumber;
    await env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/tool", audience: ["db"] });
    await env.svid.mintX509SVID({ csr: csr(), spiffeId: "spiffe://example.org/other" });

    const all = await env.svid.listIssuances({});
    expect(all.issuances.map((i) => [i.kind, i.spiffeId])).toEqual([
      ["x509-svid", "spiffe://example.org/other"],
      ["jwt-svid", "spiffe://example.org/tool"],
      ["x509-svid", "spiffe://example.org/tool"],
    ]);
    const jwt = all.issuances[1]!;
    expect(jwt).toMatchObject({ requestedBy: "admin:local", entryId: "", agentId: "", audience: ["db"] });
    expect(jwt.notAfter).toBeGreaterThan(jwt.notBefore);
    // By serial, in any hex spelling (openssl prints upper case with leading zeros).
    const bySerial = await env.svid.listIssuances({ bySerial: `00${serial}` });
    expect(bySerial.issuances.map((i) => i.spiffeId)).toEqual(["spiffe://example.org/tool"]);
    expect(bySerial.issuances[0]?.caKeyId).not.toBe("");
    expect((await env.svid.listIssuances({ bySpiffeId: "spiffe://example.org/tool" })).issuances).toHaveLength(2);
    expect((await env.svid.listIssuances({ byAgentId: "spiffe://example.org/spire/agent/x" })).issuances).toEqual([]);
    // Live at the server's clock (the CA runs on real time here; the admin clock is moved by hand).
    env.clock.set(new Date(Date.now() + 1000));
    expect((await env.svid.listIssuances({ live: true })).issuances).toHaveLength(3);
    env.clock.set(new Date(Date.now() + 200_000)); // past the 120 s SVID, within the 5 min JWT and the 1 h default
    expect((await env.svid.listIssuances({ live: true })).issuances.map((i) => i.kind)).toEqual(["x509-svid", "jwt-svid"]);
    // Pages.
    const first = await env.svid.listIssuances({ pageSize: 2 });
    expect(first.issuances).toHaveLength(2);
    const rest = await env.svid.listIssuances({ pageSize: 2, pageToken: first.nextPageToken });
    expect(rest.issuances.map((i) => i.spiffeId)).toEqual(["spiffe://example.org/tool"]);
    expect(rest.nextPageToken).toBe("");

    await expectFailure(env.svid.listIssuances({ bySerial: "xyz" }), status.INVALID_ARGUMENT, "by_serial", "hex");
    await expectFailure(env.svid.listIssuances({ bySpiffeId: "nope" }), status.INVALID_ARGUMENT, "by_spiffe_id");
    await expectFailure(env.svid.listIssuances({ byEntryId: "has space" }), status.INVALID_ARGUMENT, "by_entry_id");
    await expectFailure(env.svid.listIssuances({ pageToken: "garbage" }), status.INVALID_ARGUMENT, "page_token");
    await expectFailure(env.svid.listIssuances({ pageSize: -1 }), status.INVALID_ARGUMENT, "page_size");
  });

  it("caps the TTL at maxTtlMs when configured", async () => {
    await env.close();
    env = await startEnv({ maxTtlMs: 600_000 });
    await expectFailure(env.svid.mintX509SVID({ csr: csr(), spiffeId: "spiffe://example.org/t", ttl: 601 }), status.INVALID_ARGUMENT, "ttl", "600s");
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: ["a"], ttl: 3600 }), status.INVALID_ARGUMENT, "ttl");
    const ok = await env.svid.mintJWTSVID({ spiffeId: "spiffe://example.org/t", audience: ["a"], ttl: 600 });
    expect(ok.token).toMatch(/^eyJ/);
  });
});

describe("reserved /spire namespace", () => {
  const RESERVED = ["spiffe://example.org/spire", "spiffe://example.org/spire/server", "spiffe://example.org/spire/agent/x", "spiffe://example.org/spire/other/thing"];
  // Look-alikes outside the namespace: a longer first segment, or `spire` deeper in the path.
  const LOOK_ALIKES = ["spiffe://example.org/spirex/foo", "spiffe://example.org/foo/spire/bar", "spiffe://example.org/spire-agent/x"];

  function mintCsr(): Uint8Array {
    return buildCsr(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey);
  }

  it.each(RESERVED)("refuses to create an entry for %s, writing nothing", async (id) => {
    await seedAgent(AGENT);
    const before = await env.ds.lastEventId();
    const res = await env.entry.batchCreateEntry({ entries: [entry(id, { parentId: AGENT })] });
    expect(res.results[0]?.status).toMatchObject({ code: status.INVALID_ARGUMENT, message: `entries[0].spiffe_id: ${id} is in the reserved namespace /spire, which belongs to the server and agents` });
    expect(res.results[0]?.entry).toBeUndefined();
    expect(await env.ds.countEntries()).toBe(0);
    expect(await env.ds.lastEventId()).toBe(before);
  });

  it("creates entries whose parent is an agent or a join token's agent ID, and look-alike IDs outside /spire", async () => {
    await seedAgent(AGENT);
    const tok = await env.agent.createJoinToken({});
    const created = await createOk(...LOOK_ALIKES.map((id) => entry(id, { parentId: AGENT })), entry("spiffe://example.org/on-token", { parentId: tok.agentId }));
    expect(created.map((e) => [e.spiffeId, e.parentId])).toEqual([...LOOK_ALIKES.map((id) => [id, AGENT]), ["spiffe://example.org/on-token", tok.agentId]]);
  });

  it("refuses to move an entry into /spire by update (masked or whole), leaving it unchanged", async () => {
    await seedAgent(AGENT);
    const [e] = await createOk(entry("spiffe://example.org/web", { parentId: AGENT }));
    const before = await env.ds.lastEventId();
    const masked = await env.entry.batchUpdateEntry({ entries: [entry("spiffe://example.org/spire/server", { id: e?.id ?? "" })], mask: ["spiffe_id"] });
    const whole = await env.entry.batchUpdateEntry({ entries: [entry("spiffe://example.org/spire/agent/x", { id: e?.id ?? "", parentId: AGENT })], mask: [] });
    for (const [res, id] of [[masked, "spiffe://example.org/spire/server"], [whole, "spiffe://example.org/spire/agent/x"]] as const) {
      expect(res.results[0]?.status).toMatchObject({ code: status.INVALID_ARGUMENT, message: `entries[0].spiffe_id: ${id} is in the reserved namespace /spire, which belongs to the server and agents` });
    }
    expect(await env.ds.lastEventId()).toBe(before);
    expect(await env.entry.getEntry({ id: e?.id ?? "" })).toMatchObject({ spiffeId: "spiffe://example.org/web", revision: 0n });
    // Another field of the same entry still updates.
    const ok = await env.entry.batchUpdateEntry({ entries: [entry("", { id: e?.id ?? "", hint: "fine" })], mask: ["hint"] });
    expect(ok.results[0]?.status?.code).toBe(0);
  });

  it.each(RESERVED)("refuses to mint an X509-SVID or a JWT-SVID for %s, recording nothing", async (id) => {
    const message = `spiffe_id: ${id} is in the reserved namespace /spire, which belongs to the server and agents`;
    await expectFailure(env.svid.mintX509SVID({ csr: mintCsr(), spiffeId: id }), status.INVALID_ARGUMENT, message);
    await expectFailure(env.svid.mintJWTSVID({ spiffeId: id, audience: ["a"] }), status.INVALID_ARGUMENT, message);
    expect((await env.svid.listIssuances({})).issuances).toEqual([]);
  });

  it("mints for look-alike IDs outside /spire", async () => {
    for (const id of LOOK_ALIKES) {
      expect((await env.svid.mintX509SVID({ csr: mintCsr(), spiffeId: id })).svid?.spiffeId).toBe(id);
      expect((await env.svid.mintJWTSVID({ spiffeId: id, audience: ["a"] })).token).not.toBe("");
    }
  });

  it.each([
    "spiffe://example.org/host/build-7",
    "spiffe://example.org/spire/server",
    "spiffe://example.org/spire",
    "spiffe://example.org/spire/agentx/y",
    "spiffe://example.org/agent/spire/agent/y",
  ])("refuses a join token whose agent ID %s is not under /spire/agent/, storing no token", async (id) => {
    await expectFailure(env.agent.createJoinToken({ token: "operator-chosen-token-2", agentId: id }), status.INVALID_ARGUMENT, `agent_id: ${id} is not an agent ID: agent IDs are under /spire/agent/`);
    expect(await env.ds.hasPendingJoinTokenFor(id)).toBe(false);
    await expect(env.ds.consumeJoinToken("operator-chosen-token-2")).rejects.toMatchObject({ code: "ERR_NOT_FOUND" });
  });
});

describe("audit", () => {
  it("writes one record per call with method, outcome and the failure's status", async () => {
    const [e] = await createOk(entry("spiffe://example.org/web"));
    await env.entry.getEntry({ id: e?.id ?? "" });
    await grpcError(env.entry.getEntry({ id: "missing-id" }));
    await env.agent.countAgents({});
    await env.bundle.getBundle({});
    const records = auditRecords();
    expect(records.map((r) => r.method)).toEqual([
      "/sigil.admin.v1.EntryAdmin/BatchCreateEntry",
      "/sigil.admin.v1.EntryAdmin/GetEntry",
      "/sigil.admin.v1.EntryAdmin/GetEntry",
      "/sigil.admin.v1.AgentAdmin/CountAgents",
      "/sigil.admin.v1.BundleAdmin/GetBundle",
    ]);
    expect(records[0]).toMatchObject({ msg: "API accessed", status: "success", created: 1, entry_ids: [e?.id] });
    expect(records[1]).toMatchObject({ status: "success", entry_id: e?.id });
    expect(records[2]).toMatchObject({ status: "error", status_code: "NOT_FOUND", entry_id: "missing-id" });
    expect(String(records[2]?.status_message)).toContain("missing-id");
  });
});
