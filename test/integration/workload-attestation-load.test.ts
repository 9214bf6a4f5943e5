/**
 * One local user cannot make the agent's workload attestation fail for
 * everyone else, against real `sigil-server` and `sigil-agent` processes with
 * `discover_workload_path` (which hashes the caller's binary for `unix:sha256`).
 *
 * The attack: uid 65534 runs node from a copy of its own with a large sparse
 * tail (still a valid ELF), keeps a hundred Workload API calls in flight over
 * one connection, and touches its binary all the while so that no hash of it
 * can be reused. Every call would have the agent read and hash the whole
 * file; all attestations share the agent's one event loop and its I/O
 * threads, so another user's attestation would not finish within
 * `workload_attestation_timeout` and its call would fail. The agent must run
 * only a few attestations per user at a time (the rest wait in that user's
 * line), so another user is served.
 *
 * Needs root (to run workloads as other uids).
 */
import { spawn } from "node:child_process";
import { chownSync, copyFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runWorkload, type AgentProcess } from "./support/agent-process.js";
import type { ServerProcess } from "./support/server-process.js";
import { startServerAndAgentForUids } from "./support/uid-agent.js";

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("workload-attestation-load runs workloads as other uids and needs root (CI runs as root)");
  console.warn("SKIP: workload-attestation-load runs workloads as other uids and needs root; skipped on this machine");
}

const ATTACKER = { uid: 65534, gid: 65534 };
const OTHER = { uid: 4503, gid: 4503 };
/** Calls the attacker keeps in flight. */
const IN_FLIGHT = 100;
/** Zeros appended to the attacker's node: cheap to make, costly to hash. */
const TAIL_BYTES = 512 * 1024 * 1024;

const PRINT_IDS = `const ctx = await client.fetchX509Context(); console.log(JSON.stringify(ctx.svids.map((s) => s.id.toString())));`;

/**
 * Keeps `inFlight` FetchJWTBundles calls going over one connection and
 * touches its own binary between them; prints `started` after the first
 * answer, runs until stdin closes.
 */
const ATTACK_SCRIPT = `
import http2 from "node:http2";
import net from "node:net";
import { utimesSync } from "node:fs";
const [socketPath, inFlight] = process.argv.slice(2);
const session = http2.connect("http://localhost", { createConnection: () => net.connect(socketPath) });
session.on("error", () => {});
let stopping = false, announced = false;
const touch = setInterval(() => { const t = new Date(); utimesSync(process.execPath, t, t); }, 5);
function call() {
  if (stopping) return;
  const st = session.request({ ":method": "POST", ":path": "/SpiffeWorkloadAPI/FetchJWTBundles", "content-type": "application/grpc", te: "trailers", "workload.spiffe.io": "true" });
  st.on("error", () => {});
  st.on("response", () => { if (!announced) { announced = true; console.log("started"); } });
  st.on("data", () => st.close());
  st.on("close", call);
  st.end(Buffer.alloc(5));
}
for (let i = 0; i < Number(inFlight); i++) call();
process.stdin.on("end", () => { stopping = true; clearInterval(touch); session.destroy(); });
process.stdin.resume();
`;

let srv: ServerProcess;
let agent: AgentProcess;

describe.skipIf(!isRoot)("workload attestation work is shared fairly between users", () => {
  beforeAll(async () => {
    ({ srv, agent } = await startServerAndAgentForUids([ATTACKER.uid, OTHER.uid], { unixAttestorYaml: "{ discover_workload_path: true }" }));
  }, 90_000);

  afterAll(async () => {
    await agent?.stop();
    await srv?.stop();
    for (const d of [agent?.dir, srv?.dir]) if (d !== undefined) rmSync(d, { recursive: true, force: true });
  });

  it(`uid ${ATTACKER.uid} keeping ${IN_FLIGHT} calls in flight from a large binary it keeps touching does not make uid ${OTHER.uid}'s call fail`, async () => {
    const bin = path.join(agent.dir, "big-node");
    copyFileSync(process.execPath, bin);
    truncateSync(bin, statSync(bin).size + TAIL_BYTES);
    chownSync(bin, ATTACKER.uid, ATTACKER.gid);
    const script = path.join(agent.dir, "attack.mjs");
    writeFileSync(script, ATTACK_SCRIPT, { mode: 0o644 });
    const attacker = spawn(bin, [script, agent.socketPath, String(IN_FLIGHT)], { ...ATTACKER, stdio: ["pipe", "pipe", "pipe"] });
    const exited = new Promise<void>((resolve) => attacker.on("exit", () => resolve()));
    try {
      await new Promise<void>((resolve, reject) => {
        let err = "";
        attacker.stderr.on("data", (d: Buffer) => (err += d.toString()));
        attacker.stdout.on("data", (d: Buffer) => d.toString().includes("started") && resolve());
        attacker.on("exit", (code) => reject(new Error(`attacker exited ${code}: ${err}`)));
      });
      const other = await runWorkload(agent.socketPath, PRINT_IDS, OTHER, 60_000);
      expect(other.stdout.trim().split("\n").pop(), other.stderr).toBe(JSON.stringify([`spiffe://example.org/uid-${OTHER.uid}`]));
    } finally {
      attacker.stdin.end();
      await exited;
    }
  }, 120_000);
});
