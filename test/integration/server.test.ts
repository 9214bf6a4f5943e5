/**
 * End to end against a real `sigil-server run` process: the admin CLI and API
 * over the Unix socket, and the agent API over TLS/mTLS as an agent uses it.
 * Every bad input gets the right gRPC status, a message naming the problem,
 * and leaves the datastore unchanged.
 */
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { systemClock } from "../../common/clock.js";
import { AgentAdmin, EntryAdmin, BundleAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { AgentAPI } from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { parseSpiffeBundle, serializeSpiffeBundle, toJwtBundle, toX509Bundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { buildCsr } from "../../spiffe/csr.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { validateJwtSvid } from "../../spiffe/jwt/validate.js";
import { StaticX509BundleSource } from "../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import { createSqliteDatastore } from "../../server/datastore/index.js";
import { makeLeaf, makeRoot } from "../fixtures/x509/pki.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { attestWithJoinToken, rootsPemFromBundleJson, tlsCredentials, type Attested } from "./support/test-agent.js";
import { launchServerProcess, runServerCli, startServerProcess, type ServerProcess } from "./support/server-process.js";

const td = parseTrustDomain("example.org");
let srv: ServerProcess;
let roots: string;
let admin: {
  entry: ReturnType<typeof createUnaryClient<(typeof EntryAdmin)["method"]>>;
  agent: ReturnType<typeof createUnaryClient<(typeof AgentAdmin)["method"]>>;
  bundle: ReturnType<typeof createUnaryClient<(typeof BundleAdmin)["method"]>>;
};

async function rejection(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    return e as ServiceError;
  }
  throw new Error("expected the call to fail");
}

async function counts(): Promise<{ entries: bigint; agents: bigint }> {
  return { entries: (await admin.entry.countEntries({})).count, agents: (await admin.agent.countAgents({})).count };
}

function bundleSource() {
  const doc = JSON.parse(srv.cli(["bundle", "show", "--output", "json"]).stdout) as { spiffe_bundle_json: string };
  const b = parseSpiffeBundle(doc.spiffe_bundle_json, td).bundle;
  return { x509: new StaticX509BundleSource([toX509Bundle(b)]), jwt: toJwtBundle(b) };
}

async function newToken(extra: string[] = []): Promise<{ token: string; agentId: string }> {
  const r = srv.cli(["token", "generate", "--output", "json", ...extra]);
  expect(r.status, r.stderr).toBe(0);
  const doc = JSON.parse(r.stdout) as { value: string; agent_id: string };
  return { token: doc.value, agentId: doc.agent_id };
}

beforeAll(async () => {
  srv = await startServerProcess("health_checks:\n  listener_enabled: true\n  bind_port: 0\n");
  const target = `unix:${srv.socketPath}`;
  const creds = credentials.createInsecure();
  admin = { entry: createUnaryClient(EntryAdmin, target, creds), agent: createUnaryClient(AgentAdmin, target, creds), bundle: createUnaryClient(BundleAdmin, target, creds) };
  const show = srv.cli(["bundle", "show", "--output", "json"]);
  expect(show.status, show.stderr).toBe(0);
  roots = rootsPemFromBundleJson(show.stdout);
}, 60_000);

afterAll(async () => {
  for (const c of Object.values(admin ?? {})) c.close();
  await srv?.stop();
});

describe("sigil-server CLI", () => {
  it("healthcheck exits 0 against a running server and 1 when none listens", () => {
    const ok = srv.cli(["healthcheck"]);
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/healthy/);
    const down = runServerCli(["healthcheck", "--socket-path", path.join(srv.dir, "nope.sock")]);
    expect(down.status).toBe(1);
  });

  it("validate accepts the running config and names the key path of a bad one (exit 1)", () => {
    expect(runServerCli(["validate", "--config", srv.configPath]).status).toBe(0);
    const bad = path.join(srv.dir, "bad.yaml");
    writeFileSync(bad, "server:\n  trust_domain: example.org\n  bind_prot: 1\nplugins: {}\n");
    const r = runServerCli(["validate", "--config", bad]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/server\.bind_prot: unknown key/);
  });

  it("an unreadable config names the file (exit 1); a usage error exits 2", () => {
    const r = runServerCli(["validate", "--config", path.join(srv.dir, "missing.yaml")]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/missing\.yaml/);
    expect(runServerCli(["entry", "create", "--bogus-flag"]).status).toBe(2);
    expect(runServerCli(["no-such-command"]).status).toBe(2);
  });

  it("token generate, entry create/show/count/update/delete with --output json", () => {
    const tok = JSON.parse(srv.cli(["token", "generate", "--output", "json"]).stdout) as { value: string; agent_id: string };
    expect(tok.agent_id).toBe(`spiffe://example.org/spire/agent/join_token/${tok.value}`);
    const created = srv.cli(["entry", "create", "--spiffe-id", "spiffe://example.org/cli/web", "--parent-id", tok.agent_id, "--selector", "unix:uid:1000", "--x509-svid-ttl", "10m", "--output", "json"]);
    expect(created.status, created.stderr).toBe(0);
    const entry = (JSON.parse(created.stdout) as { entries: { id: string; x509_svid_ttl: number }[] }).entries[0]!;
    expect(entry.x509_svid_ttl).toBe(600);
    const shown = JSON.parse(srv.cli(["entry", "show", "--spiffe-id", "spiffe://example.org/cli/web", "--output", "json"]).stdout) as { entries: { id: string }[] };
    expect(shown.entries.map((e) => e.id)).toEqual([entry.id]);
    const updated = srv.cli(["entry", "update", "--entry-id", entry.id, "--hint", "internal", "--output", "json"]);
    expect(updated.status, updated.stderr).toBe(0);
    expect((JSON.parse(updated.stdout) as { entries: { hint: string; revision: string }[] }).entries[0]!.hint).toBe("internal");
    expect(srv.cli(["entry", "delete", "--entry-id", entry.id]).status).toBe(0);
    const again = srv.cli(["entry", "delete", "--entry-id", entry.id]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/not found/i);
  });

  it("serves /live, /ready and Prometheus /metrics with RPC, CA-expiry and signing metrics", async () => {
    const started = await srv.waitForLog((l) => l.msg === "server started");
    const base = String(started.health);
    expect((await fetch(`${base}/live`)).status).toBe(200);
    const ready = await fetch(`${base}/ready`);
    expect(ready.status).toBe(200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/sigil_ca_x509_expiry_timestamp_seconds\{slot="A"\} \d+/);
    expect(metrics).toMatch(/sigil_rpc_requests_total\{service="sigil\.admin\.v1\.\w+",method="\w+",code="OK"\} \d+/);
    expect(metrics).toMatch(/sigil_x509_svids_signed_total \d+/);
    expect(metrics).not.toMatch(/spiffe:\/\//); // no SPIFFE IDs as labels
  });

  it("the admin socket is 0600 in a 0700 directory", () => {
    expect(statSync(srv.socketPath).mode & 0o777).toBe(0o600);
    expect(statSync(path.dirname(srv.socketPath)).mode & 0o777).toBe(0o700);
  });

  it("entry count, agent list/show, bundle set/list/delete, x509 mint --write and jwt mint through the CLI", () => {
    const count = srv.cli(["entry", "count", "--output", "json"]);
    expect(count.status, count.stderr).toBe(0);
    expect(typeof (JSON.parse(count.stdout) as { count: number }).count).toBe("number");
    expect(srv.cli(["agent", "list", "--output", "json"]).status).toBe(0);
    const missing = srv.cli(["agent", "show", "--spiffe-id", "spiffe://example.org/spire/agent/none"]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/not found/i);

    // A federated bundle: another trust domain's CA, as SPIFFE bundle JSON.
    const partnerCa = makeRoot("partner.org");
    const file = path.join(srv.dir, "partner.json");
    writeFileSync(file, serializeSpiffeBundle({ trustDomain: partnerCa.td, x509Authorities: [partnerCa.der], jwtAuthorities: new Map() }));
    const set = srv.cli(["bundle", "set", "--id", "partner.org", "--path", file]);
    expect(set.status, set.stderr).toBe(0);
    const list = JSON.parse(srv.cli(["bundle", "list", "--output", "json"]).stdout) as { bundles: { trust_domain: string }[] };
    expect(list.bundles.map((b) => b.trust_domain)).toEqual(["partner.org"]);
    const garbage = path.join(srv.dir, "garbage.json");
    writeFileSync(garbage, "{not json");
    const bad = srv.cli(["bundle", "set", "--id", "partner2.org", "--path", garbage]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/bundle/i);
    // An entry federating with it keeps the bundle (FAILED_PRECONDITION over the API): exit 1, nothing changes.
    const fed = srv.cli(["entry", "create", "--spiffe-id", "spiffe://example.org/cli/fed", "--parent-id", "spiffe://example.org/spire/server", "--selector", "unix:uid:7", "--federates-with", "partner.org", "--output", "json"]);
    expect(fed.status, fed.stderr).toBe(0);
    const fedId = (JSON.parse(fed.stdout) as { entries: { id: string }[] }).entries[0]!.id;
    const refused = srv.cli(["bundle", "delete", "--id", "partner.org"]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain("1 entry federates with partner.org");
    expect((JSON.parse(srv.cli(["bundle", "list", "--output", "json"]).stdout) as { bundles: unknown[] }).bundles.length).toBe(1);
    expect(srv.cli(["entry", "delete", "--entry-id", fedId]).status).toBe(0);
    expect(srv.cli(["bundle", "delete", "--id", "partner.org"]).status).toBe(0);

    const out = path.join(srv.dir, "minted");
    const x509 = srv.cli(["x509", "mint", "--spiffe-id", "spiffe://example.org/minted", "--dns", "minted.example.org", "--write", out, "--output", "json"]);
    expect(x509.status, x509.stderr).toBe(0);
    const pem = readFileSync(path.join(out, "svid.pem"), "utf8");
    const leaf = new X509Certificate(pem);
    expect(leaf.subjectAltName).toMatch(/URI:spiffe:\/\/example\.org\/minted/);
    expect(statSync(path.join(out, "svid.key")).mode & 0o777).toBe(0o600);
    // The minted certificate proves itself against the issuance log and the bundle.
    const proof = srv.cli(["issuance", "show", "--cert", path.join(out, "svid.pem"), "--output", "json"]);
    expect(proof.status, proof.stderr).toBe(0);
    const proofDoc = JSON.parse(proof.stdout) as { matches: boolean; checks: { check: string; ok: boolean }[]; issuance: { requested_by: string } };
    expect(proofDoc.matches).toBe(true);
    expect(proofDoc.checks.map((k) => [k.check, k.ok])).toEqual([["spiffe_id", true], ["not_after", true], ["signature", true]]);
    expect(proofDoc.issuance.requested_by).toBe("admin:local");
    // A forgery carrying the same serial and ID, from a CA this server never had: refused, naming what failed.
    const forgedCa = makeRoot("example.org");
    const forged = makeLeaf(forgedCa, "spiffe://example.org/minted", { serial: Uint8Array.from(Buffer.from(leaf.serialNumber.padStart(32, "0"), "hex")) });
    const forgedPath = path.join(srv.dir, "forged.pem");
    writeFileSync(forgedPath, encodePemCertificates(forged.chain));
    const refusedProof = srv.cli(["issuance", "show", "--cert", forgedPath]);
    expect(refusedProof.status).toBe(1);
    expect(refusedProof.stdout).toMatch(/Check signature\s+: FAILED/);
    expect(refusedProof.stderr).toContain("does not match its record (not_after, signature)");
    expect(srv.cli(["issuance", "show"]).status).toBe(2);
    const jwt = srv.cli(["jwt", "mint", "--spiffe-id", "spiffe://example.org/minted", "--audience", "db", "--output", "json"]);
    expect(jwt.status, jwt.stderr).toBe(0);
    const token = (JSON.parse(jwt.stdout) as { token: string }).token;
    expect(validateJwtSvid(token, { getJwtBundleForTrustDomain: () => bundleSource().jwt }, { audience: "db" }).spiffeId.toString()).toBe("spiffe://example.org/minted");
  }, 120_000); // 16 CLI processes, each a full Node start

  it("every admin call leaves an audit record naming the method and outcome", async () => {
    const rec = await srv.waitForLog((l) => l.type === "audit" && String(l.method ?? "").endsWith("/BatchCreateEntry"));
    expect(rec.status).toBe("success");
    expect((await rejection(admin.entry.getEntry({ id: "no-such-entry" }))).code).toBe(status.NOT_FOUND);
    const failed = await srv.waitForLog((l) => l.type === "audit" && String(l.method ?? "").endsWith("/GetEntry") && l.status === "error");
    expect(String(failed.status_message)).toMatch(/no-such-entry/);
  });
});

describe("admin API bad input", () => {
  const wire = (over: Partial<Record<string, unknown>>) =>
    create(EntrySchema, { spiffeId: "spiffe://example.org/ok", parentId: "spiffe://example.org/spire/server", selectors: [{ type: "unix", value: "uid:1" }], ...over } as never);

  it.each([
    ["malformed SPIFFE ID", { spiffeId: "spiffe://example.org/a%20b" }, status.INVALID_ARGUMENT, /entries\[0\]\.spiffe_id: .*'%'/],
    ["SPIFFE ID of another trust domain", { spiffeId: "spiffe://other.org/x" }, status.INVALID_ARGUMENT, /not in trust domain example\.org/],
    ["malformed selector", { selectors: [{ type: "unix", value: "" }] }, status.INVALID_ARGUMENT, /entries\[0\]\.selectors\[0\]/],
    ["no selectors", { selectors: [] }, status.INVALID_ARGUMENT, /at least one selector/],
    ["unknown parent", { parentId: "spiffe://example.org/spire/agent/nobody" }, status.NOT_FOUND, /parent_id: .* is unknown/],
    ["hint over 1024 bytes", { hint: "h".repeat(1025) }, status.INVALID_ARGUMENT, /hint: is longer than 1024 bytes/],
  ])("%s: per-item status, message names the field, store unchanged", async (_name, over, code, msg) => {
    const before = await counts();
    const res = await admin.entry.batchCreateEntry({ entries: [wire(over)] });
    expect(res.results[0]?.status?.code).toBe(code);
    expect(res.results[0]?.status?.message).toMatch(msg);
    expect(await counts()).toEqual(before);
  });

  it("a duplicate entry is ALREADY_EXISTS and an oversized batch INVALID_ARGUMENT, store unchanged", async () => {
    const first = await admin.entry.batchCreateEntry({ entries: [wire({ spiffeId: "spiffe://example.org/dup" })] });
    expect(first.results[0]?.status?.code).toBe(status.OK);
    const before = await counts();
    const dup = await admin.entry.batchCreateEntry({ entries: [wire({ spiffeId: "spiffe://example.org/dup" })] });
    expect(dup.results[0]?.status?.code).toBe(status.ALREADY_EXISTS);
    const big = await rejection(admin.entry.batchCreateEntry({ entries: Array.from({ length: 1001 }, (_, i) => wire({ spiffeId: `spiffe://example.org/b${i}` })) }));
    expect(big.code).toBe(status.INVALID_ARGUMENT);
    expect(await counts()).toEqual(before);
  });

  it("an oversized request is refused by the transport", async () => {
    const err = await rejection(admin.entry.batchCreateEntry({ entries: [wire({ hint: "x".repeat(5 * 1024 * 1024) })] }));
    expect(err.code).toBe(status.RESOURCE_EXHAUSTED);
  });
});

describe("agent API over mTLS", () => {
  let agent: Attested;
  let entryId = "";
  let otherEntryId = "";

  beforeAll(async () => {
    const { token, agentId } = await newToken();
    const res = await admin.entry.batchCreateEntry({
      entries: [
        create(EntrySchema, { spiffeId: "spiffe://example.org/workload/web", parentId: agentId, selectors: [{ type: "unix", value: "uid:1000" }], dnsNames: ["web.example.org"] }),
        create(EntrySchema, { spiffeId: "spiffe://example.org/workload/other", parentId: "spiffe://example.org/spire/agent/someone-else", selectors: [{ type: "unix", value: "uid:1" }] }),
      ],
    });
    expect(res.results[0]?.status?.code).toBe(status.OK);
    entryId = res.results[0]?.entry?.id ?? "";
    // The second entry's parent is unknown and is refused; make an authorized-for-nobody entry under the server instead.
    const other = await admin.entry.batchCreateEntry({ entries: [create(EntrySchema, { spiffeId: "spiffe://example.org/workload/other", parentId: "spiffe://example.org/spire/server", selectors: [{ type: "node", value: "none" }] })] });
    otherEntryId = other.results[0]?.entry?.id ?? "";
    agent = await attestWithJoinToken(srv.agentApiAddress, roots, token);
    expect(agent.spiffeId).toBe(agentId);
  }, 60_000);

  afterAll(() => agent?.api.close());

  it("the agent SVID verifies against the bundle and carries the agent ID", () => {
    expect(verifyX509Svid(agent.chain, bundleSource().x509).id.toString()).toBe(agent.spiffeId);
  });

  it("a reused join token is PERMISSION_DENIED and adds no agent", async () => {
    const { token } = await newToken();
    await attestWithJoinToken(srv.agentApiAddress, roots, token);
    const before = await counts();
    const err = await rejection(attestWithJoinToken(srv.agentApiAddress, roots, token));
    expect(err.code).toBe(status.PERMISSION_DENIED);
    expect(err.details).toMatch(/not found or already used/);
    expect(await counts()).toEqual(before);
  });

  it("an expired join token is PERMISSION_DENIED naming the expiry", async () => {
    const ds = await createSqliteDatastore({ path: path.join(srv.dir, "datastore.sqlite3"), clock: systemClock });
    await ds.createJoinToken({ token: "expired-token-1", expiresAt: new Date(Date.now() - 60_000) });
    await ds.close();
    const err = await rejection(attestWithJoinToken(srv.agentApiAddress, roots, "expired-token-1"));
    expect(err.code).toBe(status.PERMISSION_DENIED);
    expect(err.details).toMatch(/expired/);
  });

  it("a garbage CSR at attestation is INVALID_ARGUMENT and consumes nothing", async () => {
    const { token } = await newToken();
    const err = await rejection(attestWithJoinToken(srv.agentApiAddress, roots, token, new Uint8Array([1, 2, 3])));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/csr: malformed DER/);
    // The token is still usable.
    const ok = await attestWithJoinToken(srv.agentApiAddress, roots, token);
    ok.api.close();
  });

  it("sync returns the authorized entries and bundles, then not_modified for the same revision", async () => {
    const first = await agent.api.syncAuthorized({});
    expect(first.entries.map((e) => e.spiffeId)).toEqual(["spiffe://example.org/workload/web"]);
    expect(first.bundles[0]?.trustDomain).toBe("example.org");
    const second = await agent.api.syncAuthorized({ knownRevision: first.revision });
    expect(second.notModified).toBe(true);
    expect(second.entries).toEqual([]);
  });

  it("signs X509-SVIDs from a CSR and from a bare public key, with ID and DNS names from the entry", async () => {
    const k1 = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const k2 = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    // Two calls: a batch may name an entry only once.
    const byCsr = await agent.api.batchNewX509SVID({ params: [{ entryId, key: { case: "csr", value: buildCsr(k1.privateKey) } }] });
    const byKey = await agent.api.batchNewX509SVID({ params: [{ entryId, key: { case: "publicKey", value: new Uint8Array(k2.publicKey.export({ format: "der", type: "spki" })) } }] });
    const res = { results: [...byCsr.results, ...byKey.results] };
    for (const r of res.results) {
      expect(r.status?.code).toBe(status.OK);
      const v = verifyX509Svid(r.svid?.certChain ?? [], bundleSource().x509);
      expect(v.id.toString()).toBe("spiffe://example.org/workload/web");
      expect(v.verifiedChain[0]?.subjectAltName).toMatch(/DNS:web\.example\.org/);
    }
    // Every SVID handed out is in the issuance log: who asked, for which entry, signed by which key.
    const ds = await createSqliteDatastore({ path: path.join(srv.dir, "datastore.sqlite3"), clock: systemClock });
    const log = await ds.listIssuances({ entryId });
    await ds.close();
    const serials = res.results.map((r) => new X509Certificate(Buffer.from(r.svid?.certChain[0] ?? [])).serialNumber.toLowerCase().replace(/^0+/, ""));
    for (const serial of serials) {
      const rec = log.items.find((i) => i.serial === serial);
      expect(rec?.agentId).toBe(agent.spiffeId);
      expect(rec?.selectors).toEqual(["unix:uid:1000"]);
      expect(rec?.kind).toBe("x509-svid");
    }
    // The operator asks the same through the CLI: `issuance show` explains one credential, `issuance list` finds them.
    const shown = srv.cli(["issuance", "show", "--serial", serials[0] as string, "--output", "json"]);
    expect(shown.status, shown.stderr).toBe(0);
    expect(JSON.parse(shown.stdout)).toMatchObject({
      serial: serials[0],
      kind: "x509-svid",
      spiffe_id: "spiffe://example.org/workload/web",
      entry_id: entryId,
      agent_id: agent.spiffeId,
      selectors: ["unix:uid:1000"],
      requested_by: `agent:${agent.spiffeId}`,
    });
    const pretty = srv.cli(["issuance", "show", "--serial", (serials[0] as string).toUpperCase()]);
    expect(pretty.stdout).toMatch(/Entry ID\s+: /);
    expect(pretty.stdout).toContain("unix:uid:1000");
    const listed = srv.cli(["issuance", "list", "--entry-id", entryId, "--live", "--output", "json"]);
    expect(listed.status, listed.stderr).toBe(0);
    const listedSerials = (JSON.parse(listed.stdout) as { issuances: { serial: string }[] }).issuances.map((i) => i.serial);
    for (const serial of serials) expect(listedSerials).toContain(serial);
    const one = JSON.parse(srv.cli(["issuance", "list", "--agent-id", agent.spiffeId, "--limit", "1", "--output", "json"]).stdout) as { issuances: { agent_id: string }[] };
    expect(one.issuances.map((i) => i.agent_id)).toEqual([agent.spiffeId]);
    const missing = srv.cli(["issuance", "show", "--serial", "abc123"]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain("no credential with serial abc123");
    expect(srv.cli(["issuance", "show", "--serial", "not-hex"]).stderr).toContain("by_serial:");
    expect(srv.cli(["issuance", "list", "--limit", "0"]).status).toBe(2);
  });

  it.each([
    ["an entry the agent is not authorized for", () => ({ entryId: otherEntryId, key: { case: "csr" as const, value: buildCsr(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey) } }), status.PERMISSION_DENIED, /is not authorized for agent/],
    [
      "a CSR with a bad signature",
      () => {
        const csr = buildCsr(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey);
        csr[csr.length - 4] = (csr[csr.length - 4] as number) ^ 0x55;
        return { entryId, key: { case: "csr" as const, value: csr } };
      },
      status.INVALID_ARGUMENT,
      /csr: signature/,
    ],
    ["a disallowed key type", () => ({ entryId, key: { case: "csr" as const, value: buildCsr(generateKeyPairSync("rsa", { modulusLength: 3072 }).privateKey) } }), status.INVALID_ARGUMENT, /key type rsa-3072 is not allowed/],
    ["garbage bytes", () => ({ entryId, key: { case: "csr" as const, value: new Uint8Array(Buffer.from("not a csr")) } }), status.INVALID_ARGUMENT, /csr: malformed DER/],
  ])("%s is refused per item with a message naming it", async (_n, param, code, msg) => {
    const before = await counts();
    const res = await agent.api.batchNewX509SVID({ params: [param()] });
    expect(res.results[0]?.status?.code).toBe(code);
    expect(res.results[0]?.status?.message).toMatch(msg);
    expect(res.results[0]?.svid).toBeUndefined();
    expect(await counts()).toEqual(before);
  });

  it("exports how long issuance records take to commit (sigil_issuance_log_write_seconds)", async () => {
    const started = await srv.waitForLog((l) => l.msg === "server started");
    const metrics = await (await fetch(`${String(started.health)}/metrics`)).text();
    // At least the attestation and the batches signed above were recorded, each timed once.
    expect(Number(/^sigil_issuance_log_write_seconds_count (\d+)$/m.exec(metrics)?.[1] ?? 0)).toBeGreaterThanOrEqual(2);
    expect(metrics).toMatch(/^sigil_issuance_log_write_seconds_bucket\{le="\+Inf"\} \d+$/m);
  });

  it("an oversized batch is INVALID_ARGUMENT", async () => {
    const err = await rejection(agent.api.batchNewX509SVID({ params: Array.from({ length: 1001 }, () => ({ entryId, key: { case: "publicKey" as const, value: new Uint8Array([0]) } })) }));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/more than the maximum 1000/);
  });

  it("mints a JWT-SVID that validates with the bundle, and refuses an empty audience", async () => {
    const res = await agent.api.newJWTSVID({ entryId, audience: ["db"] });
    const svid = validateJwtSvid(res.token, { getJwtBundleForTrustDomain: () => bundleSource().jwt }, { audience: "db" });
    expect(svid.spiffeId.toString()).toBe("spiffe://example.org/workload/web");
    expect((await rejection(agent.api.newJWTSVID({ entryId, audience: [] }))).code).toBe(status.INVALID_ARGUMENT);
  });

  it("a call without a client certificate is PERMISSION_DENIED", async () => {
    const anon = createUnaryClient(AgentAPI, srv.agentApiAddress, tlsCredentials(roots));
    const err = await rejection(anon.syncAuthorized({}));
    anon.close();
    expect(err.code).toBe(status.PERMISSION_DENIED);
    expect(err.details).toMatch(/no client certificate/);
  });

  it("a banned agent is refused, and can never attest again with the same identity", async () => {
    const { token, agentId } = await newToken();
    const banned = await attestWithJoinToken(srv.agentApiAddress, roots, token);
    expect(srv.cli(["agent", "ban", "--spiffe-id", agentId]).status).toBe(0);
    const err = await rejection(banned.api.syncAuthorized({}));
    expect(err.code).toBe(status.PERMISSION_DENIED);
    expect(err.details).toMatch(/banned/);
    banned.api.close();
    const again = await newToken(["--spiffe-id", agentId]);
    const reattest = await rejection(attestWithJoinToken(srv.agentApiAddress, roots, again.token));
    expect(reattest.code).toBe(status.PERMISSION_DENIED);
    expect(reattest.details).toMatch(/banned/);
  });

  it("an evicted agent must attest again", async () => {
    const { token, agentId } = await newToken();
    const evicted = await attestWithJoinToken(srv.agentApiAddress, roots, token);
    expect(srv.cli(["agent", "evict", "--spiffe-id", agentId]).status).toBe(0);
    const err = await rejection(evicted.api.syncAuthorized({}));
    expect(err.code).toBe(status.PERMISSION_DENIED);
    expect(err.details).toMatch(/not an attested agent/);
    evicted.api.close();
  });
});

describe("restart", () => {
  it("a server restarted on the same data keeps its CA and serves the same bundle", async () => {
    const authorities = (json: string) =>
      parseSpiffeBundle((JSON.parse(json) as { spiffe_bundle_json: string }).spiffe_bundle_json, td).bundle.x509Authorities.map((d) => Buffer.from(d).toString("hex"));
    const before = authorities(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    const pending = await newToken();
    for (const c of Object.values(admin)) c.close();
    await srv.stop({ keepDir: true });
    srv = await launchServerProcess(srv.dir, srv.configPath, srv.socketPath, { ownsDir: true });
    expect(authorities(srv.cli(["bundle", "show", "--output", "json"]).stdout)).toEqual(before);
    // A join token made before the restart still counts as a known parent.
    const created = srv.cli(["entry", "create", "--parent-id", pending.agentId, "--spiffe-id", "spiffe://example.org/after-restart", "--selector", "unix:uid:7"]);
    expect(created.status, created.stderr).toBe(0);
  });
});
