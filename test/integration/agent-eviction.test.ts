/**
 * An evicted join-token agent, with real processes: `sigil-server run`, a
 * `sigil-agent run` attested with a join token, an operator running
 * `sigil-server agent evict`, and a workload using the real Workload API
 * client. A join token cannot be invented, so the agent says so in its log, on
 * `/ready` and through `sigil-agent healthcheck`, deletes its stored SVID and
 * keeps serving the workload's still-valid SVID; restarted with a fresh join
 * token it is back. The workload runs as the test's own uid, so no root is needed.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { credentials } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { runAgentCli, runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { followJsonLog } from "./support/json-log.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";
import { AGENT_MAIN } from "../support/programs.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const AGENT_ID = "spiffe://example.org/spire/agent/node-1";
const WORKLOAD_ID = "spiffe://example.org/eviction/workload";
const HEALTH_YAML = "health_checks:\n  listener_enabled: true\n  bind_port: 0\n";

let srv: ServerProcess;
let firstToken = "";
let first: AgentProcess;
let second: AgentProcess | undefined;

/** A join token for the one agent ID, generated as an operator would. */
function generateToken(): string {
  const r = srv.cli(["token", "generate", "--spiffe-id", AGENT_ID, "--output", "json"]);
  expect(r.status, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { value: string }).value;
}

/** What the workload receives: its SPIFFE IDs and the leaf certificates' fingerprints. */
async function fetchAsWorkload(socketPath: string): Promise<{ ids?: string[]; leaves?: string[]; error?: { code: number; message: string } }> {
  const r = await runWorkload(
    socketPath,
    `const { createHash } = await import("node:crypto");
     const ctx = await client.fetchX509Context();
     console.log(JSON.stringify({ ids: ctx.svids.map((s) => s.id.toString()), leaves: ctx.svids.map((s) => createHash("sha256").update(s.certificateDers[0]).digest("hex")) }));`,
  );
  return JSON.parse(r.stdout.trim().split("\n").pop() || `{"error":{"code":-1,"message":${JSON.stringify(r.stderr)}}}`) as never;
}

async function ready(agent: AgentProcess): Promise<{ status: number; body: { ready: boolean; reasons: string[] } }> {
  const started = await agent.waitForLog((l) => l.msg === "agent started");
  const res = await fetch(`${String(started.health)}/ready`);
  return { status: res.status, body: (await res.json()) as { ready: boolean; reasons: string[] } };
}

function spawnAgent(configPath: string, joinToken: string): ChildProcess {
  return spawn(process.execPath, [AGENT_MAIN, "run", "--config", configPath, "--join-token", joinToken], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** Starts `sigil-agent run` on an existing config and waits for it to exit (it must fail to start; killed after 30s if not). */
function runAgentToExit(configPath: string, joinToken: string): Promise<{ code: number | null; stderr: string }> {
  const child = spawnAgent(configPath, joinToken);
  const log = followJsonLog(child);
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  return new Promise((resolve) =>
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stderr: log.stderr() });
    }),
  );
}

describe("an evicted join-token agent", () => {
  beforeAll(async () => {
    srv = await startServerProcess();
    // The token first: an entry's parent must be an agent or a pending join token.
    firstToken = generateToken();
    const entries = createUnaryClient(EntryAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
    try {
      const res = await entries.batchCreateEntry({
        entries: [{ spiffeId: WORKLOAD_ID, parentId: AGENT_ID, selectors: [{ type: "unix", value: `uid:${process.getuid?.() ?? 0}` }] }],
      });
      expect(res.results[0]?.status?.code ?? 0).toBe(0);
    } finally {
      entries.close();
    }
    const roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    first = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, joinToken: firstToken, extraAgentYaml: HEALTH_YAML });
  }, 90_000);

  afterAll(async () => {
    await second?.stop();
    await first?.stop();
    await srv?.stop();
    for (const dir of [first?.dir, second?.dir, srv?.dir]) if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("reports the eviction in its log, on /ready and through healthcheck, deletes its SVID, keeps serving the workload; a fresh join token brings it back", async () => {
    const before = await fetchAsWorkload(first.socketPath);
    expect(before.ids, JSON.stringify(before)).toEqual([WORKLOAD_ID]);
    expect((await ready(first)).status).toBe(200);
    const healthy = await runAgentCli(["healthcheck", "--socket-path", first.socketPath]);
    expect(healthy.status, healthy.stderr).toBe(0);
    const storedSvid = path.join(first.dir, "data", "agent-svid.pem");
    expect(existsSync(storedSvid)).toBe(true);

    // The operator evicts the agent.
    const evict = srv.cli(["agent", "evict", "--spiffe-id", AGENT_ID]);
    expect(evict.status, evict.stderr).toBe(0);

    // Log: one clear error naming the remedy.
    const rec = await first.waitForLog((l) => l.level === "error" && String(l.msg).startsWith("sync: agent was evicted; a new join token is needed"));
    expect(String(rec.msg)).toContain("sigil-agent run --join-token");
    expect(rec.agent_id).toBe(AGENT_ID);
    expect(existsSync(storedSvid)).toBe(false);

    // /ready: not ready, with the reason, named by the service it comes from.
    const r = await ready(first);
    expect(r.status).toBe(503);
    expect(r.body.reasons).toEqual([expect.stringMatching(new RegExp(`^sync: agent ${AGENT_ID} was evicted; a new join token is needed: .*sigil-agent run --join-token`))]);

    // healthcheck: exit 1 with the same reason.
    const hc = await runAgentCli(["healthcheck", "--socket-path", first.socketPath]);
    expect(hc.status).toBe(1);
    expect(hc.stderr).toContain("agent is unhealthy: NOT_SERVING: agent spiffe://example.org/spire/agent/node-1 was evicted; a new join token is needed");

    // The workload still receives the very SVID it had (it is still valid).
    expect(await fetchAsWorkload(first.socketPath)).toEqual(before);
    // A new JWT-SVID needs the server: refused at once, saying why.
    const jwt = await runWorkload(first.socketPath, `await client.fetchJwtSvids({ audience: ["db"] }); console.log(JSON.stringify({ ok: true }));`);
    expect(JSON.parse(jwt.stdout.trim().split("\n").pop() ?? "{}"), jwt.stderr).toMatchObject({ error: { message: expect.stringContaining("was evicted; a new join token is needed") } });

    // A restart with the used token fails, naming the fix: the stored SVID is gone, so the token is what counts.
    await first.stop({ keepDir: true });
    const configPath = path.join(first.dir, "agent.yaml");
    const used = await runAgentToExit(configPath, firstToken);
    expect(used.code).toBe(1);
    expect(used.stderr).toMatch(/the server refused the join token .*a new one is needed/);

    // A fresh join token brings the agent back, under the same ID, serving the workload again.
    second = await restartAgent(configPath, generateToken());
    await second.waitForLog((l) => l.msg === "node attestation: agent attested" && l.agent_id === AGENT_ID);
    expect(existsSync(storedSvid)).toBe(true);
    expect((await ready(second)).status).toBe(200);
    const back = await runAgentCli(["healthcheck", "--socket-path", second.socketPath]);
    expect(back.status, back.stderr).toBe(0);
    expect((await fetchAsWorkload(second.socketPath)).ids).toEqual([WORKLOAD_ID]);
  }, 120_000);
});

/** Starts `sigil-agent run` again on the first agent's config and data directory. */
async function restartAgent(configPath: string, joinToken: string): Promise<AgentProcess> {
  const child = spawnAgent(configPath, joinToken);
  const log = followJsonLog(child);
  const waitForLog = (match: (r: Record<string, unknown>) => boolean, timeoutMs = 20_000) => log.waitForLog(match, timeoutMs, "agent log");
  let started: Record<string, unknown>;
  try {
    started = await waitForLog((r) => r.msg === "agent started", 30_000);
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  }
  return {
    dir: path.dirname(configPath),
    pid: child.pid as number,
    socketPath: String(started.socket_path),
    logs: log.logs,
    waitForLog,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}
