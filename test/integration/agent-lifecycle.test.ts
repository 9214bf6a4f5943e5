/**
 * `sigil-agent run` is a list of named services (agent/main.ts) started in
 * order and stopped in reverse: on SIGTERM, and when one fails to start (then
 * only those already started are stopped, and the process exits 1). Checked
 * from the process's JSON log, where the service group writes "Service
 * started" / "Service stopped" with the service's name. Real server and
 * agent processes; no root needed.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runAgentCli, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const AGENT_ID = "spiffe://example.org/spire/agent/lifecycle";
/** Every service of an agent with the HTTP health listener and a Prometheus listener, in start order. */
const ALL_SERVICES = ["node-attestor", "socket-directory", "state-store", "server-connection", "node-attestation", "sync", "workload-endpoint", "health-listener", "metrics-listener"];

let srv: ServerProcess;
let roots = "";
const dirs: string[] = [];

beforeAll(async () => {
  srv = await startServerProcess();
  roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
}, 60_000);

afterAll(async () => {
  try {
    await srv?.stop();
  } finally {
    for (const d of [...dirs, srv?.dir]) if (d) rmSync(d, { recursive: true, force: true });
  }
});

/** A join token for the test's agent ID, generated as an operator would. */
function generateToken(): string {
  const r = srv.cli(["token", "generate", "--spiffe-id", AGENT_ID, "--output", "json"]);
  expect(r.status, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { value: string }).value;
}

/** The `service` fields of the log records with message `msg`, in log order. */
function services(logs: readonly Record<string, unknown>[], msg: string): unknown[] {
  return logs.filter((l) => l.msg === msg).map((l) => l.service);
}

describe("sigil-agent run: services", () => {
  it("starts its services in order, is ready, and on SIGTERM stops them in the reverse order", async () => {
    let agent: AgentProcess | undefined = await startAgentProcess({
      serverAddress: srv.agentApiAddress,
      bundlePem: roots,
      joinToken: generateToken(),
      extraAgentYaml: "health_checks:\n  listener_enabled: true\n  bind_port: 0\ntelemetry:\n  prometheus:\n    port: 0\n",
    });
    dirs.push(agent.dir);
    try {
      const started = await agent.waitForLog((l) => l.msg === "agent started");
      expect(services(agent.logs, "Service started")).toEqual(ALL_SERVICES);
      // /ready is the group's readiness: every service started, none with a reason.
      const ready = await fetch(`${String(started.health)}/ready`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toMatchObject({ ready: true, reasons: [] });

      const { logs } = agent;
      await agent.stop(); // SIGTERM, then waits for the process to exit
      agent = undefined;
      expect(services(logs, "Service stopped")).toEqual([...ALL_SERVICES].reverse());
      const at = (pred: (l: Record<string, unknown>) => boolean): number => logs.findIndex(pred);
      expect(at((l) => l.msg === "agent: shutting down" && l.signal === "SIGTERM")).toBeLessThan(at((l) => l.msg === "Service stopped"));
      expect(at((l) => l.msg === "agent stopped")).toBeGreaterThan(at((l) => l.msg === "Service stopped" && l.service === "node-attestor"));
      expect(logs.some((l) => l.msg === "Service failed to stop cleanly")).toBe(false);
    } finally {
      await agent?.stop();
    }
  }, 90_000);

  it("when node attestation fails (a join token the server never issued), stops the services already started in reverse and exits 1", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "sigil-agent-lifecycle-"));
    dirs.push(dir);
    mkdirSync(path.join(dir, "public"), { mode: 0o755 });
    writeFileSync(path.join(dir, "bundle.pem"), roots);
    const [host, port] = srv.agentApiAddress.split(":");
    const configPath = path.join(dir, "agent.yaml");
    writeFileSync(
      configPath,
      `agent:
  trust_domain: example.org
  server_address: ${host}
  server_port: ${port}
  socket_path: ${path.join(dir, "public", "api.sock")}
  data_dir: ${path.join(dir, "data")}
  trust_bundle_path: ${path.join(dir, "bundle.pem")}
plugins:
  NodeAttestor:
    join_token: {}
  WorkloadAttestor:
    unix: {}
`,
    );
    const r = await runAgentCli(["run", "--config", configPath, "--join-token", "never-issued-token"]);
    expect(r.status, r.stderr).toBe(1);
    const logs = r.stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(services(logs, "Service started")).toEqual(["node-attestor", "socket-directory", "state-store", "server-connection"]);
    expect(logs.find((l) => l.msg === "Service failed to start; stopping those already started")?.service).toBe("node-attestation");
    expect(services(logs, "Service stopped")).toEqual(["server-connection", "state-store", "socket-directory", "node-attestor"]);
  }, 60_000);
});
