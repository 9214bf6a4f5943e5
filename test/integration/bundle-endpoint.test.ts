/**
 * The SPIFFE bundle endpoint of a real `sigil-server run` process
 * (`federation.bundle_endpoint`, default `https_spiffe` profile): fetched
 * with Node's HTTPS client, authenticated as a federated server would
 * (the serving SVID verified against the bundle it serves), fetched again with
 * `openssl s_client`, and followed through a CA rotation (a one-minute
 * `ca_ttl` prepares the next CA about 30 s after the start).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { request } from "node:https";
import type { DetailedPeerCertificate, TLSSocket } from "node:tls";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parseSpiffeBundle, toX509Bundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { StaticX509BundleSource } from "../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import { requireTool } from "../support/tools.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";

const td = parseTrustDomain("example.org");
const haveOpenssl = requireTool("openssl", ["version"], "fetching the bundle with openssl s_client");
let srv: ServerProcess | undefined;
let url = "";

beforeAll(async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-it-"));
  const configPath = path.join(dir, "server.yaml");
  writeFileSync(
    configPath,
    testServerConfigYaml(dir, {
      // The shortest CA lifetime: the next authority is prepared about 30 s after the start.
      serverExtra: "  log_level: debug\n  ca_ttl: 1m\n  default_x509_svid_ttl: 10s\n",
      extraYaml: `federation:
  bundle_endpoint:
    address: 127.0.0.1
    port: 0
    path: /bundle
    refresh_hint: 30s
`,
    }),
  );
  srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"), { ownsDir: true });
  url = String((await srv.waitForLog((r) => r.msg === "bundle endpoint listening")).url);
}, 60_000);

afterAll(async () => {
  await srv?.stop();
});

/** GET over HTTPS with no client certificate; the peer's chain is checked by the test. */
function fetchBundle(): Promise<{ status: number; contentType: string | undefined; body: string; chain: Uint8Array[] }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { rejectUnauthorized: false, agent: false }, (res) => {
      const chain: Uint8Array[] = [];
      for (let c: DetailedPeerCertificate | undefined = (res.socket as TLSSocket).getPeerCertificate(true); c?.raw !== undefined; c = c.issuerCertificate === c ? undefined : c.issuerCertificate) {
        chain.push(new Uint8Array(c.raw));
      }
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, contentType: res.headers["content-type"], body: Buffer.concat(chunks).toString("utf8"), chain }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

describe("bundle endpoint of a server process", () => {
  it("serves the trust domain's bundle with sequence and refresh hint, from an X509-SVID of the server that the bundle verifies", async () => {
    const res = await fetchBundle();
    expect(res.status).toBe(200);
    expect(res.contentType).toBe("application/json");
    const { bundle } = parseSpiffeBundle(res.body, td);
    expect(bundle.refreshHintSeconds).toBe(30);
    expect(bundle.sequenceNumber).toBeDefined();
    // The same bundle the admin API shows.
    const shown = srv?.cli(["bundle", "show", "--format", "spiffe"]);
    expect(shown?.status, shown?.stderr).toBe(0);
    expect(parseSpiffeBundle(shown?.stdout ?? "", td).bundle.sequenceNumber).toBe(bundle.sequenceNumber);
    const verified = verifyX509Svid(res.chain, new StaticX509BundleSource([toX509Bundle(bundle)]));
    expect(verified.id.toString()).toBe("spiffe://example.org/spire/server");
  });

  it.skipIf(!haveOpenssl)("answers openssl s_client over TLS 1.2 without a client certificate", async () => {
    const { hostname: host, port } = new URL(url);
    const out = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const child = spawn("openssl", ["s_client", "-quiet", "-ign_eof", "-tls1_2", "-connect", `${host}:${port}`], { stdio: ["pipe", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
      child.stdin.on("error", () => undefined); // an early exit is reported by the status below
      child.on("error", reject);
      child.on("close", (status) => resolve({ status, stdout, stderr }));
      child.stdin.end(`GET /bundle HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
    });
    expect(out.stdout, out.stderr).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    const body = out.stdout.slice(out.stdout.indexOf("\r\n\r\n") + 4);
    expect(parseSpiffeBundle(body, td).bundle.x509Authorities.length).toBeGreaterThan(0);
  });
});

describe("bundle endpoint across a CA rotation", () => {
  it("serves the prepared CA as soon as it is published, with a higher sequence", async () => {
    const before = parseSpiffeBundle((await fetchBundle()).body, td).bundle;
    // The first "prepared authority" is the start's; the second is the rotation's.
    const prepared = (): number => srv?.logs.filter((l) => l.msg === "ca: prepared authority" && l.kind === "x509").length ?? 0;
    await vi.waitFor(() => expect(prepared()).toBeGreaterThanOrEqual(2), { timeout: 60_000, interval: 200 });
    await vi.waitFor(
      async () => {
        const after = parseSpiffeBundle((await fetchBundle()).body, td).bundle;
        expect(after.x509Authorities.length).toBeGreaterThan(before.x509Authorities.length);
        expect(after.sequenceNumber ?? 0n).toBeGreaterThan(before.sequenceNumber ?? 0n);
      },
      { timeout: 15_000, interval: 200 },
    );
  }, 90_000);
});
