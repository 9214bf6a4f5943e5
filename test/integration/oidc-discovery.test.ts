/**
 * OIDC discovery end to end, as a relying party (AWS STS, GCP, Vault) uses it:
 * a real `sigil-server` process with `oidc_discovery` on HTTPS (a test CA the
 * relying party trusts) and a one-minute CA, a real agent, and workloads that
 * fetch JWT-SVIDs with `sigil-agent api fetch jwt`. The token verifies with
 * `jose`'s `createRemoteJWKSet` on the `jwks_uri` the discovery document
 * names, against the server and against `sigil-server oidc-discovery` running
 * as a workload of the agent. Through the JWT key's rotation, a token signed
 * by the retired key keeps verifying until it expires, and only then does
 * the key leave the set. `--write --refresh` keeps a token file valid with a
 * 6 s TTL, and every read of the file during the rewrites is a whole token.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import { createRemoteJWKSet, customFetch, decodeProtectedHeader, jwtVerify, type FetchImplementation } from "jose";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { closedLoopbackPort } from "../support/ports.js";
import { createServingPki, type ServingPki } from "../support/serving-cert.js";
import { requireTool } from "../support/tools.js";
import { runAgentCli, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { followJsonLog } from "./support/json-log.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";
import { AGENT_MAIN, SERVER_MAIN } from "../support/programs.js";

const haveOpenssl = requireTool("openssl", ["version"], "the discovery endpoint's serving certificate");
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const uid = process.getuid?.() ?? 0;
const OIDC_ID = "spiffe://example.org/oidc-reader";
const CI_ID = "spiffe://example.org/ci";

let pki: ServingPki;
let dir = "";
let issuer = "";
let srv: ServerProcess | undefined;
let agent: AgentProcess | undefined;
let oidcProcess: ChildProcess | undefined;
let processUrl = "";

/** fetch over HTTPS trusting the test CA only, as a relying party configured with it would. */
function trustingFetch(caPem: string): FetchImplementation {
  return (url, options) =>
    new Promise<Response>((resolve, reject) => {
      const headers: Record<string, string> = {};
      options.headers.forEach((v, k) => (headers[k] = v));
      const req = httpsRequest(url, { method: options.method, headers, ca: caPem, agent: false, signal: options.signal }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => {
          const h = new Headers();
          for (const [k, v] of Object.entries(res.headers)) if (typeof v === "string") h.set(k, v);
          resolve(new Response(Buffer.concat(chunks), { status: res.statusCode ?? 0, headers: h }));
        });
      });
      req.on("error", reject);
      req.end();
    });
}

async function getJson(url: string): Promise<Record<string, unknown>> {
  const r = await trustingFetch(pki.caPem)(url, { headers: new Headers(), method: "GET", redirect: "manual", signal: AbortSignal.timeout(10_000) });
  expect(r.status, url).toBe(200);
  return (await r.json()) as Record<string, unknown>;
}

/** What a relying party does: discovery at `<issuer>/.well-known/openid-configuration`, then the JWK Set it names, fetched afresh. */
async function relyingPartyVerify(token: string, audience: string, discoveryBase = issuer) {
  const doc = await getJson(`${discoveryBase}/.well-known/openid-configuration`);
  expect(doc.issuer).toBe(issuer);
  const jwksUri = discoveryBase === issuer ? String(doc.jwks_uri) : `${discoveryBase}/keys`;
  const jwks = createRemoteJWKSet(new URL(jwksUri), { [customFetch]: trustingFetch(pki.caPem), cacheMaxAge: 0 });
  return jwtVerify(token, jwks, { issuer, audience });
}

async function kids(base: string): Promise<string[]> {
  return ((await getJson(`${base}/keys`)).keys as { kid: string }[]).map((k) => k.kid);
}

async function fetchToken(audience: string, spiffeId: string): Promise<string> {
  let token = "";
  // The agent may not hold the entries yet right after its start.
  await vi.waitFor(
    async () => {
      const r = await runAgentCli(["api", "fetch", "jwt", "--audience", audience, "--spiffe-id", spiffeId, "--output", "token", "--socket-path", agent?.socketPath ?? ""]);
      expect(r.status, r.stderr).toBe(0);
      token = r.stdout;
    },
    { timeout: 20_000, interval: 500 },
  );
  expect(token).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+\n$/);
  return token.trim();
}

describe.skipIf(!haveOpenssl)("OIDC discovery with a real server, agent and relying party", () => {
  beforeAll(async () => {
    pki = createServingPki("sigil oidc discovery");
    dir = mkdtempSync(path.join(tmpdir(), "sigil-oidc-it-"));
    writeFileSync(path.join(dir, "cert.pem"), pki.certPem);
    writeFileSync(path.join(dir, "key.pem"), pki.keyPem, { mode: 0o600 });
    const port = await closedLoopbackPort();
    issuer = `https://127.0.0.1:${port}`;
    const serverDir = mkdtempSync(path.join(tmpdir(), "sigil-it-"));
    const configPath = path.join(serverDir, "server.yaml");
    writeFileSync(
      configPath,
      testServerConfigYaml(serverDir, {
        // The shortest CA lifetime: the next JWT key is prepared about 30 s after the start and signs from about 50 s; the first expires at 60 s.
        serverExtra: `  log_level: debug\n  ca_ttl: 1m\n  default_x509_svid_ttl: 10s\n  jwt_issuer: ${issuer}\n`,
        extraYaml: `oidc_discovery:
  enabled: true
  address: 127.0.0.1
  port: ${port}
  cache_max_age: 0s
  tls:
    cert_file_path: ${path.join(dir, "cert.pem")}
    key_file_path: ${path.join(dir, "key.pem")}
`,
      }),
    );
    srv = await launchServerProcess(serverDir, configPath, path.join(serverDir, "admin", "api.sock"), { ownsDir: true });
    const target = `unix:${srv.socketPath}`;
    const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
    const tok = await agentAdmin.createJoinToken({ ttl: 600 });
    agentAdmin.close();
    const entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
    // Both for this uid: the relying-party tests and the oidc-discovery process use the first, the token file the second (6 s tokens).
    await entryAdmin.batchCreateEntry({
      entries: [
        create(EntrySchema, { spiffeId: OIDC_ID, parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${uid}` }] }),
        create(EntrySchema, { spiffeId: CI_ID, parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${uid}` }], jwtSvidTtl: 6 }),
      ],
    });
    entryAdmin.close();
    const bundlePem = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem, joinToken: tok.token });
  }, 90_000);

  afterAll(async () => {
    if (oidcProcess && oidcProcess.exitCode === null && oidcProcess.signalCode === null) {
      const exited = new Promise((r) => oidcProcess?.once("exit", r));
      oidcProcess.kill("SIGTERM");
      await exited;
    }
    await agent?.stop();
    await srv?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  let tokenA = "";

  it("the server's discovery document names the issuer and its /keys; a workload's JWT-SVID verifies with createRemoteJWKSet", async () => {
    expect(srv?.logs.find((l) => l.msg === "server started")?.oidc_discovery).toBe(issuer);
    const doc = await getJson(`${issuer}/.well-known/openid-configuration`);
    expect(doc).toEqual({
      issuer,
      jwks_uri: `${issuer}/keys`,
      response_types_supported: ["id_token"],
      subject_types_supported: ["public"],
      id_token_signing_alg_values_supported: ["ES256"],
    });
    const keys = (await getJson(`${issuer}/keys`)).keys as Record<string, unknown>[];
    for (const k of keys) expect(k).toMatchObject({ kty: "EC", crv: "P-256", use: "sig", alg: "ES256" });

    tokenA = await fetchToken("sts.example.test", OIDC_ID);
    const { payload, protectedHeader } = await relyingPartyVerify(tokenA, "sts.example.test");
    expect(payload.sub).toBe(OIDC_ID);
    expect(payload.iss).toBe(issuer);
    expect(keys.map((k) => k.kid)).toContain(protectedHeader.kid);
    // A relying party expecting another audience or issuer refuses it.
    await expect(relyingPartyVerify(tokenA, "vault")).rejects.toThrow(/aud/);
  }, 60_000);

  it("sigil-server oidc-discovery, a workload of the agent, serves the same keys and the token verifies through it", async () => {
    const configPath = path.join(dir, "oidc.yaml");
    writeFileSync(
      configPath,
      `issuer: ${issuer}
address: 127.0.0.1
port: 0
tls:
  cert_file_path: ${path.join(dir, "cert.pem")}
  key_file_path: ${path.join(dir, "key.pem")}
workload_api:
  socket_path: ${agent?.socketPath}
  trust_domain: example.org
health_checks:
  listener_enabled: true
  bind_port: 0
`,
    );
    oidcProcess = spawn(process.execPath, [SERVER_MAIN, "oidc-discovery", "--config", configPath], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    const log = followJsonLog(oidcProcess);
    const started = await log.waitForLog((r) => r.msg === "oidc-discovery started", 30_000, "oidc-discovery log");
    processUrl = String(started.url);
    const health = String(started.health);
    await vi.waitFor(async () => expect((await fetch(`${health}/ready`)).status).toBe(200), { timeout: 20_000, interval: 200 });
    expect((await fetch(`${health}/live`)).status).toBe(200);

    expect((await kids(processUrl)).sort()).toEqual((await kids(issuer)).sort());
    const { payload } = await relyingPartyVerify(tokenA, "sts.example.test", processUrl);
    expect(payload.sub).toBe(OIDC_ID);
  }, 60_000);

  it("--write --refresh keeps the token file valid past the 6 s TTL; every read is a whole token", async () => {
    const tokenDir = mkdtempSync(path.join(tmpdir(), "sigil-token-"));
    const file = path.join(tokenDir, "token");
    const cli = spawn(
      process.execPath,
      [AGENT_MAIN, "api", "fetch", "jwt", "--audience", "ci", "--spiffe-id", CI_ID, "--write", file, "--refresh", "--socket-path", agent?.socketPath ?? ""],
      { cwd: root, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stderr = "";
    cli.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => cli.once("exit", (code) => r(code)));
    try {
      // token → when it was first read, and its expiry.
      const seen = new Map<string, { firstRead: number; exp: number }>();
      const changes: { at: number; previousExp: number }[] = [];
      let last = "";
      let reads = 0;
      const until = Date.now() + 16_000;
      while (Date.now() < until) {
        let text: string | undefined;
        try {
          text = readFileSync(file, "utf8");
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "ENOENT" || seen.size > 0) throw e; // only before the first write
        }
        if (text !== undefined) {
          reads++;
          expect(text).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+\n$/);
          const token = text.trim();
          if (!seen.has(token)) {
            const now = Date.now();
            // Whole and valid when it appears: a relying party accepts it.
            const { payload } = await relyingPartyVerify(token, "ci");
            expect(payload.sub).toBe(CI_ID);
            if (last) changes.push({ at: now, previousExp: seen.get(last)?.exp ?? 0 });
            seen.set(token, { firstRead: now, exp: (payload.exp ?? 0) * 1000 });
            last = token;
          }
        }
        await new Promise((r) => setTimeout(r, 15));
      }
      expect(reads).toBeGreaterThan(100);
      expect(seen.size).toBeGreaterThanOrEqual(3);
      // Each replacement was there before the token it replaced expired.
      for (const c of changes) expect(c.at).toBeLessThan(c.previousExp);
    } finally {
      cli.kill("SIGTERM");
      expect(await exited).toBe(0);
      rmSync(tokenDir, { recursive: true, force: true });
    }
    expect(stderr.match(/wrote .*token: JWT-SVID of spiffe:\/\/example\.org\/ci, expires /g)?.length ?? 0).toBeGreaterThanOrEqual(3);
  }, 60_000);

  it("a token signed by the retired JWT key verifies, through the server and the process, until it expires; then the key leaves both sets", async () => {
    const oldKid = String(decodeProtectedHeader(tokenA).kid);
    const exp = Number(JSON.parse(Buffer.from(tokenA.split(".")[1] ?? "", "base64url").toString()).exp) * 1000;
    let verifiedAfterRotation = 0;
    const failures: string[] = [];
    // Verify again and again, as relying parties do, until the token expires (jose looks the key up before
    // it checks exp, so a key dropped after the expiry would read as a missing key: stop just before).
    while (Date.now() < exp - 500) {
      const rotated = srv?.logs.some((l) => l.msg === "ca: activated authority" && l.kind === "jwt" && l.key_id !== oldKid) ?? false;
      for (const base of [issuer, processUrl]) {
        try {
          await relyingPartyVerify(tokenA, "sts.example.test", base);
          if (rotated) verifiedAfterRotation++;
        } catch (e) {
          failures.push(`${base}: ${(e as { code?: string }).code ?? ""} ${(e as Error).message}`);
        }
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(failures).toEqual([]);
    // The new key signed (tokens now carry its kid) while the old one's token still verified.
    expect(verifiedAfterRotation).toBeGreaterThan(0);
    const tokenB = await fetchToken("after-rotation", OIDC_ID);
    expect(decodeProtectedHeader(tokenB).kid).not.toBe(oldKid);
    expect((await relyingPartyVerify(tokenB, "after-rotation")).payload.sub).toBe(OIDC_ID);
    // Expired: the next rotation step drops the key, and the agent passes that on to the process.
    await vi.waitFor(async () => expect(await kids(issuer)).not.toContain(oldKid), { timeout: 30_000, interval: 500 });
    await vi.waitFor(async () => expect(await kids(processUrl)).not.toContain(oldKid), { timeout: 30_000, interval: 500 });
  }, 120_000);
});
