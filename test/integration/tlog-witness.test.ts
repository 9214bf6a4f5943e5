/**
 * Two trust domains watching each other's log, as two real `sigil-server run`
 * processes: B (b.example) witnesses A's log (a.example), A sends its
 * checkpoints to B. A's `/checkpoint` on its tiles listener ends up carrying
 * B's cosignature; `log verify --witness-key <B>` accepts it, and with a
 * key B does not hold it fails naming that key.
 */
import { appendFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { afterAll, describe, expect, it } from "vitest";
import { checkCosignatures, generateCosigner, parseCosignerVerifierKey } from "../../spiffe/tlog/cosignature.js";
import { launchServerProcess, runServerCli, startServerProcess, type ServerProcess } from "./support/server-process.js";

const LOG = "transparency_log:\n  enabled: true\n  checkpoint_interval: 200ms\n  listen_address: 127.0.0.1:0\n";
let a: ServerProcess | undefined;
let b: ServerProcess | undefined;

afterAll(async () => {
  await a?.stop();
  await b?.stop();
});

describe("transparency log witnesses, two servers", () => {
  it("B cosigns A's checkpoints; log verify checks the cosignature and names a missing witness", async () => {
    // A once without witnesses, to learn its log key (kept by its disk key manager across the restart).
    const first = await startServerProcess(LOG, "a.example");
    a = first;
    const cp = first.cli(["log", "checkpoint", "--output", "json"]);
    expect(cp.status, cp.stderr).toBe(0);
    const logKey = (JSON.parse(cp.stdout) as { verifier_keys: string[] }).verifier_keys[0] as string;
    expect(logKey).toMatch(/^a\.example\/sigil\/issuance\+/);
    await first.stop({ keepDir: true });
    a = undefined;

    b = await startServerProcess(`${LOG}  witness:\n    logs:\n      - keys: ["${logKey}"]\n`, "b.example");
    const bStarted = await b.waitForLog((r) => r.msg === "server started");
    const bUrl = String(bStarted.transparency_log);
    const witnessKey = String((await b.waitForLog((r) => r.msg === "tlog witness: cosigning checkpoints of the configured logs")).witness_key);
    expect(witnessKey).toMatch(/^b\.example\/sigil\/witness\+[0-9a-f]{8}\+/);

    appendFileSync(first.configPath, `  witnesses:\n    - url: ${bUrl}\n      key: "${witnessKey}"\n`);
    a = await launchServerProcess(first.dir, first.configPath, first.socketPath, { ownsDir: true });
    const aUrl = String((await a.waitForLog((r) => r.msg === "server started")).transparency_log);
    const minted = a.cli(["x509", "mint", "--spiffe-id", "spiffe://a.example/witnessed"]);
    expect(minted.status, minted.stderr).toBe(0);

    // A's served checkpoint gets B's cosignature once a checkpoint covering the mint is cosigned.
    const witness = parseCosignerVerifierKey(witnessKey);
    let note = "";
    for (let i = 0; i < 100; i++) {
      note = await (await fetch(`${aUrl}/checkpoint`)).text();
      const size = Number(note.split("\n")[1]);
      try {
        checkCosignatures(note, [witness]);
        if (size >= 2) break;
      } catch {
        // not cosigned yet
      }
      await delay(200);
    }
    expect(checkCosignatures(note, [witness]).cosigned.length).toBe(1);

    const bundle = a.cli(["bundle", "show", "--format", "spiffe"]);
    expect(bundle.status, bundle.stderr).toBe(0);
    const bundleFile = path.join(a.dir, "a-bundle.json");
    writeFileSync(bundleFile, bundle.stdout);
    const common = ["log", "verify", "--url", aUrl, "--key", logKey, "--bundle", bundleFile];
    const verify = runServerCli([...common, "--witness-key", witnessKey, "--output", "json"]);
    expect(verify.status, verify.stderr).toBe(0);
    const doc = JSON.parse(verify.stdout) as { witnesses: { quorum: number; cosigned: { key: string }[]; missing: unknown[] } };
    expect(doc.witnesses).toMatchObject({ quorum: 1, cosigned: [{ key: witnessKey }], missing: [] });

    const stranger = generateCosigner("c.example/sigil/witness").vkey;
    const strangerId = stranger.split("+")[1] as string;
    const refused = runServerCli([...common, "--witness-key", stranger]);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toContain(`missing: c.example/sigil/witness+${strangerId} (no cosignature)`);
    // One witness's key twice cannot make a quorum of two.
    const twice = runServerCli([...common, "--witness-key", witnessKey, "--witness-key", witnessKey, "--witness-quorum", "2"]);
    expect(twice.status).not.toBe(0);
    expect(twice.stderr).toContain(`--witness-key: witness key ${witness.name}+${witnessKey.split("+")[1] as string} is listed twice`);
    // One of two is enough with --witness-quorum 1.
    const either = runServerCli([...common, "--witness-key", witnessKey, "--witness-key", stranger, "--witness-quorum", "1"]);
    expect(either.status, either.stderr).toBe(0);

    // An honest log's checkpoints are never reported as a fork.
    expect(b.logs.some((r) => r.msg === "tlog witness: the log shows a view inconsistent with the checkpoint this witness cosigned (a fork); refused")).toBe(false);
  }, 240_000);
});
