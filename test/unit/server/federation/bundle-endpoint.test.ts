/**
 * The SPIFFE bundle endpoint in-process, over a real CA manager (memory keys,
 * SQLite datastore, manual clock at the real time so TLS clients accept the
 * certificates' validity): what a federated server fetching the bundle sees.
 */
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { writeFileSync } from "node:fs";
import { request, type RequestOptions } from "node:https";
import type { DetailedPeerCertificate, TLSSocket } from "node:tls";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { ServerSvidService } from "../../../../server/api/server-svid.js";
import { CaManager } from "../../../../server/ca/manager.js";
import { parseServerConfig } from "../../../../server/config/load.js";
import { createSqliteDatastore, type Datastore } from "../../../../server/datastore/index.js";
import { startBundleEndpoint, type BundleEndpoint, type ServingCertificateSource } from "../../../../server/federation/bundle-endpoint.js";
import { bundleEndpointSettings, BundleEndpointService, svidServingCertificates } from "../../../../server/federation/bundle-endpoint-service.js";
import { ServingCertFile } from "../../../../server/federation/serving-cert-file.js";
import { parseSpiffeBundle, toX509Bundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { StaticX509BundleSource } from "../../../../spiffe/x509/static-bundle-source.js";
import { canonicalSerialHex } from "../../../../spiffe/x509/serial.js";
import { verifyX509Svid } from "../../../../spiffe/x509/verify.js";
import { createServingPki } from "../../../support/serving-cert.js";
import { testTempDir } from "../../../support/temp-dir.js";
import { requireTool } from "../../../support/tools.js";

const H = 3_600_000;
const td = parseTrustDomain("example.org");
const serverId = parseSpiffeId("spiffe://example.org/spire/server");
const haveOpenssl = requireTool("openssl", ["version"], "TLS protocol checks and https_web test certificates");

/** Things to close after each test, last first. */
let cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

/** Log records written by the code under test. */
function logSink() {
  const records: Record<string, unknown>[] = [];
  const log = createLogger({ level: "debug", destination: { write: (line) => records.push(JSON.parse(line) as Record<string, unknown>) } });
  return { log, records };
}

async function caSetup() {
  const dir = testTempDir("sigil-bundle-endpoint-");
  const clock = new ManualClock(new Date());
  const store: Datastore = await createSqliteDatastore({ path: path.join(dir, "ds.sqlite3"), clock });
  cleanups.push(() => store.close());
  const ca = new CaManager({ trustDomain: td, caTtlMs: 24 * H, caKeyType: "ec-p256", jwtKeyType: "ec-p256", refreshHintSeconds: 300 }, { keyManager: createMemoryKeyManager(), store, clock });
  await ca.start();
  return { dir, clock, ca };
}

/** One HTTPS exchange, trusting any certificate (the tests check the certificate themselves). */
function fetch(url: string, options: RequestOptions = {}, body?: string) {
  return new Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string; peer: DetailedPeerCertificate }>((resolve, reject) => {
    const req = request(url, { rejectUnauthorized: false, agent: false, ...options }, (res) => {
      const peer = (res.socket as TLSSocket).getPeerCertificate(true);
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8"), peer }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** The DER chain a peer presented, leaf first (the issuer links end at a self-signed certificate). */
function peerChain(peer: DetailedPeerCertificate): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let c: DetailedPeerCertificate | undefined = peer; c?.raw !== undefined; c = c.issuerCertificate === c ? undefined : c.issuerCertificate) {
    out.push(new Uint8Array(c.raw));
  }
  return out;
}

async function spiffeEndpoint(opts: { path?: string; refreshHintSeconds?: number; endpointId?: string } = {}) {
  const setup = await caSetup();
  const svid = new ServerSvidService({ ca: { manager: setup.ca }, serverId: opts.endpointId ? parseSpiffeId(opts.endpointId) : serverId, ttlMs: H, clock: setup.clock });
  await svid.start();
  const { log, records } = logSink();
  const metrics = new Metrics({ defaultMetrics: false });
  const endpoint = await startBundleEndpoint({
    host: "127.0.0.1",
    port: 0,
    path: opts.path ?? "/",
    refreshHintSeconds: opts.refreshHintSeconds ?? 300,
    bundles: setup.ca,
    certificates: svidServingCertificates(svid.certificates),
    metrics,
    log,
  });
  cleanups.push(() => endpoint.close());
  return { ...setup, svid, endpoint, metrics, records };
}

/** Runs `openssl s_client` against the endpoint (asynchronously: the endpoint serves from this process). */
function opensslConnect(endpoint: BundleEndpoint, args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn("openssl", ["s_client", "-connect", `127.0.0.1:${endpoint.port}`, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")));
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

describe("bundle endpoint (https_spiffe)", () => {
  it("FED-14: a GET without a client certificate or credentials answers 200 with the bundle", async () => {
    const { endpoint, ca } = await spiffeEndpoint();
    const res = await fetch(endpoint.url);
    expect(res.status).toBe(200);
    const { bundle } = parseSpiffeBundle(res.body, td);
    expect(bundle.x509Authorities.map((d) => Buffer.from(d).toString("hex"))).toEqual(ca.bundle().x509Authorities.map((d) => Buffer.from(d).toString("hex")));
  });

  it("FED-15, BUNDLE-6, BUNDLE-7: JSON with an integer refresh hint and a sequence; a rotation is served on the next request with a higher sequence", async () => {
    const { endpoint, ca, clock } = await spiffeEndpoint({ refreshHintSeconds: 120 });
    const first = await fetch(endpoint.url);
    expect(first.headers["content-type"]).toBe("application/json");
    expect(first.headers["cache-control"]).toBe("no-store");
    expect(first.body).toMatch(/"spiffe_refresh_hint":120[,}]/); // a JSON integer, not "2m" or 120.0
    const seq1 = BigInt(/"spiffe_sequence":(\d+)/.exec(first.body)?.[1] ?? "-1");
    expect(seq1).toBe(ca.bundle().sequenceNumber);

    clock.advance(12 * H); // half life: the next CA is prepared and published
    await ca.rotate();
    expect(ca.bundle().x509Authorities).toHaveLength(2);
    const second = await fetch(endpoint.url);
    const parsed = parseSpiffeBundle(second.body, td).bundle;
    expect(parsed.x509Authorities).toHaveLength(2);
    expect(parsed.sequenceNumber).toBe(ca.bundle().sequenceNumber);
    expect(parsed.sequenceNumber ?? 0n).toBeGreaterThan(seq1);
    expect(parsed.refreshHintSeconds).toBe(120);
  });

  it("HEAD answers the headers only; other paths 404, other methods 405 with Allow; each counted by status", async () => {
    const { endpoint, metrics } = await spiffeEndpoint({ path: "/bundle" });
    const head = await fetch(endpoint.url, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.body).toBe("");
    expect(Number(head.headers["content-length"])).toBeGreaterThan(0);
    expect((await fetch(endpoint.url.replace("/bundle", "/other"))).status).toBe(404);
    expect((await fetch(endpoint.url.replace("/bundle", "/"))).status).toBe(404);
    expect((await fetch(`${endpoint.url}?x=1`)).status).toBe(200);
    const post = await fetch(endpoint.url, { method: "POST", headers: { "content-type": "application/json" } }, "{}");
    expect(post.status).toBe(405);
    expect(post.headers["allow"]).toBe("GET, HEAD");
    const text = await metrics.registry.metrics();
    expect(text).toContain('sigil_bundle_endpoint_requests_total{code="200"} 2');
    expect(text).toContain('sigil_bundle_endpoint_requests_total{code="404"} 2');
    expect(text).toContain('sigil_bundle_endpoint_requests_total{code="405"} 1');
  });

  it("FED-21: the serving certificate is a valid X509-SVID of the server's ID, verified with the trust domain's bundle", async () => {
    const { endpoint, ca, clock } = await spiffeEndpoint();
    const res = await fetch(endpoint.url);
    const verified = verifyX509Svid(peerChain(res.peer), new StaticX509BundleSource([toX509Bundle(ca.bundle())]), { now: clock.now() });
    expect(verified.id.toString()).toBe(serverId.toString());
  });

  it("FED-21: with another endpoint_spiffe_id the service mints an SVID for it, renewed on refresh after the CA rotates", async () => {
    const setup = await caSetup();
    const serverSvid = new ServerSvidService({ ca: { manager: setup.ca }, serverId, ttlMs: H, clock: setup.clock });
    await serverSvid.start();
    const { log, records } = logSink();
    const recorded: string[] = [];
    const service = new BundleEndpointService({
      settings: { host: "127.0.0.1", port: 0, path: "/", refreshHintSeconds: 300, profile: { kind: "https_spiffe", endpointId: parseSpiffeId("spiffe://example.org/bundle-endpoint") } },
      ca: { manager: setup.ca },
      serverSvid,
      serverId,
      svidTtlMs: H,
      clock: setup.clock,
      metrics: new Metrics({ defaultMetrics: false }),
      log,
      // The transparency log's hook: each endpoint SVID is signed and recorded through it before it is served.
      issueSvid: async (req) => {
        const issued = setup.ca.signX509Svid(req);
        recorded.push(issued.serial);
        return issued;
      },
    });
    await service.start();
    cleanups.push(() => service.stop());
    const url = service.endpoint?.url ?? "";
    expect(records.find((r) => r["msg"] === "bundle endpoint listening")?.["url"]).toBe(url);
    const before = await fetch(url);
    const bundleSource = () => new StaticX509BundleSource([toX509Bundle(setup.ca.bundle())]);
    expect(verifyX509Svid(peerChain(before.peer), bundleSource(), { now: setup.clock.now() }).id.toString()).toBe("spiffe://example.org/bundle-endpoint");

    setup.clock.advance(H); // past half of the SVID's lifetime
    await service.refresh();
    const after = await fetch(url);
    expect(after.peer.serialNumber).not.toBe(before.peer.serialNumber);
    expect(recorded.map(canonicalSerialHex)).toEqual([before.peer.serialNumber, after.peer.serialNumber].map(canonicalSerialHex));
    expect(verifyX509Svid(peerChain(after.peer), bundleSource(), { now: setup.clock.now() }).id.toString()).toBe("spiffe://example.org/bundle-endpoint");
  });

  describe.skipIf(!haveOpenssl)("FED-8 with openssl s_client", () => {
    it("refuses TLS 1.1 and a CBC-SHA1 suite, accepts TLS 1.2 and TLS 1.3", async () => {
      const { endpoint } = await spiffeEndpoint();
      // @SECLEVEL=0 lets the client offer TLS 1.1, so the refusal is the server's.
      const tls11 = await opensslConnect(endpoint, ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
      expect(tls11.status).not.toBe(0);
      expect(tls11.stdout).toMatch(/Cipher\s*:\s*0000/); // no session was negotiated
      expect(tls11.stderr).toMatch(/protocol version|unsupported protocol/i);
      const weak = await opensslConnect(endpoint, ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"]);
      expect(weak.status).not.toBe(0);
      const tls12 = await opensslConnect(endpoint, ["-tls1_2"]);
      expect(tls12.status, tls12.stderr).toBe(0);
      expect(tls12.stdout).toMatch(/Protocol\s*:\s*TLSv1\.2/);
      expect(tls12.stdout).toMatch(/Cipher\s*:\s*ECDHE-ECDSA-AES(128|256)-GCM-SHA(256|384)|Cipher\s*:\s*ECDHE-ECDSA-CHACHA20-POLY1305/);
      expect(tls12.stdout).toContain("No client certificate CA names sent");
      const tls13 = await opensslConnect(endpoint, ["-tls1_3"]);
      expect(tls13.status, tls13.stderr).toBe(0);
    });
  });
});

describe.skipIf(!haveOpenssl)("bundle endpoint (https_web)", () => {
  async function webEndpoint() {
    const { ca, dir } = await caSetup();
    const pki = createServingPki("bundle.example.org", ["127.0.0.1", "bundle.example.org"]);
    const certFile = path.join(dir, "tls.crt");
    const keyFile = path.join(dir, "tls.key");
    writeFileSync(certFile, pki.certPem);
    writeFileSync(keyFile, pki.keyPem);
    const { log, records } = logSink();
    const files = new ServingCertFile({ certFilePath: certFile, keyFilePath: keyFile, syncIntervalMs: H, configKey: "federation.bundle_endpoint.profile.https_web.serving_cert_file", log });
    files.start();
    cleanups.push(() => files.stop());
    const certificates: ServingCertificateSource = files;
    const endpoint = await startBundleEndpoint({ host: "127.0.0.1", port: 0, path: "/", refreshHintSeconds: 300, bundles: ca, certificates, metrics: new Metrics({ defaultMetrics: false }), log });
    cleanups.push(() => endpoint.close());
    return { pki, certFile, keyFile, files, endpoint, records };
  }

  it("FED-13: serves the configured certificate, which verifies against its CA for the host in its SAN", async () => {
    const { pki, endpoint } = await webEndpoint();
    const res = await fetch(endpoint.url, { rejectUnauthorized: true, ca: pki.caPem, servername: "bundle.example.org" });
    expect(res.status).toBe(200);
    expect(res.peer.subjectaltname).toContain("DNS:bundle.example.org");
    // The certificate names the IP too, so a client connecting by address verifies it as well.
    expect((await fetch(endpoint.url, { rejectUnauthorized: true, ca: pki.caPem })).status).toBe(200);
  });

  it("reloads changed files for new connections; a broken file keeps the previous certificate and logs an error naming it", async () => {
    const { certFile, keyFile, files, endpoint, records } = await webEndpoint();
    const first = new X509Certificate((await fetch(endpoint.url)).peer.raw).serialNumber;

    writeFileSync(certFile, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
    expect(files.sync()).toBe(false);
    expect(records.some((r) => r["level"] === "error" && String(r["err"]).includes(certFile))).toBe(true);
    expect(new X509Certificate((await fetch(endpoint.url)).peer.raw).serialNumber).toBe(first);

    // A new pair written in place: the directory watch picks it up (no explicit sync).
    const next = createServingPki("bundle.example.org", ["127.0.0.1"]);
    writeFileSync(keyFile, next.keyPem);
    writeFileSync(certFile, next.certPem);
    const expected = new X509Certificate(next.certPem).serialNumber;
    await vi.waitFor(async () => expect(new X509Certificate((await fetch(endpoint.url)).peer.raw).serialNumber).toBe(expected), { timeout: 20_000, interval: 100 });
  });

  it("refuses to start on a key that does not match the certificate, naming the config key and the file", async () => {
    const { dir } = await caSetup();
    const a = createServingPki();
    const b = createServingPki();
    writeFileSync(path.join(dir, "c.pem"), a.certPem);
    writeFileSync(path.join(dir, "k.pem"), b.keyPem);
    const files = new ServingCertFile({
      certFilePath: path.join(dir, "c.pem"),
      keyFilePath: path.join(dir, "k.pem"),
      syncIntervalMs: H,
      configKey: "federation.bundle_endpoint.profile.https_web.serving_cert_file",
      log: logSink().log,
    });
    expect(() => files.start()).toThrow(/federation\.bundle_endpoint\.profile\.https_web\.serving_cert_file: .*k\.pem: the private key does not match/);
  });
});

describe("bundle endpoint settings", () => {
  const base = `
server:
  trust_domain: example.org
plugins:
  DataStore:
    sql:
      database_type: sqlite3
      connection_string: ./ds.sqlite3
  KeyManager:
    memory:
  NodeAttestor:
    join_token: {}
`;
  it("defaults to https_spiffe with the server's ID, port 8443, path / and a 5m hint", () => {
    const s = bundleEndpointSettings(parseServerConfig(`${base}federation:\n  bundle_endpoint: {}\n`), serverId);
    expect(s).toMatchObject({ host: "0.0.0.0", port: 8443, path: "/", refreshHintSeconds: 300 });
    expect(s?.profile.kind === "https_spiffe" && s.profile.endpointId.toString()).toBe(serverId.toString());
    expect(bundleEndpointSettings(parseServerConfig(base), serverId)).toBeUndefined();
  });

  it("refuses an endpoint_spiffe_id outside the trust domain and a fractional refresh hint, naming the key", () => {
    expect(() =>
      parseServerConfig(`${base}federation:\n  bundle_endpoint:\n    profile:\n      https_spiffe:\n        endpoint_spiffe_id: spiffe://other.org/spire/server\n`),
    ).toThrow(/federation\.bundle_endpoint\.profile\.https_spiffe\.endpoint_spiffe_id: spiffe:\/\/other\.org\/spire\/server is not in the trust domain example\.org/);
    expect(() => parseServerConfig(`${base}federation:\n  bundle_endpoint:\n    refresh_hint: 1500ms\n`)).toThrow(/federation\.bundle_endpoint\.refresh_hint: must be a whole number of seconds/);
    expect(() =>
      parseServerConfig(`${base}federation:\n  bundle_endpoint:\n    profile:\n      https_spiffe: {}\n      https_web:\n        serving_cert_file: { cert_file_path: a, key_file_path: b }\n`),
    ).toThrow(/federation\.bundle_endpoint\.profile: set exactly one of https_spiffe and https_web/);
  });
});
