/**
 * Federation relationships end to end against a real `sigil-server run`
 * process: the admin CLI (`federation create|list|show|update|delete|refresh`,
 * `--output json`) and the FederationAdmin API, with local bundle endpoints
 * (https_web with a test CA trusted through NODE_EXTRA_CA_CERTS, https_spiffe
 * with an SVID of the foreign trust domain) and a config relationship.
 */
import { execFile } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { FederationAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { makeTestCa, type TestCa } from "../support/federation-bundles.js";
import { createServingPki } from "../support/serving-cert.js";
import { requireTool } from "../support/tools.js";
import { attestWithJoinToken, rootsPemFromBundleJson } from "./support/test-agent.js";
import { SERVER_CLI, startServerProcess, type CliResult, type ServerProcess } from "./support/server-process.js";

const haveOpenssl = requireTool("openssl", ["version"], "the https_web endpoint's certificate");

/** A local bundle endpoint: serves `body` on `/bundle`, redirects `/moved` there, counts requests per path. */
interface Endpoint {
  server: Server;
  url: (p: string) => string;
  body: string;
  hits: Map<string, number>;
}

async function startEndpoint(tls: { cert: string; key: string }, body: string): Promise<Endpoint> {
  const ep: Endpoint = { server: undefined as never, url: () => "", body, hits: new Map() };
  ep.server = createServer(tls, (req, res) => {
    const p = req.url ?? "/";
    ep.hits.set(p, (ep.hits.get(p) ?? 0) + 1);
    if (p === "/moved") {
      res.writeHead(302, { location: "/bundle" }).end();
      return;
    }
    res.writeHead(200, { "content-type": "application/json" }).end(ep.body);
  });
  ep.server.listen(0, "127.0.0.1");
  await once(ep.server, "listening");
  const port = (ep.server.address() as AddressInfo).port;
  ep.url = (p) => `https://127.0.0.1:${port}${p}`;
  return ep;
}

async function rejection(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    return e as ServiceError;
  }
  throw new Error("expected the call to fail");
}

let dir: string;
let srv: ServerProcess;
let web: Endpoint;
let spiffe: Endpoint;
let configEndpoint: Endpoint;
let caB: TestCa;
let caD: TestCa;
let admin: ReturnType<typeof createUnaryClient<(typeof FederationAdmin)["method"]>>;
const savedExtraCa = process.env.NODE_EXTRA_CA_CERTS;

beforeAll(async () => {
  if (!haveOpenssl) return;
  dir = mkdtempSync(path.join(tmpdir(), "sigil-fed-admin-"));
  const pki = createServingPki();
  caB = makeTestCa("td-b.test");
  caD = makeTestCa("td-d.test");
  // Hints of an hour: the server fetches on create, then only when the test asks.
  web = await startEndpoint({ cert: pki.certPem, key: pki.keyPem }, caB.bundleJson(5n, 3600));
  const svid = caD.issueSvid("spiffe://td-d.test/spire/server");
  spiffe = await startEndpoint({ cert: svid.certPem, key: svid.keyPem }, caD.bundleJson(2n, 3600));
  configEndpoint = await startEndpoint({ cert: pki.certPem, key: pki.keyPem }, makeTestCa("td-c.test").bundleJson(1n, 3600));
  const caFile = path.join(dir, "extra-ca.pem");
  writeFileSync(caFile, pki.caPem);
  // The server process trusts the test CA for https_web, as an operator's would through the system store.
  process.env.NODE_EXTRA_CA_CERTS = caFile;
  srv = await startServerProcess(`federation:
  min_refresh_interval: 1s
  federates_with:
    td-c.test:
      bundle_endpoint_url: ${configEndpoint.url("/bundle")}
      bundle_endpoint_profile: { https_web: {} }
`);
  admin = createUnaryClient(FederationAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
}, 90_000);

afterAll(async () => {
  if (savedExtraCa === undefined) delete process.env.NODE_EXTRA_CA_CERTS;
  else process.env.NODE_EXTRA_CA_CERTS = savedExtraCa;
  admin?.close();
  await srv?.stop();
  for (const ep of [web, spiffe, configEndpoint]) if (ep) await new Promise((r) => ep.server.close(r));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * `sigil-server <args>` without blocking this process: the bundle endpoints the
 * server fetches from live in it (the synchronous `srv.cli` would deadlock them).
 */
function cli(args: readonly string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [...SERVER_CLI, ...args, "--socket-path", srv.socketPath], { encoding: "utf8", timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ pid: child.pid ?? 0, status: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

async function json(args: string[]): Promise<Record<string, unknown>> {
  const r = await cli([...args, "--output", "json"]);
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

describe.skipIf(!haveOpenssl)("federation relationships through the admin CLI and API", () => {
  it("FED-9 FED-11 FED-20: bad input is refused with the right status and the field named", async () => {
    const base = { trustDomain: "td-x.test", bundleEndpointUrl: "https://127.0.0.1:1/", bundleEndpointProfile: "https_web" };
    const ownRootsPem = rootsPemFromBundleJson((await cli(["bundle", "show", "--output", "json"])).stdout);
    const cases: Array<[Record<string, string>, number, RegExp]> = [
      [{ bundleEndpointUrl: "http://127.0.0.1:1/" }, status.INVALID_ARGUMENT, /^relationship\.bundle_endpoint_url: .*https/],
      [{ bundleEndpointUrl: "https://u:p@127.0.0.1:1/" }, status.INVALID_ARGUMENT, /^relationship\.bundle_endpoint_url: .*userinfo/],
      [{ bundleEndpointUrl: "" }, status.INVALID_ARGUMENT, /^relationship\.bundle_endpoint_url: is required/],
      [{ trustDomain: "" }, status.INVALID_ARGUMENT, /^relationship\.trust_domain: is required/],
      [{ bundleEndpointProfile: "" }, status.INVALID_ARGUMENT, /^relationship\.bundle_endpoint_profile: is required/],
      [{ trustDomain: "example.org" }, status.INVALID_ARGUMENT, /^relationship\.trust_domain: example\.org is this server's own trust domain/],
      [{ bundleEndpointProfile: "https_spiffe" }, status.INVALID_ARGUMENT, /^relationship\.endpoint_spiffe_id: is required/],
      [{ bundleEndpointProfile: "https_spiffe", endpointSpiffeId: "spiffe://td-x.test/s" }, status.FAILED_PRECONDITION, /^relationship\.trust_domain_bundle: is required/],
      [{ bundleEndpointProfile: "https_spiffe", endpointSpiffeId: "spiffe://td-y.test/s" }, status.FAILED_PRECONDITION, /^relationship\.endpoint_spiffe_id: .*td-y\.test, whose bundle this server does not hold/],
      [{ trustDomainBundle: "{}" }, status.INVALID_ARGUMENT, /^relationship\.trust_domain_bundle: /],
      [{ bundleEndpointUrl: "https://127.0.0.1:1/\r\nX: y" }, status.INVALID_ARGUMENT, /^relationship\.bundle_endpoint_url: .*whitespace or control characters/],
      // BUNDLE-1: our own root pasted as another trust domain's initial bundle.
      [{ trustDomainBundle: ownRootsPem, trustDomainBundleFormat: "pem" }, status.INVALID_ARGUMENT, /^relationship\.trust_domain_bundle: x509 authority 0 names spiffe:\/\/example\.org/],
    ];
    for (const [change, code, message] of cases) {
      const err = await rejection(admin.createFederationRelationship({ relationship: { ...base, ...change } }));
      expect({ code: err.code, details: err.details }).toEqual({ code, details: expect.stringMatching(message) });
    }
    expect((await rejection(admin.getFederationRelationship({ trustDomain: "td-x.test" }))).code).toBe(status.NOT_FOUND);
    expect((await rejection(admin.deleteFederationRelationship({ trustDomain: "td-c.test", mode: "everything" }))).code).toBe(status.INVALID_ARGUMENT);
    expect((await admin.listFederationRelationships({})).relationships.map((r) => r.trustDomain)).toEqual(["td-c.test"]);
    const bad = await cli(["federation", "create", "--trust-domain", "td-x.test", "--bundle-endpoint-url", "http://127.0.0.1:1/", "--bundle-endpoint-profile", "https_web"]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/relationship\.bundle_endpoint_url/);
  });

  it("FED-3 FED-7 FED-19 FED-29: create (https_web) fetches at once; refresh starts from the configured URL each time; list and show report the status", async () => {
    const created = await json(["federation", "create", "--trust-domain", "td-b.test", "--bundle-endpoint-url", web.url("/moved"), "--bundle-endpoint-profile", "https_web"]);
    expect(created).toMatchObject({ trust_domain: "td-b.test", bundle_endpoint_profile: "https_web", source: "api" });
    const refreshed = await json(["federation", "refresh", "td-b.test"]);
    expect(refreshed).toMatchObject({ trust_domain: "td-b.test", status: { sequence: "5", last_error: "" } });
    expect(web.hits.get("/moved")).toBeGreaterThanOrEqual(1);
    const movedBefore = web.hits.get("/moved") ?? 0;
    await json(["federation", "refresh", "--trust-domain", "td-b.test"]);
    // FED-19: the redirect target is never remembered.
    expect(web.hits.get("/moved")).toBe(movedBefore + 1);
    const shown = await json(["federation", "show", "td-b.test"]);
    expect(shown).toMatchObject({ bundle_endpoint_url: web.url("/moved"), status: { sequence: "5", last_result: expect.stringMatching(/^(updated|unchanged)$/) } });
    expect(Number((shown.status as { last_success: string }).last_success)).toBeGreaterThan(0);
    const list = (await json(["federation", "list"])) as { relationships: Array<{ trust_domain: string; source: string }> };
    expect(list.relationships.map((r) => [r.trust_domain, r.source])).toEqual([
      ["td-b.test", "api"],
      ["td-c.test", "config"],
    ]);
    // The config relationship was fetched at start, too.
    await srv.waitForLog((r) => r.msg === "federation: fetched bundle" && r.trust_domain === "td-c.test", 30_000);
    const log = await srv.waitForLog((r) => r.msg === "federation: fetched bundle" && r.trust_domain === "td-b.test");
    expect(log).toMatchObject({ url: web.url("/moved"), sequence: "5" });
    const pretty = await cli(["federation", "show", "td-b.test"]);
    expect(pretty.stdout).toMatch(/Bundle sequence\s+: 5/);
  });

  it("FED-4 FED-25: a lower sequence is refused by refresh, the error shown, and the last good bundle kept", async () => {
    web.body = caB.bundleJson(4n, 3600);
    const r = await cli(["federation", "refresh", "td-b.test"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/sequence 4 is lower than the held bundle's 5/);
    const shown = (await json(["federation", "show", "td-b.test"])) as { status: { last_error: string; sequence: string; last_result: string } };
    expect(shown.status).toMatchObject({ last_result: "error", sequence: "5", last_error: expect.stringMatching(/lower/) });
    const bundles = (await json(["bundle", "list"])) as { bundles: Array<{ trust_domain: string; sequence: string }> };
    expect(bundles.bundles.find((b) => b.trust_domain === "td-b.test")?.sequence).toBe("5");
    web.body = caB.bundleJson(6n, 3600);
    expect(await json(["federation", "refresh", "td-b.test"])).toMatchObject({ status: { sequence: "6", last_result: "updated", last_error: "" } });
  });

  it("FED-20 FED-23: https_spiffe with an initial bundle, authenticated as the configured endpoint ID", async () => {
    const file = path.join(dir, "td-d.json");
    writeFileSync(file, caD.bundleJson(1n));
    await json([
      "federation", "create", "--trust-domain", "td-d.test", "--bundle-endpoint-url", spiffe.url("/bundle"), "--bundle-endpoint-profile", "https_spiffe",
      "--endpoint-spiffe-id", "spiffe://td-d.test/spire/server", "--trust-domain-bundle-path", file,
    ]);
    expect(await json(["federation", "refresh", "td-d.test"])).toMatchObject({ status: { sequence: "2", last_result: expect.stringMatching(/^(updated|unchanged)$/) } });
    // FED-22 through the client: another endpoint ID fails, and the held bundle stays.
    await json(["federation", "update", "--trust-domain", "td-d.test", "--endpoint-spiffe-id", "spiffe://td-d.test/other"]);
    const r = await cli(["federation", "refresh", "td-d.test"]);
    expect(r.status).toBe(1);
    expect(await json(["federation", "show", "td-d.test"])).toMatchObject({ endpoint_spiffe_id: "spiffe://td-d.test/other", status: { sequence: "2", last_result: "error" } });
  });

  it("config relationships cannot be changed or deleted through the API (FAILED_PRECONDITION naming the config)", async () => {
    const upd = await rejection(admin.updateFederationRelationship({ relationship: { trustDomain: "td-c.test", bundleEndpointUrl: "https://127.0.0.1:1/", bundleEndpointProfile: "https_web" } }));
    expect(upd.code).toBe(status.FAILED_PRECONDITION);
    expect(upd.details).toMatch(/federation\.federates_with\["td-c\.test"\]/);
    const del = await cli(["federation", "delete", "td-c.test"]);
    expect(del.status).toBe(1);
    expect(del.stderr).toMatch(/defined in the server config/);
  });

  it("a federated bundle change under the same sequence reaches agents (SyncAuthorized revision); FED-26 delete: restrict refuses while entries federate, dissociate ends it and drops the bundle", async () => {
    const roots = rootsPemFromBundleJson((await cli(["bundle", "show", "--output", "json"])).stdout);
    const token = ((await json(["token", "generate"])) as { value: string }).value;
    const agent = await attestWithJoinToken(srv.agentApiAddress, roots, token);
    try {
      const created = await cli(["entry", "create", "--spiffe-id", "spiffe://example.org/w", "--parent-id", agent.spiffeId, "--selector", "unix:uid:1", "--federates-with", "td-b.test"]);
      expect(created.status, created.stderr).toBe(0);
      let first = await agent.api.syncAuthorized({});
      // Slower than the per-agent sync limit (5/s, burst 10).
      for (let i = 0; i < 40 && first.entries.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 250));
        first = await agent.api.syncAuthorized({});
      }
      expect(first.bundles.map((b) => b.trustDomain)).toContain("td-b.test");
      // FED-5: set by hand with the held sequence but another root; agents must see it.
      const other = makeTestCa("td-b.test");
      const file = path.join(dir, "td-b-local.json");
      writeFileSync(file, other.bundleJson(6n));
      expect((await cli(["bundle", "set", "--id", "td-b.test", "--path", file])).status).toBe(0);
      const second = await agent.api.syncAuthorized({ knownRevision: first.revision });
      expect(second.notModified).toBe(false);
      expect(second.bundles.find((b) => b.trustDomain === "td-b.test")?.spiffeBundleJson).toBe(other.bundleJson(6n));

      const restrict = await cli(["federation", "delete", "td-b.test"]);
      expect(restrict.status).toBe(1);
      expect(restrict.stderr).toMatch(/still federated with by 1 entries/);
      expect(await json(["federation", "delete", "td-b.test", "--mode", "dissociate"])).toEqual({ trust_domain: "td-b.test", result: "deleted" });
      const bundles = (await json(["bundle", "list"])) as { bundles: Array<{ trust_domain: string }> };
      expect(bundles.bundles.map((b) => b.trust_domain)).not.toContain("td-b.test");
      const third = await agent.api.syncAuthorized({ knownRevision: second.revision });
      expect(third.bundles.map((b) => b.trustDomain)).not.toContain("td-b.test");
      expect((await rejection(admin.refreshFederationRelationship({ trustDomain: "td-b.test" }))).code).toBe(status.NOT_FOUND);
    } finally {
      agent.api.close();
    }
  });
});
