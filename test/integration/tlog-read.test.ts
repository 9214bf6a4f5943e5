/**
 * The transparency log's read side against a real `sigil-server run` with
 * `transparency_log.listen_address`: an admin-minted X509-SVID and JWT-SVID
 * are proven with `log prove --cert` / `--jwt`, the tiles listener serves the
 * log with its caching headers, and `log verify` (another process, only the
 * URL, the key from `log checkpoint` and the trust bundle) checks the whole
 * log and every certificate in it, saves the checkpoint and, on the next run,
 * checks the grown log extends it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MUTABLE_CACHE_CONTROL } from "../../server/tlog/http.js";
import { runServerCli, startServerProcess, type CliResult, type ServerProcess } from "./support/server-process.js";
import { cliUntilOk } from "./support/tlog-cli.js";

let srv: ServerProcess;
let url: string;
const work = mkdtempSync(path.join(tmpdir(), "sigil-tlog-read-"));

beforeAll(async () => {
  srv = await startServerProcess("transparency_log:\n  enabled: true\n  checkpoint_interval: 200ms\n  listen_address: 127.0.0.1:0\n");
  const started = await srv.waitForLog((r) => r.msg === "server started");
  url = String(started.transparency_log);
  expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
}, 60_000);
afterAll(async () => {
  await srv?.stop();
  rmSync(work, { recursive: true, force: true });
});

const until = (args: readonly string[]): Promise<CliResult> => cliUntilOk(srv, args);

describe("transparency log read side, real server", () => {
  it("proves minted credentials, serves tiles, and log verify checks the log and its certificates", async () => {
    const minted = srv.cli(["x509", "mint", "--spiffe-id", "spiffe://example.org/tlog-read", "--write", path.join(work, "svid")]);
    expect(minted.status, minted.stderr).toBe(0);
    const proved = JSON.parse((await until(["log", "prove", "--cert", path.join(work, "svid", "svid.pem"), "--output", "json"])).stdout) as { index: number; entry: { kind: string; spiffeId: string }; verified: boolean };
    expect(proved).toMatchObject({ entry: { kind: "x509-svid", spiffeId: "spiffe://example.org/tlog-read" }, verified: true });

    const jwt = srv.cli(["jwt", "mint", "--spiffe-id", "spiffe://example.org/tlog-read", "--audience", "db", "--output", "json"]);
    expect(jwt.status, jwt.stderr).toBe(0);
    const token = (JSON.parse(jwt.stdout) as { token: string }).token;
    const jwtProof = JSON.parse((await until(["log", "prove", "--jwt", token, "--output", "json"])).stdout) as { entry: { kind: string } };
    expect(jwtProof.entry.kind).toBe("jwt-svid");

    const cp = JSON.parse(srv.cli(["log", "checkpoint", "--output", "json"]).stdout) as { origin: string; size: string; verifier_keys: string[] };
    expect(cp.origin).toBe("example.org/sigil/issuance");
    const checkpoint = await fetch(`${url}/checkpoint`);
    expect(checkpoint.headers.get("cache-control")).toBe(MUTABLE_CACHE_CONTROL);
    expect(await checkpoint.text()).toMatch(/^example\.org\/sigil\/issuance\n\d+\n/);
    expect(await (await fetch(`${url}/log-keys`)).text()).toBe(cp.verifier_keys.map((k) => `${k}\n`).join(""));

    const bundleFile = path.join(work, "bundle.json");
    const bundle = srv.cli(["bundle", "show", "--format", "spiffe"]);
    expect(bundle.status, bundle.stderr).toBe(0);
    writeFileSync(bundleFile, bundle.stdout);
    const since = path.join(work, "checkpoint");
    const verify = (): CliResult => runServerCli(["log", "verify", "--url", url, "--key", cp.verifier_keys[0] as string, "--since", since, "--bundle", bundleFile, "--output", "json"]);
    const first = verify();
    expect(first.status, first.stderr).toBe(0);
    const doc = JSON.parse(first.stdout) as { size: number; entries_checked: number; findings_total: number };
    expect(doc.findings_total).toBe(0);
    expect(doc.entries_checked).toBe(doc.size);
    expect(doc.size).toBeGreaterThan(proved.index);

    // More issuance, then the next run must find the log extends the saved checkpoint.
    expect(srv.cli(["x509", "mint", "--spiffe-id", "spiffe://example.org/tlog-read-2"]).status).toBe(0);
    await until(["log", "checkpoint"]);
    let second: CliResult | undefined;
    for (let i = 0; i < 50; i++) {
      second = verify();
      if (second.status === 0 && (JSON.parse(second.stdout) as { size: number }).size > doc.size) break;
      await delay(200);
    }
    expect(second?.status, second?.stderr).toBe(0);
    expect(JSON.parse(second?.stdout ?? "{}")).toMatchObject({ extends: { size: doc.size }, findings_total: 0 });
    expect(readFileSync(since, "utf8")).toMatch(/^example\.org\/sigil\/issuance\n/);

  }, 240_000);
});
