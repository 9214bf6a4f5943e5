/**
 * `npm start` (scripts/start.ts): a server and an agent on the embedded
 * SQLite datastore serve the current user an SVID; a second start on the same
 * state reuses the CA and the agent's SVID instead of attesting again.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { createWorkloadApiClient } from "../../spiffe/workloadapi/client.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const state = mkdtempSync(path.join(tmpdir(), "sigil-quickstart-"));
const running: ChildProcess[] = [];

function start(): Promise<{ child: ChildProcess; socket: string; identity: string }> {
  const child = spawn(process.execPath, ["--import", "tsx", path.join(root, "scripts/start.ts")], {
    cwd: root,
    env: { ...process.env, SIGIL_STATE_DIR: state },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.push(child);
  let out = "";
  let err = "";
  child.stderr?.on("data", (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      const socket = /Workload API\s+(\S+)/.exec(out)?.[1];
      const identity = /Identity served\s+(\S+)/.exec(out)?.[1];
      if (socket && identity && out.includes("Press Ctrl-C")) resolve({ child, socket, identity });
    });
    child.once("exit", (code) => reject(new Error(`quickstart exited with ${code}: ${err}`)));
  });
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill("SIGINT");
  });
}

async function fetchAsMe(socket: string): Promise<{ id: string; root: string }> {
  const client = createWorkloadApiClient({ address: `unix://${socket}` });
  try {
    const ctx = await client.fetchX509Context();
    const b = ctx.bundles.get("example.org");
    return { id: ctx.defaultSvid.id.toString(), root: Buffer.from(b?.authorityDers[0] ?? []).toString("hex") };
  } finally {
    client.close();
  }
}

afterAll(async () => {
  try {
    for (const c of running) await stop(c);
  } finally {
    rmSync(state, { recursive: true, force: true });
  }
});

describe("npm start quickstart", () => {
  it("serves the current user an SVID, and a second start reuses the same state", async () => {
    const first = await start();
    expect(first.identity).toBe(`spiffe://example.org/quickstart/uid-${userInfo().uid}`);
    const a = await fetchAsMe(first.socket);
    expect(a.id).toBe(first.identity);
    await stop(first.child);

    const second = await start();
    const b = await fetchAsMe(second.socket);
    expect(b).toEqual(a); // same identity, same CA root
    await stop(second.child);
    const log = readFileSync(path.join(state, "sigil.log"), "utf8");
    expect(log.match(/"msg":"agent attested"/g)?.length).toBe(1);
    expect(log).toMatch(/using the stored agent SVID/);
  }, 90_000);
});
