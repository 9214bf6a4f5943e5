/**
 * One local user cannot starve the Workload API for everyone else, against
 * real `sigil-server` and `sigil-agent` processes.
 *
 * The attack: the socket is mode 0777, and every connection costs the agent
 * two descriptors (the socket and a pidfd on the caller) for as long as the
 * caller keeps it open, without sending a byte. A user that opens connections
 * until the agent runs out of descriptors stops every other workload from
 * connecting (and the agent from reaching its server). The agent must close a
 * user's connections beyond `max_workload_connections_per_uid` at once and
 * keep serving everyone else.
 *
 * The agent runs with a small open-file limit (set with prlimit), so the
 * attacker's connections would exhaust it without the per-user limit.
 *
 * Likewise for calls: one connection carries any number of HTTP/2 streams,
 * and every open stream (a FetchX509SVID watch, a health Watch) holds agent
 * memory for as long as the caller keeps it. One user's open calls beyond
 * `max_workload_calls_per_uid` are refused with ResourceExhausted before
 * any attestation.
 *
 * Needs root (to run workloads as other uids and lower the agent's limit).
 */
import { spawn, spawnSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runWorkload, type AgentProcess } from "./support/agent-process.js";
import type { ServerProcess } from "./support/server-process.js";
import { startServerAndAgentForUids } from "./support/uid-agent.js";

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("workload-connections runs workloads as other uids and needs root (CI runs as root)");
  console.warn("SKIP: workload-connections runs workloads as other uids and needs root; skipped on this machine");
}

const ATTACKER = { uid: 65534, gid: 65534 };
const OTHER = { uid: 4502, gid: 4502 };
const PER_UID = 16;
const CALLS_PER_UID = 32;
const STREAMS = 100;
/** Descriptors the agent may hold: far fewer than the attacker's connections would take. */
const AGENT_FILES = 160;
const FLOOD = 200;

const PRINT_IDS = `const ctx = await client.fetchX509Context(); console.log(JSON.stringify(ctx.svids.map((s) => s.id.toString())));`;

/**
 * Opens `count` connections to the socket as `as` and holds those the agent
 * keeps open (sending nothing of its own) until stdin closes. A connection is
 * settled once the agent either sends its HTTP/2 SETTINGS (kept) or closes it
 * (refused). Prints `{"kept": n, "refused": m}` once all are settled.
 */
const FLOOD_SCRIPT = `
import net from "node:net";
const [socketPath, count] = process.argv.slice(2);
let kept = 0, refused = 0;
const conns = [];
const settle = (k) => { if (k) kept++; else refused++; if (kept + refused === Number(count)) console.log(JSON.stringify({ kept, refused })); };
for (let i = 0; i < Number(count); i++) {
  const c = net.connect(socketPath);
  let settled = false;
  c.on("data", () => { if (!settled) { settled = true; settle(true); } });
  c.on("error", () => {});
  c.on("close", () => { if (!settled) { settled = true; settle(false); } });
  conns.push(c);
}
process.stdin.on("end", () => { for (const c of conns) c.destroy(); });
process.stdin.resume();
`;

/**
 * Opens `count` FetchJWTBundles streams over one connection and holds them
 * until stdin closes. A stream is settled once it has a first message (kept)
 * or has ended (its gRPC status is recorded). Prints
 * `{"kept": n, "ended": {"<code>": m}}` once all are settled.
 */
const STREAMS_SCRIPT = `
import http2 from "node:http2";
import net from "node:net";
const [socketPath, count] = process.argv.slice(2);
const session = http2.connect("http://localhost", { createConnection: () => net.connect(socketPath) });
session.on("error", () => {});
let kept = 0, settled = 0;
const ended = {};
const settle = () => { if (++settled === Number(count)) console.log(JSON.stringify({ kept, ended })); };
for (let i = 0; i < Number(count); i++) {
  const st = session.request({ ":method": "POST", ":path": "/SpiffeWorkloadAPI/FetchJWTBundles", "content-type": "application/grpc", te: "trailers", "workload.spiffe.io": "true" });
  let done = false, code;
  st.on("response", (h) => { if (h["grpc-status"] !== undefined) code = h["grpc-status"]; });
  st.on("trailers", (t) => { code = t["grpc-status"]; });
  st.on("data", () => { if (!done) { done = true; kept++; settle(); } });
  st.on("close", () => { if (!done) { done = true; ended[code] = (ended[code] ?? 0) + 1; settle(); } });
  st.on("error", () => {});
  st.end(Buffer.alloc(5));
}
process.stdin.on("end", () => session.destroy());
process.stdin.resume();
`;

/** Runs `script` with `args` as `as`; resolves with its first line of output and a function that ends it and waits. */
async function holdAs(as: { uid: number; gid: number }, script: string, args: readonly string[]): Promise<{ first: string; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, [script, ...args], { ...as, stdio: ["pipe", "pipe", "pipe"] });
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  const stop = async (): Promise<void> => {
    child.stdin.end();
    await exited;
  };
  try {
    const first = await new Promise<string>((resolve, reject) => {
      let out = "";
      let err = "";
      child.stderr.on("data", (d: Buffer) => (err += d.toString()));
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("\n")) resolve(out.slice(0, out.indexOf("\n")));
      });
      child.on("exit", (code) => reject(new Error(`${script} exited ${code} before reporting: ${err}`)));
    });
    return { first, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

let srv: ServerProcess;
let agent: AgentProcess;

describe.skipIf(!isRoot)("Workload API connections are limited per user", () => {
  beforeAll(async () => {
    ({ srv, agent } = await startServerAndAgentForUids([ATTACKER.uid, OTHER.uid], {
      extraAgentYaml: `  max_workload_connections_per_uid: ${PER_UID}\n  max_workload_calls_per_uid: ${CALLS_PER_UID}\n`,
    }));
    const limited = spawnSync("prlimit", ["--pid", String(agent.pid), `--nofile=${AGENT_FILES}:${AGENT_FILES}`], { encoding: "utf8" });
    expect(limited.status, limited.stderr).toBe(0);
  }, 90_000);

  afterAll(async () => {
    await agent?.stop();
    await srv?.stop();
    for (const d of [agent?.dir, srv?.dir]) if (d !== undefined) rmSync(d, { recursive: true, force: true });
  });

  it(`uid ${ATTACKER.uid} opening ${FLOOD} idle connections keeps ${PER_UID}; another user still gets its SVID; the attacker can connect again once it lets go`, async () => {
    const script = path.join(agent.dir, "flood.mjs");
    writeFileSync(script, FLOOD_SCRIPT, { mode: 0o644 });
    const held = await holdAs(ATTACKER, script, [agent.socketPath, String(FLOOD)]);
    try {
      expect(JSON.parse(held.first)).toEqual({ kept: PER_UID, refused: FLOOD - PER_UID });
      await agent.waitForLog((l) => l.msg === `Workload API: uid ${ATTACKER.uid} holds ${PER_UID} connections, the most one user may; closing its further connections` && l.caller_uid === ATTACKER.uid);

      const other = await runWorkload(agent.socketPath, PRINT_IDS, OTHER);
      expect(other.stdout.trim().split("\n").pop(), other.stderr).toBe(JSON.stringify([`spiffe://example.org/uid-${OTHER.uid}`]));
    } finally {
      await held.stop();
    }
    const again = await runWorkload(agent.socketPath, PRINT_IDS, ATTACKER);
    expect(again.stdout.trim().split("\n").pop(), again.stderr).toBe(JSON.stringify([`spiffe://example.org/uid-${ATTACKER.uid}`]));
  }, 90_000);

  it(`uid ${ATTACKER.uid} opening ${STREAMS} streams keeps ${CALLS_PER_UID}, the rest are refused ResourceExhausted; another user still gets its SVID; the attacker can call again once it lets go`, async () => {
    const script = path.join(agent.dir, "streams.mjs");
    writeFileSync(script, STREAMS_SCRIPT, { mode: 0o644 });
    const held = await holdAs(ATTACKER, script, [agent.socketPath, String(STREAMS)]);
    try {
      expect(JSON.parse(held.first)).toEqual({ kept: CALLS_PER_UID, ended: { [String(status.RESOURCE_EXHAUSTED)]: STREAMS - CALLS_PER_UID } });
      await agent.waitForLog((l) => l.msg === `Workload API: uid ${ATTACKER.uid} has ${CALLS_PER_UID} calls open, the most one user may; refusing its further calls` && l.caller_uid === ATTACKER.uid);
      const other = await runWorkload(agent.socketPath, PRINT_IDS, OTHER);
      expect(other.stdout.trim().split("\n").pop(), other.stderr).toBe(JSON.stringify([`spiffe://example.org/uid-${OTHER.uid}`]));
    } finally {
      await held.stop();
    }
    // Its streams ended with their connection: the attacker's uid may call again.
    const again = await runWorkload(agent.socketPath, PRINT_IDS, ATTACKER);
    expect(again.stdout.trim().split("\n").pop(), again.stderr).toBe(JSON.stringify([`spiffe://example.org/uid-${ATTACKER.uid}`]));
  }, 90_000);
});
