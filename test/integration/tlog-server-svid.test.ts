/**
 * The server's own X509-SVID with the transparency log on, against a real
 * `sigil-server run`: the TLS leaf the agent API presents (read with a plain
 * TLS handshake, as any client sees it) is proven by `log prove --cert` as a
 * `server-svid` entry holding that very certificate, and `log verify`
 * (another process, only the URL, the log key and the trust bundle) passes
 * over the whole log.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { connect } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { cliLogVerify, cliUntilOk } from "./support/tlog-cli.js";

let srv: ServerProcess;
let url: string;
const work = mkdtempSync(path.join(tmpdir(), "sigil-tlog-server-svid-"));

beforeAll(async () => {
  srv = await startServerProcess("transparency_log:\n  enabled: true\n  checkpoint_interval: 200ms\n  listen_address: 127.0.0.1:0\n");
  const started = await srv.waitForLog((r) => r.msg === "server started");
  url = String(started.transparency_log);
}, 60_000);
afterAll(async () => {
  await srv?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** The leaf certificate (DER) a TLS client is shown at `host:port`. */
function servedLeaf(address: string): Promise<Buffer> {
  const i = address.lastIndexOf(":");
  return new Promise((resolve, reject) => {
    // The chain is checked by `log prove` against the bundle; here only the presented leaf matters.
    const s = connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)), rejectUnauthorized: false, ALPNProtocols: ["h2"] }, () => {
      const der = s.getPeerCertificate().raw;
      s.destroy();
      resolve(der);
    });
    s.on("error", reject);
  });
}

describe("server SVID in the transparency log, real server", () => {
  it("log prove --cert proves the agent API's TLS leaf as a server-svid entry, and log verify passes", async () => {
    const leaf = await servedLeaf(srv.agentApiAddress);
    const certFile = path.join(work, "server-leaf.pem");
    writeFileSync(certFile, encodePemCertificates([leaf]));
    const proved = JSON.parse((await cliUntilOk(srv, ["log", "prove", "--cert", certFile, "--output", "json"])).stdout) as { entry: Record<string, unknown>; verified: boolean };
    expect(proved.verified).toBe(true);
    expect(proved.entry).toMatchObject({ kind: "server-svid", spiffeId: "spiffe://example.org/spire/server", cert: leaf.toString("base64") });
    expect(String(proved.entry.requestedBy)).toMatch(/^server:/);
    // It is a record too: the inventory of its CA key lists it, with no pick-up state (no agent hands it out).
    const inv = JSON.parse(srv.cli(["inventory", "--key-id", String(proved.entry.authorityKeyId), "--output", "json"]).stdout) as { svids: Record<string, unknown>[] };
    const listed = inv.svids.find((x) => x.serial === proved.entry.serial);
    expect(listed).toMatchObject({ spiffe_id: "spiffe://example.org/spire/server" });
    expect(listed?.pickup ?? "").toBe("");

    const verify = cliLogVerify(srv, url, work);
    expect(verify.status, verify.stderr).toBe(0);
    const doc = JSON.parse(verify.stdout) as { size: number; entries_checked: number; findings_total: number };
    expect(doc).toMatchObject({ findings_total: 0 });
    expect(doc.entries_checked).toBe(doc.size);
  }, 120_000);
});
