/**
 * The transparency log's CLI as an auditor runs it against a server process:
 * `log prove` retried until a checkpoint covers the entry, and `log verify`
 * over the whole log with the server's log key and trust bundle.
 */
import { writeFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { runServerCli, type CliResult, type ServerProcess } from "./server-process.js";

/**
 * Runs a CLI command against `srv` until it succeeds (at most 50 tries, 200 ms
 * apart): an entry is provable once the next checkpoint covers it.
 *
 * @throws Error with the last stderr when it never succeeds.
 */
export async function cliUntilOk(srv: Pick<ServerProcess, "cli">, args: readonly string[]): Promise<CliResult> {
  let r: CliResult | undefined;
  for (let i = 0; i < 50; i++) {
    if (i > 0) await delay(200);
    r = srv.cli(args);
    if (r.status === 0) return r;
  }
  throw new Error(`${args.join(" ")}: ${r?.stderr ?? ""}`);
}

/**
 * `log verify --url <tlogUrl>` as another process, with the key from
 * `log checkpoint` and the bundle from `bundle show` (written into `workDir`).
 */
export function cliLogVerify(srv: Pick<ServerProcess, "cli">, tlogUrl: string, workDir: string): CliResult {
  const cp = JSON.parse(srv.cli(["log", "checkpoint", "--output", "json"]).stdout) as { verifier_keys: string[] };
  const bundleFile = path.join(workDir, "log-verify-bundle.json");
  writeFileSync(bundleFile, srv.cli(["bundle", "show", "--format", "spiffe"]).stdout);
  return runServerCli(["log", "verify", "--url", tlogUrl, "--key", cp.verifier_keys[0] ?? "", "--bundle", bundleFile, "--output", "json"]);
}
